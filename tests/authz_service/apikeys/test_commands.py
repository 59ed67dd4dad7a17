"""`authz-service apikey ...` against a real redis-server: the key is printed once, and
nothing else ever prints a secret or a hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz_service.apikeys.format import parse_key
from authz_service.cli import main
from tests.authz_service.apikeys.conftest import write_config
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def config(tmp_path: Path, redis_server: RedisServer) -> Path:
    return write_config(tmp_path, redis_server.url)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["apikey", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _create(capsys: pytest.CaptureFixture[str], config: Path) -> tuple[str, str]:
    code, out, _ = _run(
        capsys,
        "create",
        "--config",
        str(config),
        "--subject",
        "svc-a",
        "--scopes",
        "users:read users:write",
        "--roles",
        "service",
        "--tenant",
        "t1",
        "--plan",
        "gold",
        "--ttl-days",
        "30",
    )
    assert code == 0
    key = out.splitlines()[0]
    return key, parse_key(key, prefix="eg_live").key_id


def test_create_prints_the_key_once_then_its_metadata(
    capsys: pytest.CaptureFixture[str], config: Path, redis_server: RedisServer
) -> None:
    key, key_id = _create(capsys, config)
    code, out, err = _run(capsys, "show", "--config", str(config), key_id)
    assert code == 0
    shown = json.loads(out)
    assert shown["key_id"] == key_id
    assert shown["status"] == "active"
    assert shown["scopes"] == ["users:read", "users:write"]
    client = redis_server.client()
    digest = str(client.hget(f"apikey:{key_id}", "hash"), "ascii")  # type: ignore[arg-type]
    client.close()
    secret = parse_key(key, prefix="eg_live").secret
    for command in (["list"], ["show", key_id], ["revoke", key_id]):
        code, out, err = _run(capsys, command[0], "--config", str(config), *command[1:])
        assert code == 0
        for text in (secret, digest, "hash"):
            assert text not in out + err
    assert json.loads(out)["status"] == "revoked"


def test_create_shows_the_key_in_its_output_once(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    _code, out, err = _run(capsys, "create", "--config", str(config), "--subject", "s")
    key = out.splitlines()[0]
    assert (out + err).count(key) == 1
    assert parse_key(key, prefix="eg_live").secret not in out.split("\n", 1)[1] + err
    assert "cannot be shown again" in err


def test_rotate_prints_the_successor_and_list_shows_both(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    _, old_id = _create(capsys, config)
    code, out, _ = _run(
        capsys, "rotate", "--config", str(config), old_id, "--overlap-seconds", "3600"
    )
    assert code == 0
    new_id = parse_key(out.splitlines()[0], prefix="eg_live").key_id
    assert json.loads(out.split("\n", 1)[1])["rotated_from"] == old_id
    code, out, _ = _run(capsys, "list", "--config", str(config))
    listed = {item["key_id"]: item for item in json.loads(out)}
    assert listed[old_id]["status"] == "rotating"
    assert listed[old_id]["replaced_by"] == new_id
    assert listed[new_id]["status"] == "active"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--subject", "s", "--scopes", "admin:all"], "over the ceiling"),
        (["create", "--subject", "s", "--roles", "admin"], "over the ceiling"),
        (["create", "--subject", "s", "--ttl-days", "999"], "ttl"),
        (["show", "aaaaaaaaaaaaaaaa"], "no API key aaaaaaaaaaaaaaaa"),
        (["revoke", "not-an-id"], "not a key id"),
        (["rotate", "aaaaaaaaaaaaaaaa", "--overlap-seconds", "-1"], "overlap"),
    ],
)
def test_refusals_are_clear_and_exit_2(
    capsys: pytest.CaptureFixture[str], config: Path, argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, argv[0], "--config", str(config), *argv[1:])
    assert code == 2
    assert out == ""
    assert message in err


def test_a_config_without_api_keys_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "authz.yaml"
    config.write_text("routes: []\n")
    code, _, err = _run(capsys, "list", "--config", str(config))
    assert code == 2
    assert "api_keys: missing" in err


def test_redis_unreachable_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, "redis://127.0.0.1:1/0")
    code, _, err = _run(capsys, "list", "--config", str(config))
    assert code == 1
    assert "Redis unavailable" in err
