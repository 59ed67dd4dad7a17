"""Fixtures for the authz sidecar: dev IdP keys, a config file, a running servicer (on
each in-process server stack)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_service.compiled_config import load_compiled_config
from authz_service.config_holder import ConfigHolder
from authz_service.servicer import SERVICE_NAME, AuthorizationServicer, add_to_server
from devstack.idp_keys import IdpKeys, ensure_idp_keys, mint_token
from devstack.pki import Pki
from sidecar_runtime.audit import AuditSink
from sidecar_runtime.clock import SystemClock
from sidecar_runtime.loops import LoopBridge
from sidecar_runtime.server import ServiceBinding, SidecarServer
from sidecar_runtime.settings import Stack

# The shared pytest-asyncio loop hook and `stack` fixture (see stacks.py).
from tests.sidecar_runtime.stacks import (
    pytest_asyncio_loop_factories as pytest_asyncio_loop_factories,
)
from tests.sidecar_runtime.stacks import stack as stack

ISSUER = "https://idp.test"
AUDIENCE = "api://demo"

ROUTES = textwrap.dedent(
    """\
    routes:
      - name: ping
        methods: [GET]
        path: /api/v1/public/ping
        public: true
      - name: get-user
        methods: [GET]
        path: /api/v1/users/{user_id}
        scopes: [users:read]
        conditions:
          - "params.user_id == token.sub || 'admin' in token.roles"
      - name: put-user
        methods: [PUT]
        path: /api/v1/users/{user_id}
        scopes: [users:write]
        conditions:
          - "params.user_id == token.sub || 'admin' in token.roles"
      - name: delete-user
        methods: [DELETE]
        path: /api/v1/users/{user_id}
        roles: [admin]
      - name: admin-stats
        methods: [GET]
        path: /api/v1/admin/stats
        roles: [admin]
    """
)


def write_config(
    directory: Path,
    *,
    server: dict[str, Any] | None = None,
    audit_file: Path | None = None,
    routes: str = ROUTES,
    keys: dict[str, Any] | None = None,
) -> Path:
    """An authz config in `directory`; the issuer's keys from `idp/jwks.json` unless
    `keys` says otherwise (e.g. `{"jwks_url": ..., "jwks": {...}}`)."""
    config: dict[str, Any] = {
        "server": server or {"listen": "127.0.0.1:0"},
        "issuers": [
            {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256", "EdDSA", "Ed25519"],
                **(keys or {"jwks_file": "idp/jwks.json"}),
            }
        ],
        "audit": {"enabled": audit_file is not None, "target": str(audit_file or "stdout")},
        "reload": {"watch": False},
    }
    path = directory / "authz.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False) + routes)
    return path


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> IdpKeys:
    return ensure_idp_keys(tmp_path_factory.mktemp("authz") / "idp")


@pytest.fixture
def config_dir(tmp_path: Path, idp: IdpKeys) -> Path:
    (tmp_path / "idp").mkdir()
    (tmp_path / "idp" / "jwks.json").write_text(idp.jwks_file.read_text())
    return tmp_path


Mint = Callable[..., str]


@pytest.fixture
def mint(idp: IdpKeys) -> Mint:
    def _mint(subject: str = "alice", **kw: Any) -> str:
        kw.setdefault("issuer", ISSUER)
        kw.setdefault("audience", AUDIENCE)
        return mint_token(idp, subject=subject, **kw)

    return _mint


@dataclass
class RunningAuthz:
    address: str
    holder: ConfigHolder
    server: SidecarServer
    audit: AuditSink | None
    config: Path


async def start_authz(config: Path, *, audit_file: Path | None = None) -> RunningAuthz:
    """The servicer in an in-process server on the stack the config's `server` names."""
    compiled = await load_compiled_config(config, clock=SystemClock())
    holder = ConfigHolder(compiled, clock=SystemClock())
    audit = AuditSink(str(audit_file)) if audit_file else None
    bridge = LoopBridge(asyncio.get_running_loop())
    servicer = AuthorizationServicer(holder, audit, bridge=bridge)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda s: add_to_server(servicer, s),
    )
    server = SidecarServer(compiled.settings.server, [binding])
    port = await server.start()
    return RunningAuthz(f"127.0.0.1:{port}", holder, server, audit, config)


async def stop_authz(running: RunningAuthz) -> None:
    await running.server.stop(0)
    await running.holder.current.close()
    if running.audit is not None:
        running.audit.close()


@pytest.fixture
async def authz(config_dir: Path, stack: Stack) -> AsyncIterator[RunningAuthz]:
    audit_file = config_dir / "audit.log"
    server = {"listen": "127.0.0.1:0", "stack": stack}
    running = await start_authz(
        write_config(config_dir, server=server, audit_file=audit_file), audit_file=audit_file
    )
    yield running
    await stop_authz(running)


@pytest.fixture
async def authz_mtls(config_dir: Path, pki: Pki, stack: Stack) -> AsyncIterator[RunningAuthz]:
    server = {
        "listen": "127.0.0.1:0",
        "stack": stack,
        "tls": {
            "mode": "mtls",
            "cert_file": str(pki.sidecar_cert),
            "key_file": str(pki.sidecar_key),
            "ca_file": str(pki.ca),
        },
    }
    running = await start_authz(write_config(config_dir, server=server))
    yield running
    await stop_authz(running)
