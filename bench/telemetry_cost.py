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

from bench.rounds import Group
from bench.sidecars import row_named

# Envoy samples nothing: the fixed cost (metrics, reading the trace context). 1 %: the
# devstack's Envoy default (and Istio's), the judged one. 10 %: a heavier choice.
FULL_GROUPS = (
    Group(
        "telemetry-check",
        "check-pool-rs256-w1",
        ("check-pool-rs256-otel0-w1", "check-pool-rs256-otel1-w1", "check-pool-rs256-otel10-w1"),
        3,
    ),
    Group(
        "telemetry-ratelimit",
        "rl-redis-w1",
        ("rl-redis-otel0-w1", "rl-redis-otel1-w1", "rl-redis-otel10-w1"),
        3,
    ),
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
