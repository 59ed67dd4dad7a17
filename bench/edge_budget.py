"""Where the edge's CPU goes: µs of CPU per answered request, by process.

At saturation the machine's cores are the bound, so each process's CPU share divided by
the answered rate is what one request costs it. The servers' sum (every process but the
load generator and the harness, which stand for clients elsewhere) is the edge's price
per request, and bounds the rate it could reach with every core of the machine to
itself (the ceiling). It moves far less between machines and days than the rate does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Not part of a deployed edge: the load generator and the bench's own process.
CLIENT_SIDE = frozenset({"loadgen", "harness"})
PROCESS_ORDER = ("envoy", "authz", "ratelimit", "redis")


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    rate_rps: float
    us_by_process: dict[str, float]  # servers only, in PROCESS_ORDER
    client_us: float  # load generator and harness
    cores: int

    @property
    def server_us(self) -> float:
        return sum(self.us_by_process.values())

    @property
    def ceiling_rps(self) -> float:
        """The rate at which the servers alone would use every core."""
        return self.cores * 1e6 / self.server_us if self.server_us > 0 else float("inf")


def budget(name: str, load: dict[str, Any] | None, cores: int) -> Budget | None:
    """The CPU budget of one saturation load, or None without its CPU figures."""
    load = load or {}
    cpu = load.get("cpu")
    rate = load.get("rate_rps") or 0.0
    if not cpu or rate <= 0 or cores <= 0:
        return None
    shares: dict[str, float] = cpu["cores"]
    others = sorted(set(shares) - set(PROCESS_ORDER) - CLIENT_SIDE)
    servers = {
        process: shares[process] * 1e6 / rate
        for process in (*PROCESS_ORDER, *others)
        if shares.get(process, 0) > 0
    }
    client = sum(shares.get(process, 0.0) for process in CLIENT_SIDE) * 1e6 / rate
    return Budget(name, rate, servers, client, cores)


def server_us(load: dict[str, Any]) -> float:
    """Server CPU per request of one load (inf without CPU figures: sorts last)."""
    b = budget("", load, 1)
    return b.server_us if b is not None else float("inf")


def cores_of(result: dict[str, Any]) -> int:
    return int(result.get("machine", {}).get("nproc_available") or 0)


def budgets(result: dict[str, Any]) -> list[Budget]:
    """Per edge configuration: the round with the median server CPU per request."""
    configs = result.get("sections", {}).get("edge", {}).get("configs", [])
    found = (budget(c["name"], c.get("cpu_load"), cores_of(result)) for c in configs)
    return [b for b in found if b is not None]


def markdown(result: dict[str, Any], reference: str = "envoy-builtin") -> list[str]:
    rows = budgets(result)
    if not rows:
        return []
    names = [n for n in PROCESS_ORDER if any(n in b.us_by_process for b in rows)]
    names += sorted({n for b in rows for n in b.us_by_process} - set(names))
    ref = next((b.server_us for b in rows if b.name == reference), None)
    out = [
        "",
        "CPU per request at saturation, µs (each process's cores over the answered rate; per"
        " configuration the round with the median server total). *Servers*: Envoy, the"
        " sidecars and Redis, what a deployment pays per request. *Ceiling*: the rate at"
        f" which the servers alone would use all {rows[0].cores} cores.",
        "",
        "| configuration | " + " | ".join(names)
        + f" | servers | ÷ {reference} | load generator | ceiling req/s |",
        "|---|" + "---|" * (len(names) + 4),
    ]  # fmt: skip
    for b in rows:
        cells = [f"{b.us_by_process[n]:.0f}" if n in b.us_by_process else "-" for n in names]
        versus = f"{b.server_us / ref:.1f}x" if ref else "-"
        out.append(
            f"| {b.name} | " + " | ".join(cells) + f" | **{b.server_us:.0f}** | {versus}"
            f" | {b.client_us:.0f} | {b.ceiling_rps:.0f} |"
        )
    return out
