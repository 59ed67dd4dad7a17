"""Alternating rounds: every subject live at once, each loaded in turn, round after round.

Why: on this machine two loads of the same configuration a few seconds apart differ by
5-30 %, and the machine's speed drifts by more than that over minutes (the same VM kind
has measured 2-3x apart between days). So the configurations compared in one run have
their servers started side by side (each idle while another is loaded), and each round
loads every one of them in turn, in an order that reverses every round (A, B, C, then
C, B, A, ...): a drift of the machine hits every subject alike. A figure is the median
over the rounds, and a ratio between two subjects is the median of their per-round
ratios (both loaded in the same round, seconds apart). Every round's figures go into
the JSON.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.context import Ctx, describe

Load = dict[str, Any]


def round_order(names: Sequence[str], index: int) -> list[str]:
    """Round 0 in the given order, round 1 reversed, and so on."""
    return list(names) if index % 2 == 0 else list(reversed(names))


def run_rounds(
    ctx: Ctx,
    loaders: Mapping[str, Callable[[int], Load]],
    rounds: int,
    *,
    what: str,
    may_continue: Callable[[], bool] = lambda: True,
) -> dict[str, list[Load]]:
    """Call each loader once per round, in alternating order. A loader that raises is
    noted and left out of the later rounds (its process died; the others go on). Before
    every round after the first, `may_continue` (the time budget) is asked."""
    loads: dict[str, list[Load]] = {name: [] for name in loaders}
    live = list(loaders)
    for index in range(rounds):
        if index and not may_continue():
            ctx.notes.append(f"{what}: {index} of {rounds} rounds (time budget)")
            break
        for name in round_order(live, index):
            try:
                loads[name].append(loaders[name](index))
            except Exception as exc:
                ctx.notes.append(
                    f"{what} {name}, round {index + 1}: failed ({describe(exc)}); left out"
                )
                ctx.log(f"  {name} failed: {describe(exc)}")
                live.remove(name)
        ctx.log(f"[bench] {what}: round {index + 1} of {rounds} done")
    return loads


def median_load(loads: Sequence[Load], key: Callable[[Load], float]) -> Load | None:
    """The load with the median `key` (the lower of the two middle ones for an even
    count), with every round's rate in `from_rounds`; None without loads."""
    if not loads:
        return None
    ordered = sorted(loads, key=key)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["from_rounds"] = [load["rate_rps"] for load in loads]
    return chosen


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios of two subjects' figures (rounds where both were measured)."""
    return [round(a / b, 3) for a, b in zip(numerators, denominators, strict=False) if a and b > 0]
