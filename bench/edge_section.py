"""The edge section: every configuration side by side, in alternating rounds.

1. Start every configuration of `bench.edge.plan()` (each its own Envoy and, for the
   product, its own two sidecars; one Redis for all) and check each one's answers.
2. `edge_rounds` rounds (bench.rounds): each round loads each configuration at saturation
   for `edge_saturation_s`, in an order that reverses every round. A configuration's
   rate is the median over the rounds; its CPU per request comes from the round with the
   median server CPU per request; a ratio between two configurations (default profile
   over global, ours over the built-ins) is the median of the per-round ratios.
3. Each configuration once more at a fixed rate, half of its own median saturation rate:
   the latency a deployment sized at 2x headroom sees.

Saturation keeps 1 stream per connection (2 connections from each of 10 h2load
processes: 20 requests in flight): with 4, the sidecars queue past Envoy's 50 ms
rate-limit timeout and Envoy admits requests without a decision, which would inflate
the rate (counted and reported when it happens anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench import builtin, edge, edge_budget, rounds
from bench.context import Ctx, describe, stage
from bench.load import Shape

LOAD_OVERHEAD_S = 1.5  # h2load start and stop, counters, CPU meter: per load
START_S = 12.0  # one configuration's start and checks, a generous bound
RESERVE_S = 150.0  # what the sections after this one need at least


def _rate(load: dict[str, Any]) -> float:
    return float(load["rate_rps"])


def summarize(
    running: edge.Edge, verified: dict[str, int], loads: list[dict[str, Any]]
) -> dict[str, Any]:
    spec = running.spec
    out: dict[str, Any] = {
        "name": spec.name,
        "label": spec.label,
        "kind": spec.kind,
        "profile": spec.profile,
        "stack": spec.stack,
        "calls": spec.calls,
        "verify": verified,
        "envoy_command": running.command,
        "rounds": loads,
    }
    out["saturation"] = rounds.median_load(loads, _rate)
    out["cpu_load"] = rounds.median_load(loads, edge_budget.server_us)
    return out


def half_rate(ctx: Ctx, running: edge.Edge, saturation: dict[str, Any]) -> dict[str, Any]:
    t = ctx.timing
    rate = max(1, round(saturation["rate_rps"] / 2))
    shape = Shape(t.conns, t.fixed_streams, t.half_rate_s, t.warmup_s, rate=rate)
    out = edge.load(ctx, running, shape, "half")
    if out["rate_rps"] < 0.95 * rate:
        ctx.notes.append(f"{running.spec.name} half: offered {rate} req/s, got {out['rate_rps']}")
    return out


def _loader(ctx: Ctx, running: edge.Edge, shape: Shape) -> Callable[[int], dict[str, Any]]:
    return lambda index: edge.load(ctx, running, shape, f"round-{index + 1}")


def run_section(ctx: Ctx) -> dict[str, Any]:
    t = ctx.timing
    specs = edge.plan()
    per_load = t.edge_saturation_s + t.warmup_s + LOAD_OVERHEAD_S
    half_cost = len(specs) * (t.half_rate_s + t.warmup_s + LOAD_OVERHEAD_S)
    if ctx.out_of_time(len(specs) * (START_S + per_load) + half_cost + RESERVE_S):
        return {"configs": [], "skipped": "time budget"}
    running: dict[str, edge.Edge] = {}
    verified: dict[str, dict[str, int]] = {}
    try:
        for spec in specs:
            with stage(ctx, f"edge: start {spec.name}"):
                try:
                    running[spec.name] = edge.start(ctx, spec)
                    verified[spec.name] = edge.verify(running[spec.name])
                except Exception as exc:  # one broken configuration must not lose the rest
                    ctx.notes.append(f"edge {spec.name}: did not start ({describe(exc)})")
                    ctx.log(f"  {spec.name} failed: {describe(exc)}")
                    if spec.name in running:
                        running.pop(spec.name).stop()
        shape = Shape(t.conns, t.edge_streams, t.edge_saturation_s, t.warmup_s)
        loaders = {name: _loader(ctx, e, shape) for name, e in running.items()}
        round_cost = len(loaders) * per_load
        with stage(ctx, f"edge: {t.edge_rounds} alternating rounds of {len(loaders)}"):
            loads = rounds.run_rounds(
                ctx, loaders, t.edge_rounds, what="edge",
                may_continue=lambda: ctx.remaining() > round_cost + half_cost + RESERVE_S,
            )  # fmt: skip
        configs = [summarize(e, verified[n], loads[n]) for n, e in running.items() if loads[n]]
        with stage(ctx, "edge: half of each configuration's saturation rate"):
            for config in configs:
                try:
                    config["half"] = half_rate(ctx, running[config["name"]], config["saturation"])
                except Exception as exc:
                    ctx.notes.append(f"edge {config['name']} half: failed ({describe(exc)})")
    finally:
        for running_edge in running.values():
            running_edge.stop()
    stacks, default_stack = edge.sidecar_stacks()
    return {
        "configs": configs,
        "rounds": t.edge_rounds,
        "stacks": list(stacks),
        "default_stack": default_stack,
        "builtin_cannot_express": builtin.BUILTIN_CANNOT,
    }
