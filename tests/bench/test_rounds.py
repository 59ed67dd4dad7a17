"""bench.rounds: the order of the loads, what a failing subject does, medians and ratios."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench.context import SMOKE, Ctx
from bench.procs import Procs
from bench.rounds import median, median_load, ratios, round_order, run_rounds


@pytest.fixture
def ctx(tmp_path: Path) -> Ctx:
    return Ctx(
        work=tmp_path,
        procs=Procs(tmp_path / "logs"),
        keys=None,  # type: ignore[arg-type] # nothing here mints a token
        timing=SMOKE,
        deadline=time.monotonic() + 60,
    )


def _load(rate: float, **extra: Any) -> dict[str, Any]:
    return {"rate_rps": rate, **extra}


def test_the_order_reverses_every_round() -> None:
    assert round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert round_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert round_order(["a", "b", "c"], 2) == ["a", "b", "c"]


def test_every_subject_is_loaded_once_per_round_in_alternating_order(ctx: Ctx) -> None:
    calls: list[tuple[str, int]] = []

    def loader(name: str) -> Any:
        def load(index: int) -> dict[str, Any]:
            calls.append((name, index))
            return _load(100.0 * index)

        return load

    loads = run_rounds(ctx, {n: loader(n) for n in ("a", "b", "c")}, 3, what="test")
    assert calls == [
        ("a", 0), ("b", 0), ("c", 0), ("c", 1), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("c", 2),
    ]  # fmt: skip
    assert [load["rate_rps"] for load in loads["b"]] == [0.0, 100.0, 200.0]


def test_a_subject_that_fails_is_noted_and_left_out_of_later_rounds(ctx: Ctx) -> None:
    def broken(index: int) -> dict[str, Any]:
        if index == 1:
            raise RuntimeError("Envoy exited")
        return _load(1.0)

    loads = run_rounds(ctx, {"ok": lambda i: _load(2.0), "broken": broken}, 3, what="edge")
    assert len(loads["ok"]) == 3
    assert len(loads["broken"]) == 1  # round 0 only: its later rounds are not loaded
    assert ctx.notes == ["edge broken, round 2: failed (RuntimeError: Envoy exited); left out"]


def test_the_time_budget_ends_the_rounds_early_and_says_so(ctx: Ctx) -> None:
    asked: list[int] = []

    def may_continue() -> bool:
        asked.append(1)
        return len(asked) < 2

    loads = run_rounds(ctx, {"a": lambda i: _load(1.0)}, 5, what="edge", may_continue=may_continue)
    assert len(loads["a"]) == 2  # round 0 always; round 1 allowed; round 2 refused
    assert ctx.notes == ["edge: 2 of 5 rounds (time budget)"]


def test_the_median_load_is_the_lower_middle_one_and_keeps_every_rate() -> None:
    loads = [_load(r, tag=r) for r in (900.0, 700.0, 1500.0, 800.0)]
    chosen = median_load(loads, lambda x: x["rate_rps"])
    assert chosen is not None
    assert chosen["tag"] == 800.0  # sorted 700, 800, 900, 1500: the lower middle
    assert chosen["from_rounds"] == [900.0, 700.0, 1500.0, 800.0]
    by_other = median_load(
        [_load(1.0, cpu=3), _load(2.0, cpu=1), _load(3.0, cpu=2)], lambda x: x["cpu"]
    )
    assert by_other is not None
    assert by_other["rate_rps"] == 3.0  # the median by the key given, not by rate
    assert median_load([], lambda x: 0.0) is None


def test_ratios_pair_rounds_and_skip_rounds_without_a_figure() -> None:
    # One per round; a subject that fell out after two rounds pairs with the first two.
    assert ratios([800.0, 1500.0, 700.0], [1000.0, 2000.0]) == [0.8, 0.75]
    assert ratios([800.0, 0.0], [1000.0, 1000.0]) == [0.8]
    assert ratios([800.0], [0.0]) == []
    assert median([0.8, 0.75, 0.7, 0.9]) == pytest.approx(0.775)
    assert median([]) is None
