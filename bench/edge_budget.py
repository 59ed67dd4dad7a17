"""Where the edge's CPU goes: µs of CPU per answered request, by process (section 2).

At saturation the machine's cores are the bound, so each process's CPU share divided by
the answered rate is what one request costs it. The servers' sum (every process but the
load generator and the harness, which stand for clients elsewhere) bounds the rate the
edge could reach with every core of the machine to itself. No work saved inside the
sidecars can lift the edge above the ceiling of the same configuration with sidecars that
do nothing (`envoy-floor-sidecars`): that ceiling is what the edge target is measured
against when it cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Not part of a deployed edge: the load generator and the bench's own process.
CLIENT_SIDE = frozenset({"loadgen", "harness"})
PROCESS_ORDER = ("envoy", "authz", "ratelimit", "redis")
# The three-call design with sidecars that answer at once.
DESIGN_FLOOR = "envoy-floor-sidecars"


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


def budget(config: dict[str, Any], cores: int) -> Budget | None:
    """The CPU budget of one edge configuration's saturation load, or None without one."""
    load = config.get("saturation") or {}
    cpu = load.get("cpu")
    rate = load.get("rate_rps") or 0.0
    if not cpu or rate <= 0 or cores <= 0:
        return None
    shares: dict[str, float] = cpu["cores"]
    servers = {
        name: shares[name] * 1e6 / rate
        for name in (*PROCESS_ORDER, *sorted(set(shares) - set(PROCESS_ORDER) - CLIENT_SIDE))
        if shares.get(name, 0) > 0
    }
    client = sum(shares.get(name, 0.0) for name in CLIENT_SIDE) * 1e6 / rate
    return Budget(config["name"], rate, servers, client, cores)


def budgets(result: dict[str, Any]) -> list[Budget]:
    cores = int(result.get("machine", {}).get("nproc_available") or 0)
    configs = result.get("sections", {}).get("edge", {}).get("configs", [])
    return [b for b in (budget(c, cores) for c in configs) if b is not None]


def design_ceiling(result: dict[str, Any]) -> str | None:
    """Why the edge target cannot hold, in the run's own figures, or None without them."""
    floor = next((b for b in budgets(result) if b.name == DESIGN_FLOOR), None)
    if floor is None:
        return None
    return (
        f"{DESIGN_FLOOR} (three sidecar calls, sidecars that do nothing) spent "
        f"{floor.server_us:.0f} µs of server CPU per request: at most "
        f"{floor.ceiling_rps:.0f} req/s on {floor.cores} cores"
    )


def markdown(result: dict[str, Any]) -> list[str]:
    rows = budgets(result)
    if not rows:
        return []
    names = [n for n in PROCESS_ORDER if any(n in b.us_by_process for b in rows)]
    names += sorted({n for b in rows for n in b.us_by_process} - set(names))
    cores = rows[0].cores
    out = [
        "",
        "CPU per request at saturation (µs; each process's cores divided by the answered "
        "rate). *Ceiling*: the rate at which the servers alone (not the load generator) "
        f"would use all {cores} cores; no work saved inside the sidecars lifts a "
        f"configuration above the ceiling of its do-nothing twin (`{DESIGN_FLOOR}` for "
        "the project's three calls).",
        "",
        "| configuration | " + " | ".join(names) + " | servers | load generator | ceiling req/s |",
        "|---|" + "---|" * (len(names) + 3),
    ]
    for b in rows:
        cells = [f"{b.us_by_process[n]:.0f}" if n in b.us_by_process else "-" for n in names]
        out.append(
            f"| {b.name} | " + " | ".join(cells) + f" | {b.server_us:.0f} | {b.client_us:.0f} | "
            f"{b.ceiling_rps:.0f} |"
        )
    return out
