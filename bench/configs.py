"""The configs of the sidecars the bench runs alone: a 31-route policy, rate-limit settings.

The sidecars alone (bench.sidecars) and the footprint (bench.footprint) run each sidecar
in plaintext (h2load cannot present a client certificate; the mTLS path is the edge's),
with the project's defaults for everything not named here. The authz policy is the demo
policy of ARCHITECTURE.md section 4 plus 26 more routes of a realistic API (literal,
`{param}` and `{rest...}` segments, several methods, scopes, roles, CEL ownership and
tenant conditions), so route matching walks a real trie. The request under load,
`GET /api/v1/users/{sub}` with the subject's own token, matches `get-user`: scope
`users:read` and the CEL ownership condition
`params.user_id == token.sub || 'admin' in token.roles`.

Rate-limit rules, domain `edge`: the sidecars alone use the demo rules with every limit
raised (bench.edge_configs.bench_rules); the footprint uses `REDIS_COST_RULES`: a
per-subject limit of 1,000/day (a bucket's TTL is then about 86 s) and per address
100/minute with a burst of 1,000,000 (never empty; its TTL grows by 0.6 s per call), so
no call is denied and every bucket is still there to be counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.messages import AUDIENCE, ISSUER

OWNER = "params.user_id == token.sub || 'admin' in token.roles"
SAME_TENANT = "has(token.tenant) && params.tenant_id == token.tenant"


def _route(name: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "methods": [method], "path": path, **kw}


ROUTES: list[dict[str, Any]] = [
    # The demo policy (ARCHITECTURE.md section 4).
    _route("public-ping", "GET", "/api/v1/public/ping", public=True),
    _route("get-user", "GET", "/api/v1/users/{user_id}", scopes=["users:read"], conditions=[OWNER]),
    _route(
        "put-user", "PUT", "/api/v1/users/{user_id}", scopes=["users:write"], conditions=[OWNER]
    ),
    _route("delete-user", "DELETE", "/api/v1/users/{user_id}", roles=["admin"]),
    _route("admin-stats", "GET", "/api/v1/admin/stats", roles=["admin"]),
    # A realistic rest of the API.
    _route("public-status", "GET", "/api/v1/public/status", public=True),
    _route("list-products", "GET", "/api/v1/products", public=True),
    _route("get-product", "GET", "/api/v1/products/{product_id}", public=True),
    _route(
        "put-product",
        "PUT",
        "/api/v1/products/{product_id}",
        scopes=["catalog:write"],
        roles=["catalog-admin", "admin"],
    ),
    _route("delete-product", "DELETE", "/api/v1/products/{product_id}", roles=["admin"]),
    _route("list-users", "GET", "/api/v1/users", roles=["admin", "support"]),
    _route(
        "get-profile",
        "GET",
        "/api/v1/users/{user_id}/profile",
        scopes=["users:read"],
        conditions=[OWNER],
    ),
    _route(
        "put-profile",
        "PUT",
        "/api/v1/users/{user_id}/profile",
        scopes=["users:write"],
        conditions=[OWNER],
    ),
    _route(
        "get-settings",
        "GET",
        "/api/v1/users/{user_id}/settings",
        scopes=["users:read"],
        conditions=[OWNER],
    ),
    _route(
        "list-user-orders",
        "GET",
        "/api/v1/users/{user_id}/orders",
        scopes=["orders:read"],
        conditions=[OWNER],
    ),
    _route(
        "get-user-order",
        "GET",
        "/api/v1/users/{user_id}/orders/{order_id}",
        scopes=["orders:read"],
        conditions=[OWNER],
    ),
    _route("create-order", "POST", "/api/v1/orders", scopes=["orders:write"]),
    _route("get-order", "GET", "/api/v1/orders/{order_id}", scopes=["orders:read"]),
    _route(
        "cancel-order",
        "DELETE",
        "/api/v1/orders/{order_id}",
        scopes=["orders:write"],
        roles=["admin", "support"],
    ),
    _route(
        "list-invoices",
        "GET",
        "/api/v1/tenants/{tenant_id}/invoices",
        scopes=["billing:read"],
        conditions=[SAME_TENANT],
    ),
    _route(
        "get-invoice",
        "GET",
        "/api/v1/tenants/{tenant_id}/invoices/{invoice_id}",
        scopes=["billing:read"],
        conditions=[SAME_TENANT],
    ),
    _route(
        "pay-invoice",
        "POST",
        "/api/v1/tenants/{tenant_id}/invoices/{invoice_id}/pay",
        scopes=["billing:write"],
        conditions=[SAME_TENANT],
    ),
    _route(
        "list-projects",
        "GET",
        "/api/v1/tenants/{tenant_id}/projects",
        scopes=["projects:read"],
        conditions=[SAME_TENANT],
    ),
    _route(
        "get-project",
        "GET",
        "/api/v1/tenants/{tenant_id}/projects/{project_id}",
        scopes=["projects:read"],
        conditions=[SAME_TENANT],
    ),
    _route(
        "put-project",
        "PUT",
        "/api/v1/tenants/{tenant_id}/projects/{project_id}",
        scopes=["projects:write"],
        conditions=[SAME_TENANT, "'owner' in token.roles || 'admin' in token.roles"],
    ),
    _route("get-file", "GET", "/api/v1/files/{path...}", scopes=["files:read"]),
    _route("put-file", "PUT", "/api/v1/files/{path...}", scopes=["files:write"]),
    _route("search", "GET", "/api/v1/search", scopes=["search:read"]),
    _route("admin-users", "GET", "/api/v1/admin/users", roles=["admin"]),
    _route("admin-audit", "GET", "/api/v1/admin/audit", roles=["admin", "auditor"]),
    _route("post-webhook", "POST", "/api/v1/webhooks/{provider}", scopes=["webhooks:write"]),
]


def authz_config(
    *,
    listen: str,
    jwks_file: Path,
    audit_file: Path,
) -> dict[str, Any]:
    return {
        "server": {
            "listen": listen,
            "tls": {"mode": "plaintext"},
            "workers": 1,
            # Nothing balances away from a bench sidecar while it stops: no drain window.
            "drain_period_seconds": 0,
        },
        "issuers": [
            {
                "issuer": ISSUER,
                "jwks_file": str(jwks_file),
                "audiences": [AUDIENCE],
                "algorithms": ["RS256", "EdDSA", "Ed25519"],
                "leeway_seconds": 30,
                "roles_claim": "roles",
            }
        ],
        "verified_token_cache_size": 10_000,
        "identity": {"realm": "edgeguard", "tenant_claim": "tenant", "plan_claim": "plan"},
        "audit": {"enabled": True, "target": str(audit_file)},
        "routes": ROUTES,
    }


REDIS_COST_RULES: dict[str, Any] = {
    "domain": "edge",
    "descriptors": [
        {
            "key": "remote_address",
            "rate_limit": {
                "name": "cost-per-client-address",
                "unit": "minute",
                "requests_per_unit": 100,
                "burst": 1_000_000,
            },
        },
        {
            "key": "subject",
            "rate_limit": {
                "name": "cost-per-subject",
                "unit": "day",
                "requests_per_unit": 1000,
                "burst": 1_000_000,
            },
        },
    ],
}


def ratelimit_settings(
    *,
    listen: str,
    rules_dir: Path,
    redis_url: str | None,
) -> dict[str, Any]:
    """The demo settings (config/ratelimit/service.yaml's values) with the bench's
    listener, rules and store."""
    store: dict[str, Any] = {"type": "memory"}
    if redis_url is not None:
        store = {
            "type": "redis",
            "url": redis_url,
            "timeouts": {"call_ms": 10, "connect_ms": 200},
            "max_connections": 256,
        }
    return {
        "server": {
            "listen": listen,
            "tls": {"mode": "plaintext"},
            "workers": 1,
            # Nothing balances away from a bench sidecar while it stops: no drain window.
            "drain_period_seconds": 0,
        },
        "rules": str(rules_dir),
        "store": store,
        "failure_mode": "fail_open",
        "key_prefix": "rl:",
        "max_in_flight": 256,
        "empty_bucket_cache": {"enabled": True, "max_entries": 100_000},
        "log": {"level": "INFO", "max_lines_per_second": 10},
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# generated by bench.configs for one bench run\n" + yaml.safe_dump(data))
    return path
