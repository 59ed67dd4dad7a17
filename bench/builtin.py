"""`envoy-builtin`: Envoy's own filters doing the demo policy, for comparison.

header mutation -> local_ratelimit (stage 0, per client address) -> jwt_authn (RS256 +
EdDSA against the dev IdP's JWKS, inline) -> rbac (the demo routes; scopes and roles from
the JWT payload in dynamic metadata; the ownership rule as a CEL condition) ->
local_ratelimit (stage 1, per subject from the JWT payload) -> router. Limits far above
the offered load, so every request does all the work. `BUILTIN_CANNOT` lists what this
configuration cannot express of the product's contract.
"""

from __future__ import annotations

import copy
import json
import re

from bench.edge_configs import HIGH, Config, hcm, http_filter, typed
from bench.messages import AUDIENCE

JWT_NS = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "jwt_payload"


class _Cel:
    """A tiny builder of CEL parsed-expression ASTs (google.api.expr.v1alpha1.Expr), the
    form Envoy's RBAC `condition` takes (it has no string form)."""

    def __init__(self) -> None:
        self._next = 0

    def _id(self) -> int:
        self._next += 1
        return self._next

    def ident(self, name: str) -> Config:
        return {"id": self._id(), "ident_expr": {"name": name}}

    def select(self, operand: Config, field: str) -> Config:
        return {"id": self._id(), "select_expr": {"operand": operand, "field": field}}

    def string(self, value: str) -> Config:
        return {"id": self._id(), "const_expr": {"string_value": value}}

    def call(self, function: str, *args: Config) -> Config:
        return {"id": self._id(), "call_expr": {"function": function, "args": list(args)}}

    def index(self, operand: Config, key: str) -> Config:
        return self.call("_[_]", operand, self.string(key))


def ownership_condition() -> Config:
    """request.url_path == '/api/v1/users/' + <jwt payload>.sub
    || 'admin' in <jwt payload>.roles"""
    c = _Cel()
    payload = c.index(
        c.index(c.select(c.ident("metadata"), "filter_metadata"), JWT_NS), PAYLOAD_KEY
    )
    owner = c.call(
        "_==_",
        c.select(c.ident("request"), "url_path"),
        c.call("_+_", c.string("/api/v1/users/"), c.index(payload, "sub")),
    )
    admin = c.call("@in", c.string("admin"), c.index(payload, "roles"))
    return c.call("_||_", owner, admin)


def _claim(path: list[str], value: Config) -> Config:
    keys = [{"key": PAYLOAD_KEY}, *({"key": k} for k in path)]
    matcher = {"filter": JWT_NS, "path": keys, "value": value}
    return {"sourced_metadata": {"metadata_matcher": matcher, "metadata_source": "DYNAMIC"}}


def _scope(scope: str) -> Config:
    # `scope` is one space-separated string: a whole-string RE2 match for one member.
    regex = f"(.* )?{re.escape(scope)}( .*)?"
    return _claim(["scope"], {"string_match": {"safe_regex": {"regex": regex}}})


def _role(role: str) -> Config:
    return _claim(["roles"], {"list_match": {"one_of": {"string_match": {"exact": role}}}})


def _perm(method: str, *, exact: str | None = None, regex: str | None = None) -> Config:
    path = {"exact": exact} if exact is not None else {"safe_regex": {"regex": regex}}
    return {
        "and_rules": {
            "rules": [
                {"header": {"name": ":method", "string_match": {"exact": method}}},
                {"url_path": {"path": path}},
            ]
        }
    }


USER_PATH = "/api/v1/users/[^/]+"


def demo_rbac_policies() -> Config:
    return {
        "public-ping": {
            "permissions": [_perm("GET", exact="/api/v1/public/ping")],
            "principals": [{"any": True}],
        },
        "get-user": {
            "permissions": [_perm("GET", regex=USER_PATH)],
            "principals": [_scope("users:read")],
            "condition": ownership_condition(),
            "cel_config": {"enable_string_concat": True},  # off by default in Envoy
        },
        "put-user": {
            "permissions": [_perm("PUT", regex=USER_PATH)],
            "principals": [_scope("users:write")],
            "condition": ownership_condition(),
            "cel_config": {"enable_string_concat": True},
        },
        "delete-user": {
            "permissions": [_perm("DELETE", regex=USER_PATH)],
            "principals": [_role("admin")],
        },
        "admin-stats": {
            "permissions": [_perm("GET", exact="/api/v1/admin/stats")],
            "principals": [_role("admin")],
        },
    }


def _bucket(per_second: int, burst: int) -> Config:
    return {"max_tokens": burst, "tokens_per_fill": per_second, "fill_interval": "1s"}


def _local_ratelimit(stage_no: int, key: str, action: Config) -> Config:
    percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": f"envoy.filters.http.local_ratelimit.stage{stage_no}",
        "typed_config": typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix=f"local_stage{stage_no}",
            stage=stage_no,
            # The default bucket (required) never limits; the wildcard descriptor below
            # gives each distinct value its own bucket (max_dynamic_descriptors of them),
            # with a limit never reached: every request does all the work.
            token_bucket=_bucket(HIGH, HIGH),
            filter_enabled={**percent, "runtime_key": f"local_stage{stage_no}_enabled"},
            filter_enforced={**percent, "runtime_key": f"local_stage{stage_no}_enforced"},
            descriptors=[{"entries": [{"key": key}], "token_bucket": _bucket(HIGH, HIGH)}],
            max_dynamic_descriptors=100_000,
            rate_limits=[{"actions": [action]}],
            enable_x_ratelimit_headers="DRAFT_VERSION_03",
        ),
    }


def builtin_filters(cfg: Config, *, issuer: str, jwks: Config) -> Config:
    """header mutation -> local_ratelimit(address) -> jwt_authn -> rbac ->
    local_ratelimit(subject) -> router, on a config without the sidecar filters."""
    cfg = copy.deepcopy(cfg)
    manager = hcm(cfg)
    jwt = {
        "name": JWT_NS,
        "typed_config": typed(
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers={
                "demo": {
                    "issuer": issuer,
                    "audiences": [AUDIENCE],
                    "local_jwks": {"inline_string": json.dumps(jwks)},
                    "payload_in_metadata": PAYLOAD_KEY,
                    "clock_skew_seconds": 30,
                    "jwt_cache_config": {"jwt_cache_size": 10_000},
                }
            },
            rules=[
                {"match": {"path": "/api/v1/public/ping"}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "demo"}},
            ],
        ),
    }
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": typed(
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            rules={"action": "ALLOW", "policies": demo_rbac_policies()},
        ),
    }
    subject_action = {
        "metadata": {
            "descriptor_key": "subject",
            "metadata_key": {"key": JWT_NS, "path": [{"key": PAYLOAD_KEY}, {"key": "sub"}]},
            "source": "DYNAMIC",
        }
    }
    manager["http_filters"] = [
        http_filter(manager, "envoy.filters.http.header_mutation"),
        _local_ratelimit(0, "remote_address", {"remote_address": {}}),
        jwt,
        rbac,
        _local_ratelimit(1, "subject", subject_action),
        manager["http_filters"][-1],
    ]
    return cfg


BUILTIN_CANNOT = [
    "limits are per Envoy process (local_ratelimit), not global across replicas: N replicas"
    " admit N times the limit; there is no shared store",
    "no RFC 6750 `insufficient_scope` answer naming the missing scope: RBAC answers every"
    " policy denial with a plain 403 `RBAC: access denied`",
    "no per-decision audit line with a reason code (only the access log and counters)",
    "the ownership rule needs a hand-built CEL AST (RBAC has no string form) and a path"
    " regex instead of a `{user_id}` template; path parameters cannot be named",
    "token rules beyond signature/exp/nbf/iss/aud are not available: no `typ` (at+jwt)"
    " check, no max token age, no refusal of duplicate JSON members or string-typed"
    " `exp`, no per-issuer algorithm allow-list beyond the JWKS keys' own",
    "no JWKS hardening knobs of the sidecar (unknown-kid refetch cooldown, last-good key"
    " set on IdP garbage, dropping small-order Ed25519 keys)",
]
