"""Where the e2e suite sends its requests: a stack it starts itself (the default), or one
already running (docs/testing.md), described by environment variables.

`from_environ` reads the settings once and checks them, naming the variable at fault; a
`TokenMinter` signs the tokens the tests ask for, either with the dev IdP's private keys
or by running a command that signs them (`TOKEN_REQUEST_FIELDS` is what it is given).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from joserfc.jwk import OKPKey, RSAKey

from devstack.idp_keys import IdpKeys, mint_token
from devstack.pki import Pki

PREFIX = "EDGEGUARD_E2E_"
TARGETS = ("self", "external")
STAGE0_PROFILES = ("local", "global")
# The local stack's listener and issuer (ARCHITECTURE.md section 4).
DEFAULT_URL = "https://127.0.0.1:8443"
DEFAULT_ISSUER = "http://127.0.0.1:8082"
DEFAULT_SERVER_NAME = "localhost"  # the dev listener certificate's name
# What a token command reads on stdin, one JSON object: mint_token's keyword arguments.
TOKEN_REQUEST_FIELDS = (
    "issuer", "audience", "subject", "alg", "scope", "roles", "ttl", "now", "extra", "header",
)  # fmt: skip
TOKEN_COMMAND_TIMEOUT_S = 30.0


class TargetError(ValueError):
    """A setting is missing or wrong; the message names the variable."""


class TokenMinter(Protocol):
    """Signs a token as the stack's IdP would (mint_token's keyword arguments)."""

    def __call__(self, **request: Any) -> str: ...


@dataclass(frozen=True)
class KeyMinter:
    """Signs with the dev IdP's private keys, as `python -m devstack token` does."""

    keys: IdpKeys

    def __call__(self, **request: Any) -> str:
        return mint_token(self.keys, **request)


@dataclass(frozen=True)
class CommandMinter:
    """Runs `argv` once per token: the request as JSON on stdin, the token on stdout."""

    argv: tuple[str, ...]

    def __call__(self, **request: Any) -> str:
        done = subprocess.run(
            self.argv,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=TOKEN_COMMAND_TIMEOUT_S,
            check=False,
        )
        token = done.stdout.strip()
        if done.returncode != 0 or not token or any(c.isspace() for c in token):
            # stderr only: stdout may hold a token, which never goes into a test report.
            raise TargetError(
                f"{PREFIX}TOKEN_COMMAND exited {done.returncode} without one token on stdout;"
                f" stderr: {done.stderr.strip()[-500:]}"
            )
        return token


@dataclass(frozen=True)
class ExternalTarget:
    """An already running stack, as the settings describe it."""

    host: str  # where the clients connect (the URL's host)
    port: int
    server_name: str  # TLS SNI and Host / :authority
    ca: Path
    issuer: str
    minter: TokenMinter
    idp_keys: IdpKeys | None  # when known: the RS256 public key for algorithm-confusion cases
    pki: Pki | None  # the dev PKI directory, when given: client certificates for mTLS cases
    redis_url: str | None
    sidecars: Mapping[str, str]  # "authz" / "ratelimit" -> HOST:PORT, where reachable
    stage0: str
    fresh_sources: bool  # the listener sees the client's own loopback source address
    grpc_demo: bool  # Envoy routes gRPC to the demo Greeter (the local stack does)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


def target_kind(env: Mapping[str, str] = os.environ) -> str:
    kind = env.get(f"{PREFIX}TARGET", "self") or "self"
    if kind not in TARGETS:
        raise TargetError(f"{PREFIX}TARGET must be one of {', '.join(TARGETS)}, not {kind!r}")
    return kind


def from_environ(env: Mapping[str, str] = os.environ) -> ExternalTarget | None:
    """The external target the settings describe, or None for a self-started stack."""
    if target_kind(env) == "self":
        return None
    host, port = _listener(env.get(f"{PREFIX}URL") or DEFAULT_URL)
    fresh_sources = _flag(f"{PREFIX}FRESH_SOURCES", env.get(f"{PREFIX}FRESH_SOURCES", ""))
    if fresh_sources and not is_loopback(host):
        raise TargetError(f"{PREFIX}FRESH_SOURCES needs a listener on 127.0.0.0/8, not {host}")
    pki = _pki(env.get(f"{PREFIX}PKI"))
    keys = load_idp_keys(env.get(f"{PREFIX}IDP_KEYS"))
    return ExternalTarget(
        host=host,
        port=port,
        server_name=env.get(f"{PREFIX}SERVER_NAME") or DEFAULT_SERVER_NAME,
        ca=_ca(env.get(f"{PREFIX}CA"), pki),
        issuer=env.get(f"{PREFIX}ISSUER") or DEFAULT_ISSUER,
        minter=_minter(keys, env.get(f"{PREFIX}TOKEN_COMMAND")),
        idp_keys=keys,
        pki=pki,
        redis_url=env.get(f"{PREFIX}REDIS_URL") or None,
        sidecars={
            name: _address(f"{PREFIX}{name.upper()}_ADDR", value)
            for name in ("authz", "ratelimit")
            if (value := env.get(f"{PREFIX}{name.upper()}_ADDR"))
        },
        stage0=_choice(f"{PREFIX}STAGE0", env.get(f"{PREFIX}STAGE0") or "local", STAGE0_PROFILES),
        fresh_sources=fresh_sources,
        grpc_demo=_flag(f"{PREFIX}GRPC_DEMO", env.get(f"{PREFIX}GRPC_DEMO", "1")),
    )


def _listener(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise TargetError(f"{PREFIX}URL must be https://HOST[:PORT], not {url!r}")
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise TargetError(f"{PREFIX}URL has a bad port: {url!r}") from exc
    return parts.hostname, port


def _address(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TargetError(f"{name} must be HOST:PORT, not {value!r}")
    return value


def _pki(value: str | None) -> Pki | None:
    if not value:
        return None
    root = Path(value)
    if not (root / "ca.pem").is_file():
        raise TargetError(f"{PREFIX}PKI must be a dev PKI directory (with ca.pem): {root}")
    return Pki(root)


def _ca(value: str | None, pki: Pki | None) -> Path:
    if value:
        if not Path(value).is_file():
            raise TargetError(f"{PREFIX}CA is not a file: {value}")
        return Path(value)
    if pki is None:
        raise TargetError(f"set {PREFIX}CA (the listener's CA file) or {PREFIX}PKI")
    return pki.root / "ca.pem"  # Pki's properties are untyped


def load_idp_keys(value: str | None) -> IdpKeys | None:
    """The dev IdP's private keys, read (never made: a new key would only mint tokens the
    stack refuses). `value` is the keys' directory or a dev dir holding `idp/`."""
    if not value:
        return None
    root = Path(value)
    if not (root / "rs256.pem").is_file() and (root / "idp" / "rs256.pem").is_file():
        root = root / "idp"
    rsa, ed = root / "rs256.pem", root / "ed25519.pem"
    if not (rsa.is_file() and ed.is_file()):
        raise TargetError(f"{PREFIX}IDP_KEYS: no rs256.pem and ed25519.pem in {value}")
    return IdpKeys(
        rs256=RSAKey.import_key(rsa.read_bytes()),
        ed25519=OKPKey.import_key(ed.read_bytes()),
        root=root,
    )


def _minter(keys: IdpKeys | None, command: str | None) -> TokenMinter:
    if keys is not None and command:
        raise TargetError(f"set one of {PREFIX}IDP_KEYS and {PREFIX}TOKEN_COMMAND, not both")
    if keys is not None:
        return KeyMinter(keys)
    if command:
        return CommandMinter(tuple(shlex.split(command)))
    raise TargetError(f"set {PREFIX}IDP_KEYS or {PREFIX}TOKEN_COMMAND to mint tokens")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise TargetError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise TargetError(f"{name} must be 1 or 0, not {value!r}")


def is_loopback(host: str) -> bool:
    """Whether `host` is an IPv4 loopback address (where a client may pick its source)."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False
