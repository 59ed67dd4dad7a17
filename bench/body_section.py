"""The body section: what a body schema costs, in the validator and through the edge (issue 18).

1. Validators (bench.body_validation): µs per validation of each candidate for the demo
   user schema and a ~15-field profile schema, valid and invalid bodies, and the whole
   `CompiledBody.check` the sidecar runs per body (parse within the limits + validate),
   `validation_rounds` calls per figure, in the harness's process while no stack runs.
2. The edge: one local stack (default profile, the sidecars' default stack) whose policy
   is the demo's plus two rules alike but for the body:

       bench-with-schema  PUT /bench/with-schema/{id}  body: the demo user schema
       bench-no-schema    PUT /bench/no-schema/{id}    no body rule

   both `scopes: [users:write]` and the ownership condition `params.id == token.sub`.
   Envoy forwards the body to ext_authz only on the first: its body route comes from the
   same policy file (`devstack.configs.body_routes`; the stack renders it into
   `EnvoyParams.body_routes`), and the run checks that the rendered routes are exactly
   those. Every h2load process PUTs its subject's ~60-byte JSON body (display name and
   e-mail) to each route in turn, with the edge section's connections and streams, in
   `body_rounds` alternating rounds of `edge_saturation_s`. Per route: the median rate,
   and CPU per request by process from the round with the median server CPU; the cost of
   the schema: the medians of the per-round differences (µs) and ratios (rate).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import body_validation, edge, edge_budget, edge_configs, rounds
from bench.context import Ctx, describe, stage
from bench.load import Client, Shape
from devstack import configs

WITH, WITHOUT = "with-schema", "no-schema"
SCOPE = "users:write"
OWNER = "params.id == token.sub"
JSON_HEADERS = ("content-type: application/json", ":method: PUT")
START_S = 15.0  # the stack's start and checks, a generous bound
LOAD_OVERHEAD_S = 1.5  # h2load start and stop, counters, CPU meter: per load
VALIDATORS_S = 10.0  # the validator table at the full run's rounds
RESERVE_S = 100.0  # the footprint, after this section


def rule(route: str) -> dict[str, Any]:
    """The policy rule of `route` (WITH or WITHOUT): the same but for `body`."""
    out: dict[str, Any] = {
        "name": f"bench-{route}",
        "methods": ["PUT"],
        "path": f"/bench/{route}/{{id}}",
        "scopes": [SCOPE],
        "conditions": [OWNER],
    }
    if route == WITH:
        out["body"] = {"max_bytes": 4096, "schema": body_validation.DEMO}
    return out


def write_policy(path: Path) -> Path:
    """The demo authz config with the two bench rules added."""
    data = yaml.safe_load(configs.AUTHZ_DEMO.read_text())
    data["routes"] += [rule(WITH), rule(WITHOUT)]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def expected_body_routes(policy: Path) -> list[str]:
    """Envoy's route names for the policy's body rules, as the config renders them."""
    return ["body:" + ",".join(r.rules) for r in configs.body_routes(configs.load_policy(policy))]


def rendered_body_routes(envoy_config: Path) -> list[str]:
    cfg = yaml.safe_load(envoy_config.read_text())
    hosts = edge_configs.hcm(cfg)["route_config"]["virtual_hosts"]
    names = (str(route.get("name", "")) for host in hosts for route in host["routes"])
    return [name for name in names if name.startswith("body:")]


def body(subject: str, **extra: Any) -> bytes:
    """The request body every route gets: valid for the demo user schema."""
    value = {"display_name": f"Bench {subject}", "email": f"{subject}@example.com", **extra}
    return json.dumps(value, separators=(",", ":")).encode()


def put_status(running: edge.Edge, path: str, token: str, data: bytes) -> int:
    tls = ssl.create_default_context(cafile=str(running.pki.ca))
    tls.check_hostname = False
    request = urllib.request.Request(  # noqa: S310 - loopback
        running.url_base + path,
        data=data,
        method="PUT",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=tls, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def verify(running: edge.Edge) -> dict[str, int]:
    """Both rules answer as they should before any load: the body that every load sends
    200 on both, a mass-assignment body 422 only where a schema is, someone else's id 403."""
    (subject, token), other = running.tokens[0], running.tokens[1][0]
    seen: dict[str, int] = {}
    for route in (WITH, WITHOUT):
        own = f"/bench/{route}/{subject}"
        seen[f"{route} valid"] = put_status(running, own, token, body(subject))
        seen[f"{route} roles"] = put_status(running, own, token, body(subject, roles=["admin"]))
        seen[f"{route} other_user"] = put_status(
            running, f"/bench/{route}/{other}", token, body(subject)
        )
    want = {
        f"{WITH} valid": 200, f"{WITH} roles": 422, f"{WITH} other_user": 403,
        f"{WITHOUT} valid": 200, f"{WITHOUT} roles": 200, f"{WITHOUT} other_user": 403,
    }  # fmt: skip
    wrong = {key: (seen[key], status) for key, status in want.items() if seen[key] != status}
    if wrong:
        raise RuntimeError(f"body routes: got (status, expected) {wrong}")
    return seen


def clients(ctx: Ctx, running: edge.Edge, route: str) -> list[Client]:
    """One h2load process per token, each PUTting its own subject's body to `route`."""
    out = []
    for subject, jwt in running.tokens[: max(2, ctx.timing.clients)]:
        path = ctx.dir("bodies") / f"{subject}.json"
        path.write_bytes(body(subject))
        headers = (f"authorization: Bearer {jwt}", *JSON_HEADERS)
        out.append(Client(f"{running.url_base}/bench/{route}/{subject}", path, headers))
    return out


def validators(ctx: Ctx) -> list[dict[str, Any]]:
    n = ctx.timing.validation_rounds
    with stage(ctx, f"body: validators, {n} validations per figure"):
        return [*body_validation.measure(n), *body_validation.measure_check(n)]


def run_section(ctx: Ctx) -> dict[str, Any]:
    t = ctx.timing
    per_load = t.edge_saturation_s + t.warmup_s + LOAD_OVERHEAD_S
    if ctx.out_of_time(VALIDATORS_S + START_S + 2 * t.body_rounds * per_load + RESERVE_S):
        return {"skipped": "time budget"}
    out: dict[str, Any] = {"validators": validators(ctx), "rounds": t.body_rounds}
    try:
        out["edge"] = edge_routes(ctx, per_load)
    except Exception as exc:  # the validator table stands on its own
        ctx.notes.append(f"body: the edge part failed ({describe(exc)})")
    return out


def edge_routes(ctx: Ctx, per_load: float) -> dict[str, Any]:
    t = ctx.timing
    _, default = edge.sidecar_stacks()
    spec = edge.Spec(f"edgeguard-{default}", "edgeguard", "local", default)
    policy = write_policy(ctx.dir("configs", "edgeguard-body") / "authz-policy.yaml")
    with stage(ctx, "body: start the stack with both rules"):
        running = edge.start_stack(
            ctx, spec, rules=edge_configs.bench_rules(), tag="edgeguard-body",
            authz_config=policy, scope=SCOPE,
        )  # fmt: skip
    try:
        assert running.stack is not None
        assert running.stack.envoy_config is not None
        routes = rendered_body_routes(running.stack.envoy_config)
        if routes != expected_body_routes(policy) or f"body:bench-{WITH}" not in routes:
            raise RuntimeError(f"Envoy's body routes {routes} disagree with the policy")
        verified = verify(running)
        shape = Shape(t.conns, t.edge_streams, t.edge_saturation_s, t.warmup_s)
        loaders = {route: _loader(ctx, running, shape, route) for route in (WITH, WITHOUT)}
        with stage(ctx, f"body: {t.body_rounds} alternating rounds of both routes"):
            loads = rounds.run_rounds(
                ctx, loaders, t.body_rounds, what="body",
                may_continue=lambda: ctx.remaining() > 2 * per_load + RESERVE_S,
            )  # fmt: skip
    finally:
        running.stop()
    return summarize(loads, verified=verified, envoy_body_routes=routes, command=running.command)


def _loader(
    ctx: Ctx, running: edge.Edge, shape: Shape, route: str
) -> Callable[[int], dict[str, Any]]:
    chosen = clients(ctx, running, route)

    def load(index: int) -> dict[str, Any]:
        label = f"round-{index + 1}"
        out = edge.load(ctx, running, shape, label, clients=chosen, name=f"body-{route}")
        # h2load counts any 2xx as a success: a 403 or 422 would mean other work measured.
        others = {status: n for status, n in out["statuses"].items() if status != "200"}
        if others:
            ctx.notes.append(f"body {route} {label}: answers other than 200: {others}")
        return out

    return load


def summarize(loads: dict[str, list[dict[str, Any]]], **facts: Any) -> dict[str, Any]:
    """Per route: every round, the median-rate load and the median-server-CPU load; and
    the schema's cost: per-round differences and ratios, with their medians."""
    out: dict[str, Any] = {"routes": {}, **facts}
    for route, route_loads in loads.items():
        out["routes"][route] = {
            "rule": rule(route)["name"],
            "rounds": route_loads,
            "saturation": rounds.median_load(route_loads, lambda x: float(x["rate_rps"])),
            "cpu_load": rounds.median_load(route_loads, edge_budget.server_us),
        }
    paired = list(zip(loads.get(WITH, []), loads.get(WITHOUT, []), strict=False))
    per_round = [_difference(a, b) for a, b in paired]
    out["difference"] = {
        "rate_ratio": rounds.median([d["rate_ratio"] for d in per_round if d["rate_ratio"]]),
        "us_by_process": {
            process: rounds.median([d["us_by_process"][process] for d in per_round])
            for process in (per_round[0]["us_by_process"] if per_round else {})
        },
        "per_round": per_round,
    }
    return out


def _difference(with_schema: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """One round's cost of the schema: CPU per request (µs, by process and the servers'
    sum) with the schema minus without, and the rate with over without."""
    a, b = edge_budget.budget(WITH, with_schema, 1), edge_budget.budget(WITHOUT, without, 1)
    us: dict[str, float] = {}
    if a is not None and b is not None:
        for process in dict.fromkeys([*a.us_by_process, *b.us_by_process]):
            us[process] = a.us_by_process.get(process, 0.0) - b.us_by_process.get(process, 0.0)
        us["servers"] = a.server_us - b.server_us
    rate = without["rate_rps"] and with_schema["rate_rps"] / without["rate_rps"]
    return {"rate_ratio": round(rate, 3) if rate else None, "us_by_process": us}
