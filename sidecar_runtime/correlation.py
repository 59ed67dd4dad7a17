"""The ids that join one request's traces, audit lines and Envoy's access log.

`DecisionContext` carries them for one call. A service keeps it in a context variable
of its own for the duration of the call (the rate limiter's `decision_log.current_call`),
so anything that writes a decision line below the gRPC adapter reads it and no id has to
be threaded through the pure core's signatures. `current` is the shared variable for
code that has no variable of its own.
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
