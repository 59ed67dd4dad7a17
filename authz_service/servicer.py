"""The gRPC adapter: envoy.service.auth.v3.Authorization/Check.

Reads the current Engine once per call (so a reload never mixes two configs in one
decision), decides, answers, and queues one audit line. Any unexpected error denies with
503: the sidecar never fails open.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from authz_service.decision import INTERNAL_ERROR, Decision
from authz_service.engine import EngineHolder
from authz_service.envoy_adapter import read_check_request
from authz_service.policy import RequestFacts
from sidecar_runtime.audit import AuditSink

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
_MAX_AUDIT_PATH = 1024


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, holder: EngineHolder, audit: AuditSink | None) -> None:
        self._holder = holder
        self._audit = audit

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        engine = self._holder.current
        facts: RequestFacts | None = None
        try:
            inputs = read_check_request(request)
            facts = inputs.facts
            decision = await engine.authorizer.decide(
                facts, authorization=inputs.authorization, cookie=inputs.cookie
            )
        except Exception:
            log.exception("check failed; denying")
            decision = INTERNAL_ERROR
        request_id = facts.request_id if facts is not None else ""
        response = engine.responses.build(decision, request_id)
        if self._audit is not None:
            self._audit.emit(audit_record(decision, facts, time.perf_counter() - started))
        return response


def audit_record(decision: Decision, facts: RequestFacts | None, elapsed: float) -> dict[str, Any]:
    """One decision line (schema version 1). No token, key or credential header, ever."""
    principal = decision.principal
    return {
        "v": 1,
        "ts": time.time(),
        "service": "authz",
        "request_id": facts.request_id if facts else "",
        "decision": "allow" if decision.allowed else "deny",
        "status": decision.status,
        "reason": decision.reason,
        "rule": decision.rule,
        "subject": principal.subject if principal else None,
        "issuer": principal.issuer if principal else None,
        "method": facts.method if facts else "",
        "path": facts.raw_path.partition("?")[0][:_MAX_AUDIT_PATH] if facts else "",
        "client_address": facts.client_address if facts else "",
        "detail": decision.detail or None,
        "latency_ms": round(elapsed * 1000, 3),
    }
