"""A real OAuth 2.0 provider for tests: node-oidc-provider run by `running_provider`."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port, stop, wait_until

HERE = Path(__file__).resolve().parent
APP = ("app", "app-secret")  # obtains tokens (client_credentials) and revokes them
SIDECAR = ("authz-sidecar", "sidecar-secret")  # may introspect
RESOURCE = "https://api.example.test"


class ProviderMissingError(Exception):
    """node, npm or the provider's npm dependencies are not there: the reason to skip."""


@dataclass(frozen=True)
class Provider:
    issuer: str
    pid: int

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"

    def token(self, scope: str = "orders:read") -> tuple[str, dict[str, object]]:
        """A fresh opaque access token for the `app` client, and the token response."""
        answer = self._post("/token", APP, grant_type="client_credentials", scope=scope)
        return str(answer["access_token"]), answer

    def revoke(self, token: str) -> None:
        """RFC 7009 revocation by the client the token was issued to."""
        self._post("/token/revocation", APP, token=token, token_type_hint="access_token")

    def _post(self, path: str, client: tuple[str, str], **form: str) -> dict[str, object]:
        basic = base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
        request = urllib.request.Request(
            self.issuer + path,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": f"Basic {basic}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return dict(json.loads(body)) if body else {}


def provider_missing_reason() -> str | None:
    """Why the provider cannot run here, or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are needed for the oidc-provider fixture (not on PATH)"
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        return f"oidc-provider is not installed: run `npm ci --prefix {HERE}`"
    return None


@contextmanager
def running_provider() -> Iterator[Provider]:
    """node provider.mjs on a free loopback port; stopped by its pid on exit."""
    reason = provider_missing_reason()
    if reason is not None:
        raise ProviderMissingError(reason)
    port = free_port()
    proc = subprocess.Popen(
        ["node", str(HERE / "provider.mjs"), str(port)],
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        issuer = f"http://127.0.0.1:{port}"
        if not wait_until(lambda: _answers(issuer) or proc.poll() is not None, timeout=30):
            raise RuntimeError("oidc-provider did not start listening within 30 s")
        if proc.poll() is not None:
            raise RuntimeError(f"oidc-provider exited with {proc.returncode}")
        yield Provider(issuer=issuer, pid=proc.pid)
    finally:
        stop(proc)


def _answers(issuer: str) -> bool:
    try:
        with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=1):
            return True
    except OSError:
        return False
