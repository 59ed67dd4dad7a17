"""Builders shared by the policy tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz_service.policy import CompiledPolicy, PolicySettings, RequestFacts, RouteMatch
from authz_service.principal import Principal
from sidecar_runtime.config import validate_model

SOURCE = "policy.yaml"


def route(
    name: str, path: str, methods: tuple[str, ...] = ("GET",), **extra: Any
) -> dict[str, Any]:
    return {"name": name, "methods": list(methods), "path": path, **extra}


def compile_routes(routes: list[dict[str, Any]]) -> CompiledPolicy:
    settings = validate_model(PolicySettings, {"routes": routes}, SOURCE)
    return CompiledPolicy.compile(settings, source=SOURCE)


def facts(
    path: str,
    method: str = "GET",
    *,
    host: str = "api.example.com",
    headers: Mapping[str, str] | None = None,
) -> RequestFacts:
    return RequestFacts(
        method=method,
        raw_path=path,
        host=host,
        headers=dict(headers or {}),
        client_address="192.0.2.7",
        peer_principal="spiffe://envoy",
        request_id="req-1",
    )


def principal(
    sub: str = "alice",
    *,
    scopes: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
    claims: Mapping[str, Any] | None = None,
) -> Principal:
    return Principal(
        subject=sub,
        issuer="https://idp.example",
        audiences=("api://demo",),
        scopes=frozenset(scopes),
        roles=frozenset(roles),
        claims={"sub": sub, "iss": "https://idp.example", **(claims or {})},
        expires_at=2_000_000_000.0,
    )


def matched_name(policy: CompiledPolicy, path: str, method: str = "GET", **kw: Any) -> str | None:
    match = policy.match(facts(path, method, **kw))
    return None if match is None else match.rule.name


def must_match(policy: CompiledPolicy, request: RequestFacts) -> RouteMatch:
    match = policy.match(request)
    assert match is not None
    return match
