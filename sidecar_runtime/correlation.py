"""The ids that join one request's traces, audit lines and Envoy's access log.

The gRPC adapter sets `current` for the duration of one call; anything that writes a
decision line below it (the rate limiter's rate-limited decision log, for one) reads it,
so no id has to be threaded through the pure core's signatures.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DecisionContext:
    decision_id: str
    request_id: str = ""
    trace_id: str | None = None
    started: float = 0.0  # time.perf_counter() when the call arrived, for latency_ms


NONE = DecisionContext("")
current: ContextVar[DecisionContext] = ContextVar("edgeguard_decision", default=NONE)
