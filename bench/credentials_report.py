"""The "Credentials" table of docs/benchmarks.md, from the `credentials` section's result."""

from __future__ import annotations

from typing import Any

from bench import edge_budget
from bench.credentials_section import API_KEY, JWT, OPAQUE, OPAQUE_RULE, RULE, path

PROCESSES = edge_budget.PROCESS_ORDER
LABELS = {
    JWT: "cached JWT",
    API_KEY: "API key (cached record)",
    OPAQUE: "introspected opaque token (cached answer)",
}


def markdown(result: dict[str, Any]) -> list[str]:
    section = result.get("sections", {}).get("credentials", {})
    figures = section.get("credentials", {})
    if not all(figures.get(name, {}).get("saturation") for name in (JWT, API_KEY)):
        return []
    t = result.get("timing", {})
    cores = edge_budget.cores_of(result)
    out = [
        "",
        "### Credentials",
        "",
        f"Through the edge (edgeguard, default profile): `GET {path('{id}')}` (rule"
        f" `{RULE}`, `credentials: [jwt, api_key]`, a scope and the ownership condition),"
        " every request with the same credential for one subject, so each is a cache hit:"
        " the JWT from the verified-token cache, the API key's record from the API-key"
        " cache (the HMAC of its secret is computed per request). The key is minted with"
        " `authz-service apikey create` before the load. The opaque token, where node is"
        " here, comes from a real OpenID provider (node-oidc-provider) on loopback, on"
        f" rule `{OPAQUE_RULE}` (`GET {path('{id}', OPAQUE)}`, same shape), introspected"
        f" once and then answered from the cache. {len(figures[JWT]['rounds'])}"
        f" alternating rounds of {t.get('edge_saturation_s', 0):g} s each at saturation."
        " req/s: the median (rounds in brackets); CPU per request by process from the"
        " round with the median server total, µs. The difference row: the medians of the"
        " per-round differences (API key - JWT) and of the per-round rate ratios.",
        "",
        "| credential | sent as | req/s | " + " | ".join(PROCESSES)
        + " | servers | latency p50 / p99 ms |",
        "|---|" + "---|" * (len(PROCESSES) + 4),
    ]  # fmt: skip
    shown = [name for name in (JWT, API_KEY, OPAQUE) if figures.get(name, {}).get("saturation")]
    out += [_row(name, figures[name], cores) for name in shown]
    out.append(_difference_row(section["difference"], "API key - JWT", "API key ÷ JWT"))
    if "introspected_difference" in section:
        out.append(
            _difference_row(section["introspected_difference"], "opaque - JWT", "opaque ÷ JWT")
        )
    else:
        out.append(
            f"| {LABELS[OPAQUE]} | not measured here (see the notes) |"
            + " - |" * (len(PROCESSES) + 3)
        )
    return out


def _row(name: str, figures: dict[str, Any], cores: int) -> str:
    sat = figures["saturation"]
    budget = edge_budget.budget(name, figures.get("cpu_load"), cores)
    us = budget.us_by_process if budget else {}
    cells = [f"{us[p]:.0f}" if p in us else "-" for p in PROCESSES]
    servers = f"**{budget.server_us:.0f}**" if budget else "-"
    rates = ", ".join(f"{x:.0f}" for x in sat["from_rounds"])
    latency = sat.get("latency") or {}
    p50, p99 = latency.get("p50_ms", 0.0), latency.get("p99_ms", 0.0)
    return (
        f"| {LABELS[name]} | `{figures['sent']}` | **{sat['rate_rps']:.0f}** ({rates}) | "
        + " | ".join(cells)
        + f" | {servers} | {p50:.2f} / {p99:.2f} |"
    )


def _difference_row(difference: dict[str, Any], label: str, ratio_label: str) -> str:
    us = difference.get("us_by_process", {})
    ratio = difference.get("rate_ratio")
    cells = [f"{us[p]:+.0f}" if p in us else "-" for p in [*PROCESSES, "servers"]]
    return (
        f"| **{label}** | - | {ratio_label}: "
        + (f"{ratio:.2f}" if ratio else "-")
        + " | "
        + " | ".join(cells[:-1])
        + f" | **{cells[-1]}** | - |"
    )
