"""Telemetry cost (issue 5): the same sidecar with telemetry off and on, loaded in turns.

One saturation row each for "off" and "on" gives a difference no larger than this
machine's run-to-run spread (5-30 %). So the "off" server and the "on" servers run side
by side and are loaded in alternating rounds (bench.rounds): each round gives one ratio
per "on" variant (its rate over the "off" rate of that round), and the cost is 1 minus
the median ratio.

"On" means traces and metrics exported over OTLP to a do-nothing sink (bench.otlp_sink),
with Envoy-style `traceparent` metadata on every call and the stated share of the calls
sampled, which the sidecars' parent-based sampler (OTel's default) follows. A 1 % share
is sent by an eleventh, paced client (see `bench.sidecars.load_clients`); the share it
reached is recorded per round.
"""

from __future__ import annotations

from typing import Any

from bench.hotpath import telemetry_stage_names
from bench.rounds import Group
from bench.sidecars import row_named

# Envoy samples nothing: the fixed cost (metrics, reading the trace context). 1 %: the
# devstack's Envoy default (and Istio's), the judged one. Single rounds moved from -10 % to
# +24 % here, so 5 rounds rather than 3; heavier shares are not loaded (their hot-path
# cost follows from the in-process stages: see hot_path_costs).
FULL_GROUPS = (
    Group(
        "telemetry-check",
        "check-pool-rs256-w1",
        ("check-pool-rs256-otel0-w1", "check-pool-rs256-otel1-w1"),
        5,
    ),
    Group("telemetry-ratelimit", "rl-redis-w1", ("rl-redis-otel0-w1", "rl-redis-otel1-w1"), 5),
)
SMOKE_GROUPS = (Group("telemetry-check", "check-pool-rs256-w1", ("check-pool-rs256-otel1-w1",), 1),)
JUDGED_SHARE = 0.01

_LABELS = {"authz": "Check", "ratelimit": "ShouldRateLimit"}


def costs(section: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per "on" variant: sidecar, sampled share, per-round and median cost."""
    out = []
    for group in section.get("groups", []):
        for c in group["candidates"]:
            row = row_named(c["name"])
            median = c["ratio_median"]
            out.append(
                {
                    "label": _LABELS.get(row.kind, row.kind),
                    "sampled": row.sampled or 0.0,
                    "judged": row.sampled == JUDGED_SHARE,
                    "rates_off": group["reference_rates"],
                    "rates_on": c["rates"],
                    "cost_pct_per_round": [round((1 - r) * 100, 1) for r in c["ratios"]],
                    "cost_pct": None if median is None else round((1 - median) * 100, 1),
                    "sampled_share": c.get("sampled_share"),
                }
            )
    return out


def share_text(entry: dict[str, Any]) -> str:
    share = f"{entry['sampled'] * 100:g}%"
    reached = entry.get("sampled_share")
    if reached:
        share += " (sent: " + ", ".join(f"{100 * s:.1f}%" for s in reached) + ")"
    return share


def markdown(section: dict[str, Any], cost_s: float) -> list[str]:
    """The section's table for docs/benchmarks.md."""
    entries = costs(section)
    if not entries:
        return []
    out = [
        "",
        "### 1b. Telemetry cost (issue 5): off and on in alternating rounds",
        "",
        f"The servers run side by side; each round loads each of them at saturation for"
        f" {cost_s:g} s, in an order that reverses every round. Cost per round: 1 - on/off;"
        " the verdict uses the median. On: traces and metrics over OTLP to a do-nothing"
        " sink, a `traceparent` on every call, the stated share sampled by Envoy.",
        "",
        "| sidecar | sampled | req/s off (per round) | req/s on (per round) "
        "| cost per round | cost (median) |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        cost = "-" if e["cost_pct"] is None else f"**{e['cost_pct']:.1f}%**"
        out.append(
            f"| {e['label']} | {share_text(e)} | {', '.join(f'{x:.0f}' for x in e['rates_off'])}"
            f" | {', '.join(f'{x:.0f}' for x in e['rates_on'])}"
            f" | {', '.join(f'{x:+.1f}%' for x in e['cost_pct_per_round'])} | {cost} |"
        )
    return out


# The section-1 row whose CPU per call the hot-path stages (bench.hotpath) are set against.
_LOADED_ROW = {"authz": "check-pool-rs256-w1", "ratelimit": "rl-redis-w1"}


def hot_path_costs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Telemetry's hot-path cost per call from the in-process stages, without the
    machine's noise: what it adds with nothing sampled, what one sampled call adds, and
    both at the judged share, against the server CPU one call costs under load."""
    sections = result.get("sections", {})
    rows = {r["name"]: r for r in sections.get("sidecars", {}).get("rows", [])}
    out = []
    for kind, row_name in _LOADED_ROW.items():
        stages = {r["stage"]: r.get("us") for r in sections.get("hotpath", {}).get(kind, [])}
        off, unsampled, sampled = (stages.get(name) for name in telemetry_stage_names(kind))
        if off is None or unsampled is None or sampled is None:
            continue
        per_call = unsampled - off + JUDGED_SHARE * (sampled - unsampled)
        load = rows.get(row_name, {}).get("saturation", {})
        cores = load.get("cpu", {}).get("cores", {}).get("server")
        cpu_us = cores * 1e6 / load["rate_rps"] if cores and load.get("rate_rps") else None
        out.append(
            {
                "label": _LABELS[kind],
                "off_us": off,
                "unsampled_us": unsampled,
                "sampled_us": sampled,
                "judged_us": round(per_call, 2),
                "call_cpu_us": None if cpu_us is None else round(cpu_us, 1),
                "judged_pct": None if cpu_us is None else round(100 * per_call / cpu_us, 2),
            }
        )
    return out


def hot_path_md(result: dict[str, Any]) -> list[str]:
    entries = hot_path_costs(result)
    if not entries:
        return []
    share = f"{JUDGED_SHARE * 100:g}%"
    out = [
        "",
        "The hot path's part, timed in-process (the hot-path stages below; no load, so no"
        " noise from the machine; the export threads' work is not in it). µs per call:",
        "",
        "| sidecar | telemetry off | on, nothing sampled | on, the call sampled "
        f"| on, {share} sampled | server CPU per call under load | share |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        cpu = "-" if e["call_cpu_us"] is None else f"{e['call_cpu_us']:.0f}"
        pct = "-" if e["judged_pct"] is None else f"{e['judged_pct']:.1f}%"
        out.append(
            f"| {e['label']} | {e['off_us']:.1f} | {e['unsampled_us']:.1f} | {e['sampled_us']:.1f}"
            f" | {e['judged_us']:+.1f} | {cpu} | {pct} |"
        )
    return out
