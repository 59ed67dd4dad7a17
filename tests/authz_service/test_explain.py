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


def _explain_token(
    capsys: pytest.CaptureFixture[str], config: Path, token: str
) -> dict[str, object]:
    _, out = _explain(
        capsys, "--config", str(config), "--path", "/api/v1/users/alice", "--token", token
    )
    assert token not in json.dumps(out)  # the token is never printed
    return out


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"audience": "api://other"}, "wrong_audience"),
        ({"issuer": "https://other.idp"}, "unknown_issuer"),
        ({"header": {"kid": "retired-key"}}, "unknown_key"),
        ({"alg": "Ed25519", "header": {"kid": "x"}}, "unknown_key"),
        ({"ttl": -3600}, "expired"),
        ({"subject": " alice"}, "bad_sub"),
    ],
)
def test_explain_shows_the_tokens_side_next_to_the_configs(
    config_dir: Path,
    mint: Mint,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, object],
    reason: str,
) -> None:
    config = write_config(config_dir)
    subject = str(overrides.pop("subject", "alice"))
    token = mint(subject, scope="users:read", **overrides)
    out = _explain_token(capsys, config, token)
    assert (out["status"], out["reason"]) == (401, reason)
    shown = out["token"]
    assert isinstance(shown, dict)
    assert {"iss", "aud", "alg", "kid"} <= set(shown)
    expected = out["expected"]
    assert isinstance(expected, dict)
    if reason == "unknown_issuer":
        assert expected == {"issuer": None, "configured_issuers": ["https://idp.test"]}
        return
    assert expected["issuer"] == shown["iss"] == "https://idp.test"
    assert expected["audiences"] == ["api://demo"]
    assert expected["algorithms"] == ["Ed25519", "EdDSA", "RS256"]
    assert isinstance(expected["kids"], list)
    assert len(expected["kids"]) == 2  # the dev IdP's RSA and Ed25519 keys
    assert expected["keys_error"] is None
    assert isinstance(expected["now"], int)


def test_explain_shows_what_a_malformed_token_lets_it_read(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(config_dir)
    out = _explain_token(capsys, config, "not.a.jwt")
    assert out["reason"] == "malformed"
    assert out["token"] == {"unreadable": ["a segment is not base64url-encoded JSON"] * 2}
    assert out["expected"] == {"issuer": None, "configured_issuers": ["https://idp.test"]}
    out = _explain_token(capsys, config, "only-one-part")
    assert out["token"] == {"shape": "1 dot-separated parts, a compact JWS has 3"}


def test_explain_on_allow_shows_the_token_side_too(
    config_dir: Path, mint: Mint, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(config_dir)
    out = _explain_token(capsys, config, mint("alice", scope="users:read"))
    assert out["decision"] == "allow"
    token = out["token"]
    assert isinstance(token, dict)
    assert (token["iss"], token["aud"], token["alg"], token["sub"]) == (
        "https://idp.test",
        "api://demo",
        "RS256",
        "alice",
    )


BODY_ROUTES = """
routes:
  - name: put-user
    methods: [PUT]
    path: /api/v1/users/{user_id}
    scopes: [users:write]
    body:
      schema_file: schemas/user.yaml
rule_sets:
  - name: preview
    select: {api: preview}
    mode: dry_run
    routes:
      - {name: nothing-public, methods: [GET], path: /api/v1/nothing, roles: [nobody]}
"""


def test_explain_takes_a_body_and_a_context(
    config_dir: Path, mint: Mint, capsys: pytest.CaptureFixture[str]
) -> None:
    (config_dir / "schemas").mkdir()
    (config_dir / "schemas" / "user.yaml").write_text(
        "type: object\nrequired: [email]\nproperties: {email: {type: string, format: email}}\n"
    )
    config = write_config(config_dir, routes=BODY_ROUTES)
    token = mint("alice", scope="users:write")
    body = config_dir / "body.json"
    body.write_text('{"email": "secret-looking@@value", "roles": ["admin"]}')
    common = ["--config", str(config), "--token", token]
    code, out = _explain(
        capsys,
        *common,
        "--method",
        "PUT",
        "--path",
        "/api/v1/users/alice",
        "--body-file",
        str(body),
    )
    assert (code, out["status"], out["reason"]) == (1, 422, "schema_violation")
    violations = out["violations"]
    assert isinstance(violations, list)
    assert sorted(v["pointer"] for v in violations) == ["/email", "/roles"]
    assert "secret-looking" not in json.dumps(out)
    code, out = _explain(capsys, *common, "--path", "/api/v1/nothing", "--context", "api=preview")
    assert (code, out["decision"], out["enforced"], out["rule_set"]) == (
        0,
        "deny",
        False,
        "preview",
    )
