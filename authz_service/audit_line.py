"""The authz audit line (docs/audit-schema.md): one per decision, never a credential.

The hot path keeps only references (`CheckAudit`, a tuple of the decision, the request's
facts, the timings and ids); the audit sink builds and encodes the lines of a batch once
per flush interval, off the request's path.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from authz_service.pipeline import Decision
from authz_service.policy import RequestFacts

AUDIT_SCHEMA_VERSION = 1
_MAX_AUDIT_PATH = 1024


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
            # False: a deny under dry_run; the request went through.
            "enforced": decision.enforced,
            "rule_set": decision.rule_set or None,
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
            # A refused body's places (RFC 6901 pointers and reasons), never its values.
            "violations": [{"pointer": v.pointer, "reason": v.reason} for v in decision.violations]
            or None,
        }


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
