"""Rows loaded in turns against a reference row, their servers live side by side.

Why: on this machine two runs of the same row a few seconds apart differ by 5-30 %, as
much as the ratios the targets judge. So a ratio of two rows measured once each is
mostly noise. Here every row of a group has its server started at once (each idle while
another is loaded). Each round loads the reference and every candidate in turn, for a
short saturation run each. The order reverses every round (R, A, B, then B, A, R, ...),
so a drift of the machine hits every row alike. Each round gives one ratio per
candidate: its rate over the reference's rate in that round. A verdict uses the median
of those ratios, and every round's rates go into the JSON.

Used by the targets of issue 6 (sidecar over the floor) and by the telemetry cost of
issue 5 (telemetry on over off; see bench.telemetry_cost).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.context import Ctx, stage
from bench.load import LoadResult, run
from bench.sidecars import (
    Material,
    Server,
    bodies_for,
    load_clients,
    load_dict,
    make_ready,
    observers,
    row_named,
    saturating,
    start_server,
    stop_server,
)
from bench.sidecars import ratios as sidecar_ratios


@dataclass(frozen=True)
class Group:
    """Candidates judged against one reference row (full row names, e.g. `floor-w1`)."""

    key: str
    reference: str
    candidates: tuple[str, ...]
    rounds: int


# Issue 6's ratio targets: the floor and the three judged rows, per worker count; and,
# not judged, at 1 worker, the floor plus the one Redis round trip the rate limiter must
# make, which splits its distance from the floor into the round trip's share and its own
# code's. At 2 workers, where the floor's own cost per answer jumps between loads (see
# docs/benchmarks.md), 3 rounds and no floor-redis: the time budget.
TARGET_GROUPS = tuple(
    Group(
        f"targets-w{w}",
        f"floor-w{w}",
        (
            f"check-pool-rs256-w{w}",
            f"check-pool-eddsa-w{w}",
            f"rl-redis-w{w}",
            *((f"floor-redis-w{w}",) if w == 1 else ()),
        ),
        10 if w == 1 else 3,
    )
    for w in (1, 2)
)
SMOKE_TARGET_GROUPS = (Group("targets-w1", "floor-w1", ("check-pool-rs256-w1",), 1),)


def judged_rows(groups: tuple[Group, ...]) -> frozenset[str]:
    """Every row these groups load."""
    return frozenset(name for g in groups for name in (g.reference, *g.candidates))


def round_order(names: list[str], index: int) -> list[str]:
    """Round 0 loads the reference first, round 1 last, and so on."""
    return names if index % 2 == 0 else names[::-1]


def measure_group(ctx: Ctx, group: Group, material: Material) -> dict[str, Any]:
    """Start every row's server, load them in alternating rounds, stop them."""
    names = [group.reference, *group.candidates]
    rows = {name: row_named(name) for name in names}
    servers: dict[str, Server] = {}
    t = ctx.timing
    loads: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    failed = 0
    try:
        for name, row in rows.items():
            servers[name] = start_server(ctx, row, material)
            make_ready(servers[name], row, material)
        for i in range(group.rounds):
            for name in round_order(names, i):
                row, server = rows[name], servers[name]
                done = loads[group.reference]
                bodies = bodies_for(row, material)
                clients = load_clients(
                    server, row, bodies, expected_rps=done[-1]["rate_rps"] if done else None
                )
                cpu, probe = observers(ctx, row, server)
                result = run(
                    ctx.procs,
                    clients,
                    saturating(ctx, row.workers, t.cost_s, t.rounds_warmup_s),
                    work_dir=ctx.dir("runs", "rounds", group.key, f"{name}-{i}"),
                    cpu_groups=cpu,
                    probe=probe,
                )
                failed += result.failed
                loads[name].append(_load_dict(result, paced=len(clients) > len(bodies)))
    finally:
        for server in servers.values():
            stop_server(ctx, server)
    if failed:
        ctx.notes.append(f"rounds {group.key}: {failed} requests failed in h2load")
    return summarize(group, loads)


def _load_dict(result: LoadResult, *, paced: bool) -> dict[str, Any]:
    out = load_dict(result)
    if paced and result.requests_per_client and result.requests:
        # The paced (sampled) client is the last one: the share it reached.
        out["sampled_share"] = round(result.requests_per_client[-1] / result.requests, 4)
    return out


def summarize(group: Group, loads: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per candidate: the rates per round, the ratio per round and their median; every
    load's figures too (section 1 takes its saturation figures from them)."""
    reference = [load["rate_rps"] for load in loads.get(group.reference, [])]
    out: dict[str, Any] = {
        "key": group.key,
        "reference": group.reference,
        "reference_rates": reference,
        "loads": loads,
        "candidates": [],
    }
    for name in group.candidates:
        mine = loads.get(name, [])
        rates = [load["rate_rps"] for load in mine]
        ratios = [round(b / a, 3) for a, b in zip(reference, rates, strict=False) if a > 0]
        entry: dict[str, Any] = {
            "name": name,
            "rates": rates,
            "ratios": ratios,
            "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
        }
        for key in ("redis_calls_per_request", "redis_wait_us_per_slice", "sampled_share"):
            values = [load[key] for load in mine if key in load]
            if values:
                entry[key] = values
        out["candidates"].append(entry)
    return out


def median_load(section: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The load of `name` with the median rate over the section's rounds (the lower of
    the two middle ones for an even count), with every round's rate."""
    for group in section.get("groups", []):
        mine = group.get("loads", {}).get(name)
        if mine:
            ordered = sorted(mine, key=lambda load: load["rate_rps"])
            chosen = dict(ordered[(len(ordered) - 1) // 2])
            chosen["from_rounds"] = [load["rate_rps"] for load in mine]
            return chosen
    return None


def fill_saturation(sidecars: dict[str, Any], section: dict[str, Any]) -> None:
    """Section 1's rows without a saturation run of their own take the median round's
    load (rate, latency, cores) from this section; the ratios are then taken again."""
    rows = sidecars.get("rows", [])
    for row in rows:
        if "saturation" not in row:
            load = median_load(section, row["name"])
            if load is not None:
                row["saturation"] = load
    sidecar_ratios(rows)


def seconds_needed(ctx: Ctx, group: Group) -> float:
    """A bound on one group's time: start-up plus its loads."""
    per_load = ctx.timing.cost_s + ctx.timing.rounds_warmup_s + 1
    rows = 1 + len(group.candidates)
    return rows * (6 + group.rounds * per_load)


def run_section(ctx: Ctx, material: Material, groups: tuple[Group, ...]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for group in groups:
        if ctx.out_of_time(seconds_needed(ctx, group) + 60):
            ctx.notes.append(f"rounds {group.key}: skipped (time)")
            continue
        with stage(ctx, f"rounds: {group.key}"):
            try:
                out.append(measure_group(ctx, group, material))
            except Exception as exc:  # one broken group must not lose the others
                ctx.notes.append(f"rounds {group.key}: failed: {exc}")
    return {"groups": out}


def find(section: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A candidate's entry (with its group's reference) from a section's groups."""
    for group in section.get("groups", []):
        for entry in group["candidates"]:
            if entry["name"] == name:
                return {**entry, "ref_rates": group["reference_rates"]}
    return None


def markdown(section: dict[str, Any], cost_s: float, labels: dict[str, str]) -> list[str]:
    """The target ratios' table for docs/benchmarks.md."""
    groups = section.get("groups", [])
    if not groups:
        return []
    out = [
        "",
        "### 1a. The ratio targets, in alternating rounds",
        "",
        f"The floor and the judged rows run side by side; each round loads every one of"
        f" them at saturation for {cost_s:g} s, in an order that reverses every round."
        " Ratio per round: the row's rate over the floor's in that round; the target is"
        " judged on the median.",
        "",
        "| row | workers | floor req/s (per round) | row req/s (per round) "
        "| ratio per round | ratio (median) |",
        "|---|---|---|---|---|---|",
    ]
    for group in groups:
        workers = group["reference"].rsplit("-w", 1)[1]
        floor = ", ".join(f"{x:.0f}" for x in group["reference_rates"])
        for c in group["candidates"]:
            label = labels.get(c["name"], c["name"])
            extra = ""
            if "redis_calls_per_request" in c:
                per = ", ".join(f"{x:g}" for x in c["redis_calls_per_request"])
                extra = f" (Redis calls per answer: {per}"
                waits = c.get("redis_wait_us_per_slice")
                if waits:
                    extra += "; Redis waited for a core, µs per timeslice: "
                    extra += ", ".join(f"{x:g}" for x in waits)
                extra += ")"
            median = "-" if c["ratio_median"] is None else f"**{c['ratio_median']:.2f}**"
            out.append(
                f"| {label}{extra} | {workers} | {floor}"
                f" | {', '.join(f'{x:.0f}' for x in c['rates'])}"
                f" | {', '.join(f'{x:.2f}' for x in c['ratios'])} | {median} |"
            )
    return out
