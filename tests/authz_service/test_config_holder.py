"""ConfigHolder: reloads that overlap and finish out of order; the plain-http warning."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz_service.compiled_config import CompiledConfig, load_compiled_config
from authz_service.config_holder import ConfigHolder
from sidecar_runtime.clock import SystemClock
from tests.authz_service.conftest import AUDIENCE, ISSUER
from tests.authz_service.tokens.conftest import LocalIdp, Reply

SLOW_ISSUER = "https://slow.example.test"


@pytest.fixture
def slow_idp() -> Iterator[LocalIdp]:
    server = LocalIdp()
    server.set("/jwks", Reply(body=b'{"keys": []}', delay=1.0))  # answers after 1 s
    yield server
    server.stop()


def write(config_dir: Path, marker: str, *, slow_jwks: str | None = None) -> Path:
    issuers: list[dict[str, Any]] = [
        {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256"],
            "jwks_file": "idp/jwks.json",
        }
    ]
    if slow_jwks is not None:
        issuers.append(
            {
                "issuer": SLOW_ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks_url": slow_jwks,
                "jwks": {"fetch_timeout_seconds": 3},
            }
        )
    routes = [{"name": marker, "methods": ["GET"], "path": "/ping", "public": True}]
    config = {"issuers": issuers, "reload": {"watch": False}, "routes": routes}
    path = config_dir / "authz.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def marker(compiled: CompiledConfig) -> str:
    return compiled.settings.routes[0].name


def closed(compiled: CompiledConfig) -> bool:
    return not compiled.tokens.started


async def until(condition: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_a_slow_older_reload_does_not_replace_a_newer_one(
    config_dir: Path, slow_idp: LocalIdp
) -> None:
    path = write(config_dir, "v0")
    v0 = await load_compiled_config(path, clock=SystemClock())
    holder = ConfigHolder(v0, clock=SystemClock())

    write(config_dir, "v1", slow_jwks=slow_idp.url("/jwks"))  # its JWKS takes 1 s
    slow_reload = asyncio.create_task(holder.reload())
    await until(lambda: slow_idp.hits["/jwks"] == 1)  # v1 was read and is fetching

    write(config_dir, "v2")  # the operator fixes the file again, quickly
    assert await holder.reload() is True
    assert marker(holder.current) == "v2"
    assert closed(v0)

    assert await slow_reload is False  # v1 loaded fine, but after v2: discarded
    assert marker(holder.current) == "v2"  # the file on disk wins
    assert (holder.reloads, holder.stale_reloads) == (1, 1)
    assert not closed(holder.current)
    await holder.current.close()


async def test_reloads_finishing_in_order_install_each_and_close_each_once(
    config_dir: Path,
) -> None:
    path = write(config_dir, "v0")
    v0 = await load_compiled_config(path, clock=SystemClock())
    holder = ConfigHolder(v0, clock=SystemClock())
    write(config_dir, "v1")
    first = asyncio.create_task(holder.reload())
    await asyncio.sleep(0)  # v1 is read
    write(config_dir, "v2")
    second = asyncio.create_task(holder.reload())
    assert await asyncio.gather(first, second) == [True, True]
    assert marker(holder.current) == "v2"
    assert holder.reloads == 2
    assert closed(v0)
    # The file source is shared by all three configs; the current one still uses it.
    source = holder.current.tokens.key_sources()[ISSUER]
    assert source.current() is not None
    await holder.current.close()


async def test_a_rejected_reload_keeps_the_current_engine(config_dir: Path) -> None:
    path = write(config_dir, "v0")
    holder = ConfigHolder(
        await load_compiled_config(path, clock=SystemClock()), clock=SystemClock()
    )
    path.write_text("routes: []\n")
    assert await holder.reload() is False
    assert (marker(holder.current), holder.reload_failures) == ("v0", 1)
    await holder.current.close()


async def test_allow_insecure_http_is_logged_loudly_at_every_load(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {
        "issuers": [
            {
                "issuer": "http://idp.internal:8080",
                "allow_insecure_http": True,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
                "jwks_file": "idp/jwks.json",
            }
        ],
        "routes": [{"name": "p", "methods": ["GET"], "path": "/p", "public": True}],
    }
    path = config_dir / "authz.yaml"
    path.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="authz_service.compiled_config"):
        compiled = await load_compiled_config(path, clock=SystemClock())
    (record,) = [r for r in caplog.records if "allow_insecure_http is on" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.fields["issuer"] == "http://idp.internal:8080"  # type: ignore[attr-defined]
    await compiled.close()
