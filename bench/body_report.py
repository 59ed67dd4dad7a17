"""The "Body schemas" tables of docs/benchmarks.md, from the `body` section's result."""

from __future__ import annotations

from typing import Any

from bench import edge_budget
from bench.body_section import WITH, WITHOUT

PROCESSES = ("envoy", "authz", "ratelimit", "redis")


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(result: dict[str, Any]) -> list[str]:
    section = result.get("sections", {}).get("body", {})
    if not section.get("validators"):
        return []
    rounds = result.get("timing", {}).get("validation_rounds")
    out = [
        "",
        "### Body schemas",
        "",
        "µs per validation of an already-parsed body, the best of three runs of"
        f" {rounds} validations (`python -m bench.body_validation`). *demo*: the"
        " `PUT /api/v1/users/{user_id}` schema (2 fields); *profile*: about 15 fields with"
        " nesting, arrays, enums, patterns and formats. 2020-12 rows validate the schema as"
        " the edge enforces it (`unevaluatedProperties: false` added, formats asserted);"
        " fastjsonschema has no 2020-12, so it runs the Draft-07 equivalent. *valid*: the"
        " yes/no check; *invalid*: every violation collected (fastjsonschema stops at the"
        " first). The last rows are what the authz sidecar runs per body:"
        " `CompiledBody.check`, the bytes parsed within the limits, then validated.",
        "",
    ]
    out += _table(
        ["validator", "schema", "valid body µs", "invalid body µs"],
        [
            [f"`{r['validator']}`", r["schema"], f"{r['valid_us']:.2f}", f"{r['invalid_us']:.2f}"]
            for r in section["validators"]
        ],
    )
    return out + _edge(result, section.get("edge"))


def _edge(result: dict[str, Any], edge: dict[str, Any] | None) -> list[str]:
    if not edge or not all(edge["routes"].get(r, {}).get("saturation") for r in (WITH, WITHOUT)):
        return []
    t = result.get("timing", {})
    rounds = len(edge["routes"][WITH]["rounds"])
    out = [
        "",
        f"Through the edge (edgeguard, default profile): `PUT /bench/{WITH}/{{id}}` with the"
        f" demo user schema against `PUT /bench/{WITHOUT}/{{id}}` without one, same scopes"
        " and ownership condition, the same ~60-byte JSON body from every h2load process"
        f" (`-d FILE`, `:method: PUT`), {rounds} alternating rounds of"
        f" {t.get('edge_saturation_s', 0):g} s each at saturation."
        " Envoy sends the body to ext_authz only on the route with a schema (its routes:"
        f" {', '.join(f'`{n}`' for n in edge['envoy_body_routes'])}). req/s: the median"
        " (rounds in brackets); CPU per request by process from the round with the median"
        " server total, µs. The last row is the schema's cost: the medians of the per-round"
        " differences (with - without) and of the per-round rate ratios.",
        "",
    ]
    rows = [_route_row(result, route, edge["routes"][route]) for route in (WITH, WITHOUT)]
    diff = edge["difference"]
    us = diff["us_by_process"]
    ratio = diff.get("rate_ratio")
    rows.append(
        ["**schema's cost**", "-", "with ÷ without: " + (f"{ratio:.2f}" if ratio else "-")]
        + [_signed(us.get(p)) for p in PROCESSES]
        + [f"**{_signed(us.get('servers'))}**", "-"]
    )
    return out + _table(
        ["route", "rule", "req/s", *PROCESSES, "servers", "latency p50 / p99 ms"], rows
    )


def _route_row(result: dict[str, Any], route: str, figures: dict[str, Any]) -> list[str]:
    sat = figures["saturation"]
    budget = edge_budget.budget(route, figures.get("cpu_load"), edge_budget.cores_of(result))
    us = budget.us_by_process if budget else {}
    rates = ", ".join(f"{x:.0f}" for x in sat["from_rounds"])
    latency = sat.get("latency") or {}
    return [
        f"`{route}`",
        f"`{figures['rule']}`",
        f"**{sat['rate_rps']:.0f}** ({rates})",
        *(_us(us.get(p)) for p in PROCESSES),
        f"**{_us(budget.server_us if budget else None)}**",
        f"{latency.get('p50_ms', 0):.2f} / {latency.get('p99_ms', 0):.2f}",
    ]
