"""API keys and token revocation through the real Envoy, the real sidecars and the stack's
Redis: keys are minted and revoked with the CLI, as an operator would, against the
config the stack's authz sidecar runs with."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.e2e.conftest import Edge, assert_denial, identity_at_upstream
from tests.support.processes import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.own_stack("mints and revokes with the CLI against the stack's config and Redis"),
]

INTERNAL = "/api/v1/internal/reports"


def _cli(edge: Edge, *args: str) -> subprocess.CompletedProcess[str]:
    config = edge.stack.config_dir / "authz.yaml"
    return subprocess.run(
        [sys.executable, "-m", "authz_service", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _mint_key(edge: Edge, *extra: str) -> str:
    done = _cli(edge, "apikey", "create", "--subject", "reports-job", "--roles", "service", *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0].strip()


def _with_key(edge: Edge, key: str, path: str = INTERNAL) -> Any:
    return edge.client.request(path, headers=[("authorization", f"ApiKey {key}")])


def test_an_api_key_gets_in_where_the_rule_takes_one(edge: Edge) -> None:
    key = _mint_key(edge)
    reply = _with_key(edge, key)
    assert reply.status == 200, reply.body
    identity = identity_at_upstream(reply)
    assert identity["x-auth-subject"] == "reports-job"
    assert identity["x-auth-roles"] == ["service"]
    # A rule that takes only JWTs refuses it like a bad token.
    assert_denial(_with_key(edge, key, "/api/v1/users/reports-job"), 401, "invalid_token")
    audit = (edge.stack.log_dir / "authz.log").read_text(errors="replace")
    assert key not in audit
    assert key.rsplit("_", 1)[-1] not in audit
    # The sidecar recorded the use (in the background, once a minute at most).
    key_id = key.split("_")[2]

    def last_used() -> object:
        shown = _cli(edge, "apikey", "show", key_id)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["last_used"]

    assert wait_until(lambda: last_used() is not None, timeout=5)


def test_a_wrong_secret_an_unknown_key_and_a_bearer_next_to_a_key(edge: Edge) -> None:
    key = _mint_key(edge)
    prefix, _, rest = key.rpartition("_")
    forged = f"{prefix}_{'A' * len(rest)}"
    assert_denial(_with_key(edge, forged), 401, "invalid_token")
    assert_denial(_with_key(edge, "eg_test_nothing"), 401, "invalid_token")
    token = edge.mint("alice")
    both = edge.client.request(
        INTERNAL,
        headers=[("authorization", f"ApiKey {key}"), ("authorization", f"Bearer {token}")],
    )
    assert_denial(both, 400, "invalid_request")


def test_a_revoked_key_is_refused_within_a_second(edge: Edge) -> None:
    key = _mint_key(edge)
    assert _with_key(edge, key).status == 200  # now in the sidecar's cache
    key_id = key.split("_")[2]
    done = _cli(edge, "apikey", "revoke", key_id)
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()
    assert wait_until(lambda: _with_key(edge, key).status == 401, timeout=5)
    assert time.monotonic() - revoked_at < 1.0 + 0.5  # the contract, plus one request's time


def test_a_revoked_token_is_refused_within_a_second(edge: Edge) -> None:
    token = edge.mint("carol", scope="users:read")
    assert edge.client.request("/api/v1/users/carol", token=token).status == 200  # cached
    payload = token.split(".")[1]
    jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    done = _cli(edge, "revoke", "--issuer", edge.stack.issuer, "--jti", jti)
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout
    revoked_at = time.monotonic()
    assert wait_until(
        lambda: edge.client.request("/api/v1/users/carol", token=token).status == 401, timeout=5
    )
    assert time.monotonic() - revoked_at < 1.0 + 0.5
    # Another token of the same subject is still good: only that jti was revoked.
    other = edge.mint("carol", scope="users:read")
    assert edge.client.request("/api/v1/users/carol", token=other).status == 200
