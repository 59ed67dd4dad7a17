"""`authz-service explain`: an offline decision with the reason, for debugging policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz_service.cli import main
from tests.authz_service.conftest import Mint, write_config


def _explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["explain", *args])
    return code, json.loads(capsys.readouterr().out)


def test_explain_allow_names_rule_params_and_principal(
    config_dir: Path, mint: Mint, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(config_dir)
    token = mint("alice", scope="users:read", roles=["support"])
    code, out = _explain(
        capsys, "--config", str(config), "--path", "/api/v1/users/alice", "--token", token
    )
    assert code == 0
    assert out["decision"] == "allow"
    assert out["match"] == {"rule": "get-user", "params": {"user_id": "alice"}}
    assert out["principal"] == {
        "subject": "alice",
        "issuer": "https://idp.test",
        "scopes": ["users:read"],
        "roles": ["support"],
        "client_id": None,
    }
    assert token not in json.dumps(out)


def test_explain_says_which_check_failed(
    config_dir: Path, mint: Mint, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(config_dir)
    token = mint("alice", scope="users:read")
    code, out = _explain(
        capsys, "--config", str(config), "--path", "/api/v1/users/bob", "--token", token
    )
    assert code == 1
    assert (out["status"], out["reason"]) == (403, "condition_false")
    assert out["detail"]


def test_explain_missing_scope_and_no_token(
    config_dir: Path, mint: Mint, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(config_dir)
    token = mint("alice", scope="profile")
    _, out = _explain(
        capsys,
        "--config",
        str(config),
        "--method",
        "put",
        "--path",
        "/api/v1/users/alice",
        "--header",
        f"Authorization: Bearer {token}",
    )
    assert (out["status"], out["reason"], out["required_scopes"]) == (
        403,
        "insufficient_scope",
        ["users:write"],
    )
    _, out = _explain(capsys, "--config", str(config), "--path", "/api/v1/users/alice")
    assert (out["status"], out["reason"]) == (401, "no_credentials")


def test_explain_bad_path_and_unmatched(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(config_dir)
    _, out = _explain(capsys, "--config", str(config), "--path", "/api/v1/%2e%2e/admin")
    assert (out["status"], out["reason"]) == (400, "bad_path")
    _, out = _explain(capsys, "--config", str(config), "--path", "/nowhere")
    assert (out["status"], out["reason"], out["match"]) == (403, "no_route", {"rule": None})
