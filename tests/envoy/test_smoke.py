"""A real Envoy on the rendered config with no sidecars at all: it must fail closed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.envoy_config import SECURITY_HEADERS
from devstack.pki import Pki
from tests.envoy.envoy_process import free_port_params, running_envoy
from tests.support.https import Reply

pytestmark = pytest.mark.e2e


def _assert_hardened(resp: Reply) -> None:
    for name, value in SECURITY_HEADERS:
        assert resp.all(name) == [value], name
    assert resp.header("server") is None
    assert not [k for k, _ in resp.headers if k.lower().startswith("x-envoy-")]


def test_without_sidecars_healthz_is_503_and_requests_are_denied(pki: Pki, tmp_path: Path) -> None:
    params = free_port_params(pki)
    with running_envoy(params, pki, tmp_path) as envoy:
        health = envoy.request("/healthz")
        assert health.status == 503
        _assert_hardened(health)

        # Rate limiting fails open (the sidecar owns that choice), authz fails closed.
        denied = envoy.request("/api/v1/public/ping")
        assert denied.status == 503
        _assert_hardened(denied)
        assert denied.header("content-type") == "application/json"
        body = json.loads(denied.body)
        assert body == {
            "error": "authorization_unavailable",
            "request_id": denied.header("x-request-id"),
        }
