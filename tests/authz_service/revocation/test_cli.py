"""`authz-service revoke` against a real redis-server, and its refusals."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from authz_service.revocation.cli import add_revoke_parser, parse_before, run_revoke
from sidecar_runtime.clock import ManualClock
from tests.support.redis_servers import RedisServer, free_port

ISS = "https://idp.test"
TOKEN_LIKE = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


def _run(config: Path, *extra: str, clock: ManualClock | None = None) -> int:
    parser = argparse.ArgumentParser()
    add_revoke_parser(parser.add_subparsers(dest="command"))
    return run_revoke(parser.parse_args(["revoke", "--config", str(config), *extra]), clock=clock)


@pytest.mark.redis
def test_revoke_a_jti_and_a_subject_then_list_them(
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(redis_server.url)
    clock = ManualClock(1_800_000_000.0)
    assert _run(config, "--issuer", ISS, "--jti", "t1", clock=clock) == 0
    assert "revoked jti 't1' of issuer 'https://idp.test' until" in capsys.readouterr().out
    before = "2027-01-15T08:00:00Z"
    assert _run(config, "--issuer", ISS, "--sub", "alice", "--before", before, clock=clock) == 0
    assert "issued before 2027-01-15T08:00:00Z" in capsys.readouterr().out
    assert _run(config, "--list", clock=clock) == 0
    listed = capsys.readouterr().out
    assert "jti 't1' issuer 'https://idp.test'" in listed
    assert "sub 'alice' issuer 'https://idp.test' before 2027-01-15T08:00:00Z" in listed
    assert "2 revocation(s)" in listed


@pytest.mark.redis
def test_a_subject_whose_tokens_have_all_expired_is_not_written(
    redis_server: RedisServer,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(redis_server.url, max_token_lifetime_seconds=3600)
    args = ("--issuer", ISS, "--sub", "alice", "--before", "2020-01-01T00:00:00Z")
    assert _run(config, *args) == 0
    assert "nothing to revoke" in capsys.readouterr().out
    assert redis_server.command_calls("exec") == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--jti", "t1"), "--issuer is required"),
        (("--issuer", "https://typo.test", "--jti", "t1"), "is not configured"),
        (("--issuer", ISS, "--jti", TOKEN_LIKE), "looks like a whole token"),
        (("--issuer", ISS, "--jti", "t1", "--before", "now"), None),
        (("--issuer", ISS, "--jti", "t1", "--before", "2020-01-01T00:00:00Z"), "goes with --sub"),
        (("--issuer", ISS, "--sub", "a", "--before", "2999-01-01T00:00:00Z"), "in the future"),
        (("--issuer", ISS, "--sub", "a", "--before", "2020-01-01T00:00:00"), "needs an offset"),
        (("--issuer", ISS, "--sub", "a", "--ttl-seconds", "0"), "must be positive"),
    ],
)
def test_bad_requests_are_refused_before_redis_is_touched(
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str | None,
) -> None:
    # Nothing listens on the port: a request that got as far as Redis exits 1, not 2.
    config = write_config(f"redis://127.0.0.1:{free_port()}/0")
    code = _run(config, *extra)
    err = capsys.readouterr().err
    if message is None:
        assert code == 1
        assert "redis unavailable" in err
        return
    assert code == 2
    assert message in err
    assert TOKEN_LIKE not in err


def test_a_config_without_a_revocation_section_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "authz.yaml"
    config.write_text("issuers: []\n")
    assert _run(config, "--list") == 2
    assert f"{config}: revocation: missing" in capsys.readouterr().err
    config.write_text("revocation:\n  redis_url: redis://x:1/0\n  sync_interval_seconds: 2\n")
    assert _run(config, "--list") == 2
    assert "revocation.sync_interval_seconds" in capsys.readouterr().err


def test_before_accepts_now_and_rfc3339_with_an_offset() -> None:
    assert parse_before("now", now=1_800_000_000.0) == 1_800_000_000.0
    assert parse_before("2027-01-15T08:00:00+01:00", now=1_800_000_000.0) == 1_799_996_400.0
