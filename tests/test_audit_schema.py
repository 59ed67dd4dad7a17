"""docs/audit-schema.md is the contract: the lines both sidecars write have exactly its fields."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from authz_service.audit_line import audit_record
from authz_service.pipeline import Decision
from authz_service.policy import RequestFacts
from ratelimit_service.decision_log import DecisionLog, current_call
from sidecar_runtime import correlation
from sidecar_runtime.clock import ManualClock

DOC = (Path(__file__).resolve().parents[1] / "docs" / "audit-schema.md").read_text()


def _fields(heading: str) -> set[str]:
    section = DOC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+) \|", section, re.M):
        names |= set(re.findall(r"`([a-z_]+)`", row))
    return names


COMMON = _fields("Common fields")


def test_common_fields_are_documented() -> None:
    assert {"v", "ts", "service", "decision_id", "request_id", "trace_id"} <= COMMON


def test_authz_lines_have_exactly_the_documented_fields() -> None:
    facts = RequestFacts("GET", "/a?q=1", "h", {}, "192.0.2.1", "", "r-1")
    record = audit_record(Decision(True, 200, "public"), facts, 0.001, "d-1", None)
    assert set(record) == COMMON | _fields("authz fields")
    assert record["path"] == "/a"


class _Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def test_ratelimit_lines_have_exactly_the_documented_fields() -> None:
    sink = _Sink()
    log = DecisionLog(lines_per_second=1, clock=ManualClock(), sink=sink)  # type: ignore[arg-type]
    ctx = correlation.DecisionContext("d-2", "r-2", "a" * 32, started=1.0)
    token = current_call.set(ctx)
    try:
        log.over_limit(domain="edge", entries=[("subject", "alice")], rule="per-subject",
                       shadow=False, cost=1, retry_after_s=1)  # fmt: skip
    finally:
        current_call.reset(token)
    [record] = sink.records
    optional = {"suppressed"}
    assert set(record) == (COMMON | _fields("ratelimit fields")) - optional
    assert (record["decision_id"], record["request_id"]) == ("d-2", "r-2")
    assert "alice" not in str(record)
