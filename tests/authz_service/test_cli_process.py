"""The sidecar as users run it: a process, signals, workers, reload (on each server stack
where the stack matters)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from devstack.idp_keys import IdpKeys
from sidecar_runtime.settings import Stack
from tests.authz_service.conftest import AUDIENCE, write_config
from tests.authz_service.tokens.conftest import LocalIdp, Reply
from tests.support.grpcurl import grpcurl
from tests.support.processes import children_of, free_port, running, wait_until

pytestmark = [pytest.mark.grpc, pytest.mark.slow]


def _health(address: str) -> str | None:
    out = grpcurl(address, "grpc.health.v1.Health/Check")
    return str(json.loads(out.stdout)["status"]) if out.returncode == 0 else None


def _serving(address: str) -> bool:
    return _health(address) == "SERVING"


def _check(address: str, path: str) -> str:
    data = {"attributes": {"request": {"http": {"method": "GET", "path": path, "id": "p"}}}}
    out = grpcurl(address, "envoy.service.auth.v3.Authorization/Check", data=data)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_serve_reload_on_sighup_and_graceful_stop(config_dir: Path, stack: Stack) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = write_config(config_dir, server={"listen": address, "stack": stack})
    with running(
        ["authz_service", "serve", "--config", str(config)], log=config_dir / "out.log"
    ) as proc:
        assert wait_until(lambda: _serving(address)), (config_dir / "out.log").read_text()
        assert "ok_response" in _check(address, "/api/v1/public/ping")
        config.write_text(config.read_text().replace("public: true", "roles: [admin]"))
        proc.send_signal(signal.SIGHUP)
        assert wait_until(
            lambda: (
                "Forbidden" in _check(address, "/api/v1/public/ping")
                or "Unauthorized" in _check(address, "/api/v1/public/ping")
            )
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    log = (config_dir / "out.log").read_text()
    assert '"msg":"config reloaded"' in log
    assert '"msg":"shutting down"' in log


def test_file_change_reloads_without_a_signal(config_dir: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = write_config(config_dir, server={"listen": address})
    config.write_text(
        config.read_text().replace("  watch: false", "  watch: true\n  interval_seconds: 0.2")
    )
    with running(["authz_service", "serve", "--config", str(config)], log=config_dir / "o.log"):
        assert wait_until(lambda: _serving(address))
        assert "ok_response" in _check(address, "/api/v1/public/ping")
        time.sleep(0.05)
        config.write_text(config.read_text().replace("public: true", "roles: [admin]"))
        assert wait_until(lambda: "ok_response" not in _check(address, "/api/v1/public/ping"))


def test_two_workers_share_one_port_and_stop_together(config_dir: Path, stack: Stack) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = write_config(config_dir, server={"listen": address, "workers": 2, "stack": stack})
    with running(
        ["authz_service", "serve", "--config", str(config)], log=config_dir / "w.log"
    ) as proc:
        assert wait_until(lambda: len(children_of(proc.pid)) == 2)
        assert wait_until(lambda: _serving(address))
        workers = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_health_is_not_serving_while_the_idp_is_down_and_says_why(
    config_dir: Path, idp: IdpKeys
) -> None:
    provider = LocalIdp()
    provider.set("/.well-known/openid-configuration", Reply(status=503))
    address = f"127.0.0.1:{free_port()}"
    config = {
        "server": {"listen": address},
        "issuers": [
            {
                "issuer": provider.base,
                "discovery": True,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks": {"retry_seconds": 0.2, "fetch_timeout_seconds": 1},
            }
        ],
        "audit": {"enabled": False},
        "reload": {"watch": False},
        "health": {"check_interval_seconds": 0.1},
        "routes": [{"name": "p", "methods": ["GET"], "path": "/p", "public": True}],
    }
    path = config_dir / "authz.yaml"
    path.write_text(yaml.safe_dump(config))
    log = config_dir / "health.log"
    try:
        with running(["authz_service", "serve", "--config", str(path)], log=log) as proc:
            assert wait_until(lambda: _health(address) == "NOT_SERVING"), log.read_text()
            lines = [json.loads(line) for line in log.read_text().splitlines() if "{" in line]
            (line,) = [x for x in lines if x["msg"].startswith("health NOT_SERVING")]
            assert line["issuers_without_keys"] == {provider.base: "discovery answered HTTP 503"}
            doc = {"issuer": provider.base, "jwks_uri": provider.url("/jwks")}
            provider.set("/jwks", Reply.json(idp.public_jwks()))
            provider.set("/.well-known/openid-configuration", Reply.json(doc))
            assert wait_until(lambda: _serving(address)), log.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    finally:
        provider.stop()
    assert '"msg":"health SERVING: every issuer has a usable key set"' in log.read_text()
