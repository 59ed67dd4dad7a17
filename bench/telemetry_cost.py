"""Telemetry cost (issue 5): the same sidecar with telemetry off and on, loaded in turns.

One saturation row each for "off" and "on" gives a difference no larger than this
machine's run-to-run spread (5-20%). So both servers are started side by side (each idle
while the other is loaded) and loaded alternately for short rounds in the order
off-on, on-off, off-on, ...: drift of the machine hits both, and each round gives one
ratio (on / off of that round's two loads). The cost is 1 minus the median ratio; every
round's rates go into the JSON.

"On" means traces and metrics exported over OTLP to a do-nothing sink (bench.otlp_sink),
with Envoy-style `traceparent` metadata on every call and the stated share of the calls
sampled, which the sidecars' parent-based sampler (OTel's default) follows.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.context import Ctx, stage
from bench.load import Shape, run
from bench.sidecars import (
    Material,
    Row,
    bodies_for,
    load_clients,
    make_ready,
    rows,
    start_server,
    stop_server,
)


@dataclass(frozen=True)
class Pair:
    off: str  # section-1 row names (one worker)
    on: str
    label: str  # "Check" | "ShouldRateLimit"
    sampled: str  # "10%" | "100%"
    rounds: int


# Envoy samples nothing: the fixed cost (metrics, reading the trace context). 10%: the
# devstack's Envoy default, the judged one. 100%: the cost of one sampled call, for scale.
FULL_PAIRS = (
    Pair("check-pool-rs256", "check-pool-rs256-otel0", "Check", "0%", 2),
    Pair("rl-redis", "rl-redis-otel0", "ShouldRateLimit", "0%", 2),
    Pair("check-pool-rs256", "check-pool-rs256-otel10", "Check", "10%", 3),
    Pair("rl-redis", "rl-redis-otel10", "ShouldRateLimit", "10%", 3),
    Pair("check-pool-rs256", "check-pool-rs256-otel", "Check", "100%", 1),
    Pair("rl-redis", "rl-redis-otel", "ShouldRateLimit", "100%", 1),
)
SMOKE_PAIRS = (Pair("check-pool-rs256", "check-pool-rs256-otel10", "Check", "10%", 1),)


def measure_pair(ctx: Ctx, pair: Pair, material: Material) -> dict[str, Any]:
    off_row, on_row = rows({1: [pair.off, pair.on]})
    t = ctx.timing
    shape = Shape(t.conns, t.streams, t.cost_s, t.warmup_s)
    servers = []
    try:
        for row in (off_row, on_row):
            servers.append(start_server(ctx, row, material))
            make_ready(servers[-1], row, material)
        loads = {
            row.name: load_clients(server, row, bodies_for(row, material))
            for row, server in zip((off_row, on_row), servers, strict=True)
        }
        rates: dict[str, list[float]] = {off_row.name: [], on_row.name: []}
        failed = 0
        for i in range(pair.rounds):
            order: tuple[Row, ...] = (off_row, on_row) if i % 2 == 0 else (on_row, off_row)
            for row in order:
                work = ctx.dir("runs", "telemetry-cost", f"{row.name}-{i}")
                result = run(ctx.procs, loads[row.name], shape, work_dir=work)
                rates[row.name].append(round(result.rate_rps, 1))
                failed += result.failed
        if failed:
            ctx.notes.append(f"telemetry cost {pair.label} {pair.sampled}: {failed} failed")
    finally:
        for server in servers:
            stop_server(ctx, server)
    return _summary(pair, off_row, on_row, rates)


def _summary(
    pair: Pair, off_row: Row, on_row: Row, rates: dict[str, list[float]]
) -> dict[str, Any]:
    off, on = rates[off_row.name], rates[on_row.name]
    ratios = [b / a for a, b in zip(off, on, strict=True) if a > 0 and b > 0]
    median = statistics.median(ratios) if ratios else None
    return {
        "label": pair.label,
        "sampled": pair.sampled,
        "off_row": off_row.name,
        "on_row": on_row.name,
        "rounds": len(ratios),
        "rates_off": off,
        "rates_on": on,
        "cost_pct_per_round": [round((1 - r) * 100, 1) for r in ratios],
        "cost_pct": None if median is None else round((1 - median) * 100, 1),
        "off_rps_median": statistics.median(off) if off else None,
        "on_rps_median": statistics.median(on) if on else None,
    }


def run_section(ctx: Ctx, material: Material, pairs: tuple[Pair, ...]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for pair in pairs:
        per_round = 2 * (ctx.timing.cost_s + ctx.timing.warmup_s + 1)
        if ctx.out_of_time(pair.rounds * per_round + 60):
            ctx.notes.append(f"telemetry cost {pair.label} {pair.sampled}: skipped (time)")
            continue
        with stage(ctx, f"telemetry cost: {pair.label}, {pair.sampled} sampled"):
            try:
                out.append(measure_pair(ctx, pair, material))
            except Exception as exc:  # one broken pair must not lose the others
                ctx.notes.append(f"telemetry cost {pair.label} {pair.sampled}: failed: {exc}")
    return {"pairs": out}


def markdown(section: dict[str, Any], cost_s: float) -> list[str]:
    """The section's table for docs/benchmarks.md."""
    pairs = section.get("pairs", [])
    if not pairs:
        return []
    out = [
        "",
        "### 1b. Telemetry cost (issue 5): off and on in alternating rounds",
        "",
        f"Both servers run side by side; each round loads one, then the other, at saturation"
        f" for {cost_s:g} s (order off-on, on-off, ...). Cost per round: 1 - on/off; the"
        " verdict uses the median. On: traces and metrics over OTLP to a do-nothing sink, a"
        " `traceparent` on every call, the stated share sampled by Envoy.",
        "",
        "| sidecar | sampled | req/s off (per round) | req/s on (per round) "
        "| cost per round | cost (median) |",
        "|---|---|---|---|---|---|",
    ]
    for p in pairs:
        out.append(
            f"| {p['label']} | {p['sampled']} | {', '.join(f'{x:.0f}' for x in p['rates_off'])}"
            f" | {', '.join(f'{x:.0f}' for x in p['rates_on'])}"
            f" | {', '.join(f'{x:+.1f}%' for x in p['cost_pct_per_round'])}"
            f" | **{p['cost_pct']:.1f}%** |"
        )
    return out
