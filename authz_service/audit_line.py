"""The authz audit line (docs/audit-schema.md): one per decision, never a credential.

The hot path keeps only references (`CheckAudit`, a tuple of the decision, the request's
facts, the timings and ids); the audit sink turns a batch of them into JSON lines once
per flush interval. Building a 17-field dict per decision and encoding it with `json` cost
~2.5 µs more per decision in a loop here, and about four times that between gRPC calls
under load. The line is written field by field with the `json` module's own string
escaping, so it is byte for byte what `json.dumps(as_dict())` writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, NamedTuple

from authz_service.pipeline import Decision
from authz_service.policy import RequestFacts

AUDIT_SCHEMA_VERSION = 1
_MAX_AUDIT_PATH = 1024
_ALLOW, _DENY = '"allow"', '"deny"'


class CheckAudit(NamedTuple):
    ts: float  # time.time() at the decision
    decision: Decision
    facts: RequestFacts | None
    elapsed: float  # seconds spent deciding
    decision_id: str
    trace_id: str | None

    def as_dict(self) -> dict[str, Any]:
        """The line's fields, `ts` still a float (the sink formats it)."""
        decision, facts, principal = self.decision, self.facts, self.decision.principal
        return {
            "v": AUDIT_SCHEMA_VERSION,
            "ts": self.ts,
            "service": "authz",
            "decision_id": self.decision_id,
            "request_id": facts.request_id if facts else "",
            "trace_id": self.trace_id,
            "decision": "allow" if decision.allowed else "deny",
            "reason": decision.reason,
            "rule": decision.rule,
            "latency_ms": round(self.elapsed * 1000, 3),
            "status": decision.status,
            "subject": principal.subject if principal else None,
            "issuer": principal.issuer if principal else None,
            "method": facts.method if facts else "",
            "path": _audit_path(facts.raw_path) if facts else "",
            "client_address": facts.client_address if facts else "",
            "detail": decision.detail or None,
        }

    def json_line(self, format_time: Callable[[float], str]) -> str:
        """The line as JSON (compact, ASCII), equal to encoding `as_dict()` with `ts`
        formatted by `format_time`."""
        decision, facts, principal = self.decision, self.facts, self.decision.principal
        if facts is None:
            request_id = method = path = client = '""'
        else:
            request_id = _json_string(facts.request_id)
            method = _json_string(facts.method)
            path = _json_string(_audit_path(facts.raw_path))
            client = _json_string(facts.client_address)
        if principal is None:
            subject = issuer = "null"
        else:
            subject = _json_string(principal.subject)
            issuer = _json_string(principal.issuer)
        return (
            f'{{"v":{AUDIT_SCHEMA_VERSION},"ts":{_json_string(format_time(self.ts))},'
            f'"service":"authz","decision_id":{_json_string(self.decision_id)},'
            f'"request_id":{request_id},"trace_id":{_nullable(self.trace_id)},'
            f'"decision":{_ALLOW if decision.allowed else _DENY},'
            f'"reason":{_json_string(decision.reason)},"rule":{_json_string(decision.rule)},'
            f'"latency_ms":{round(self.elapsed * 1000, 3)!r},"status":{int(decision.status)},'
            f'"subject":{subject},"issuer":{issuer},"method":{method},"path":{path},'
            f'"client_address":{client},"detail":{_nullable(decision.detail or None)}}}'
        )


def audit_record(
    decision: Decision,
    facts: RequestFacts | None,
    elapsed: float,
    decision_id: str = "",
    trace_id: str | None = None,
    *,
    ts: float | None = None,
) -> dict[str, Any]:
    """One decision line's fields (docs/audit-schema.md); `ts` defaults to now."""
    when = time.time() if ts is None else ts
    return CheckAudit(when, decision, facts, elapsed, decision_id, trace_id).as_dict()


def _audit_path(raw_path: str) -> str:
    # The path without its query (which may carry anything), capped.
    return raw_path.partition("?")[0][:_MAX_AUDIT_PATH]


def _nullable(value: str | None) -> str:
    return "null" if value is None else _json_string(value)
