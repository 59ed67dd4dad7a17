"""Token-bucket arithmetic (GCRA), pure: plain values in, plain values out.

A bucket refills one token every `interval_us` microseconds and holds at most `capacity`
tokens (the burst). GCRA keeps one number per bucket, the *theoretical arrival time*
(TAT): the instant at which the bucket would be full again. A request of `cost` tokens at
time `now` is admitted when, after pushing the TAT `cost * interval` further, the TAT is no
more than `capacity * interval` (tau) ahead of `now`.

Time can step backwards (NTP, a failover to another Redis host): the state also keeps
`seen_us`, the latest time the bucket was updated at, and the math uses
`max(now, seen)`, so elapsed time is clamped at zero and a step back never drains tokens.

`gcra.lua` is this module written in Lua, operation for operation, so the memory store and
Redis reach the same decisions from the same inputs (both use IEEE doubles; with integer
microseconds and an `interval_us` that divides evenly, every value is exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

# Floors of token counts get this much slack so that 2.9999999999 (a rounding artefact of a
# non-integral interval) reads as 3. Decisions never use it: only the reported remainder.
_FLOOR_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """How a bucket behaves: one token every `interval_us`, at most `capacity` tokens."""

    interval_us: float
    capacity: int

    @property
    def tau_us(self) -> float:
        return self.capacity * self.interval_us


@dataclass(frozen=True, slots=True)
class BucketState:
    """What is stored per bucket. The zero state is a full bucket."""

    tat_us: float = 0.0
    seen_us: float = 0.0


EMPTY_STATE = BucketState()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one bucket says about a request of `cost` tokens at one instant.

    `*_after` describe the bucket once the request is committed (`new_state` written;
    None when nothing needs writing), `*_now` the bucket as it is, which is what is
    reported when the request is denied or another bucket vetoes it (all-or-nothing).
    `reset` is the time until the bucket is full again.
    """

    allowed: bool
    new_state: BucketState | None
    remaining_after: int
    reset_after_us: int
    remaining_now: int
    reset_now_us: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One bucket's reported result: admitted or not, tokens left, time until full."""

    allowed: bool
    remaining: int
    reset_us: int


def evaluate(spec: BucketSpec, state: BucketState, *, cost: int, now_us: float) -> Verdict:
    """Ask for `cost` tokens. Cost 0 checks without consuming: it is admitted when at least
    one token is available. A cost above the capacity can never be admitted."""
    interval = spec.interval_us
    tau = spec.capacity * interval
    clock = max(now_us, state.seen_us)
    base = max(state.tat_us, clock)
    need = cost if cost > 0 else 1
    remaining_now = math.floor((tau - (base - clock)) / interval + _FLOOR_SLACK)
    reset_now = math.ceil(base - clock)
    if need > spec.capacity or (base - clock) + need * interval > tau:
        return Verdict(False, None, remaining_now, reset_now, remaining_now, reset_now)
    if cost == 0:
        return Verdict(True, None, remaining_now, reset_now, remaining_now, reset_now)
    new_tat = base + cost * interval
    remaining = math.floor((tau - (new_tat - clock)) / interval + _FLOOR_SLACK)
    reset = math.ceil(new_tat - clock)
    return Verdict(True, BucketState(new_tat, clock), remaining, reset, remaining_now, reset_now)


class CallMode(IntEnum):
    """How a bucket's denial weighs in the commit rule (`must_commit`).

    SHADOW: envoyproxy/ratelimit's `shadow_mode`, a denial is only logged. ENFORCE: a
    denial vetoes the request. QUOTA: the reference's `quota_mode`, one of several
    alternative allowances: the request is vetoed only when every quota bucket denies.
    The values are what gcra.lua receives (ARGV), so they are fixed.
    """

    SHADOW = 0
    ENFORCE = 1
    QUOTA = 2


class Allowed(Protocol):
    @property
    def allowed(self) -> bool: ...


class Moded(Protocol):
    @property
    def mode(self) -> CallMode: ...


@dataclass(frozen=True, slots=True)
class Vote:
    """One bucket as the commit rule sees it (`must_commit(votes, votes)`)."""

    allowed: bool
    mode: CallMode


def failed_vote(mode: CallMode, *, fail_open: bool) -> Vote:
    """A bucket the store could not answer for: it admits under fail_open and, under
    fail_closed, denies as an enforced bucket would, whatever its own mode (a failing
    store refuses the request, as when the whole store is down)."""
    return Vote(True, mode) if fail_open else Vote(False, CallMode.ENFORCE)


def must_commit(verdicts: Sequence[Allowed], calls: Sequence[Moded]) -> bool:
    """All-or-nothing: commit iff no ENFORCE bucket denied, and not every QUOTA bucket
    denied (when there is at least one). SHADOW and QUOTA denials alone veto nothing; a
    bucket that denied is simply not written. gcra.lua applies the same rule per call, and
    the Cluster store across its per-slot calls."""
    quota_seen = quota_allowed = False
    for verdict, call in zip(verdicts, calls, strict=True):
        mode = call.mode
        if mode == CallMode.ENFORCE:
            if not verdict.allowed:
                return False
        elif mode == CallMode.QUOTA:
            quota_seen = True
            quota_allowed = quota_allowed or verdict.allowed
    return quota_allowed or not quota_seen


def report(verdict: Verdict, *, committed: bool) -> Outcome:
    """What to tell the caller about one bucket once the commit decision is made."""
    if committed and verdict.allowed:
        return Outcome(True, max(verdict.remaining_after, 0), verdict.reset_after_us)
    return Outcome(verdict.allowed, max(verdict.remaining_now, 0), verdict.reset_now_us)


def refund(spec: BucketSpec, state: BucketState, *, cost: int, now_us: float) -> BucketState | None:
    """Give back `cost` tokens taken earlier; None means the bucket is full (delete it)."""
    clock = max(now_us, state.seen_us)
    tat = state.tat_us - cost * spec.interval_us
    if tat <= clock:
        return None
    return BucketState(tat, state.seen_us)


def ttl_ms(state: BucketState, now_us: float) -> int:
    """How long to keep a bucket: until it is full again (then it equals no state at all)."""
    clock = max(now_us, state.seen_us)
    return math.ceil((state.tat_us - clock) / 1000) + 1


def retry_after_us(spec: BucketSpec, *, reset_now_us: float, need: int) -> float:
    """Time until `need` tokens are available, from the time until the bucket is full."""
    return max(reset_now_us + need * spec.interval_us - spec.tau_us, 0.0)
