"""Fixtures for the revocation suite: the rate-limit suite's real redis-server fixtures
(one shared server emptied per test, or a test's own to stop), and config files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ratelimit_service.conftest import own_redis as own_redis
from tests.ratelimit_service.conftest import redis_server as redis_server
from tests.ratelimit_service.conftest import shared_redis as shared_redis

ISSUER = "https://idp.test"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """An authz config file with one issuer and a `revocation:` section for `url`."""

    def write(url: str, **extra: object) -> Path:
        lines = [f"{key}: {value}" for key, value in extra.items()]
        section = "\n".join(f"  {line}" for line in [f"redis_url: {url}", *lines])
        path = tmp_path / "authz.yaml"
        path.write_text(f"issuers:\n  - issuer: {ISSUER}\nrevocation:\n{section}\n")
        return path

    return write
