"""CheckAudit: the audit line's fields, as the sink writes them (docs/audit-schema.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authz_service.audit_line import CheckAudit, audit_record
from authz_service.body import Violation
from authz_service.pipeline import Decision, deny
from authz_service.policy import RequestFacts
from authz_service.principal import Principal
from sidecar_runtime.audit import AuditSink

TS = 1_700_000_000.123
AWKWARD = ['"', "\\", "\n", "\x00", "\x1f", "é", "😀", "</script>", "a\u2028b", ""]


def _principal(subject: str = "alice", issuer: str = "https://idp.example") -> Principal:
    return Principal(subject, issuer, ("api://demo",), frozenset(), frozenset(), {}, 0.0)


def _facts(path: str = "/api/v1/users/alice?x=1", **kw: str) -> RequestFacts:
    values = {
        "method": "GET",
        "host": "api.example.com",
        "client_address": "192.0.2.7",
        "peer_principal": "",
        "request_id": "r-1",
    } | kw
    return RequestFacts(raw_path=path, headers={}, **values)  # type: ignore[arg-type]


def _written(tmp_path: Path, *entries: CheckAudit) -> list[dict[str, Any]]:
    """The lines an AuditSink writes for `entries`, parsed."""
    target = tmp_path / "audit.jsonl"
    sink = AuditSink(str(target), flush_interval=60)
    try:
        for entry in entries:
            sink.emit(entry)
        sink.flush()
    finally:
        sink.close()
    text = target.read_text()
    assert text.count("\n") == len(entries)  # one line each, whatever the values hold
    return [json.loads(line) for line in text.splitlines()]


def _entries() -> list[CheckAudit]:
    allow = Decision(True, 200, "allowed", rule="get-user", principal=_principal())
    out = [
        CheckAudit(TS, allow, _facts(), 0.000123, "d" * 24, None),
        CheckAudit(TS, allow, _facts(), 1.5, "d-1", "a" * 32),
        CheckAudit(TS, deny(401, "no_credentials", "unauthorized"), _facts(), 0.0, "", None),
        CheckAudit(
            TS, deny(503, "internal_error", "temporarily_unavailable"), None, 2e-7, "x", None
        ),
        CheckAudit(
            TS, deny(403, "condition_false", "forbidden", detail="c[0]"), _facts(), 0, "", None
        ),
    ]
    for text in AWKWARD:
        who = _principal(subject=text, issuer=text)
        decision = Decision(False, 403, text, rule=text, principal=who, detail=text)
        facts = _facts(f"/{text}?{text}", method=text, client_address=text, request_id=text)
        out.append(CheckAudit(TS, decision, facts, 0.01, text, text))
    return out


def test_each_entry_is_one_line_of_its_fields(tmp_path: Path) -> None:
    entries = _entries()
    written = _written(tmp_path, *entries)
    for entry, line in zip(entries, written, strict=True):
        assert line == entry.as_dict() | {"ts": "2023-11-14T22:13:20.123Z"}


def test_awkward_values_round_trip(tmp_path: Path) -> None:
    written = _written(tmp_path, *_entries())
    assert [line["subject"] for line in written[-len(AWKWARD) :]] == AWKWARD
    assert written[0]["subject"] == "alice"
    assert written[0]["latency_ms"] == 0.123


def test_the_path_loses_its_query_and_is_capped(tmp_path: Path) -> None:
    allow = Decision(True, 200, "public")
    entry = CheckAudit(TS, allow, _facts("/" + "p" * 5000 + "?token=secret"), 0.0, "", None)
    [line] = _written(tmp_path, entry)
    assert line["path"] == "/" + "p" * 1023
    assert "secret" not in json.dumps(line)


def test_audit_record_defaults_ts_to_now() -> None:
    record = audit_record(Decision(True, 200, "public"), _facts(), 0.001)
    assert isinstance(record["ts"], float)
    assert record["ts"] > TS


def test_dry_run_rule_sets_and_refused_bodies_are_on_the_line(tmp_path: Path) -> None:
    refused = Decision(
        False,
        422,
        "schema_violation",
        "invalid_body",
        rule="put-user",
        violations=(Violation("/email", "not a valid email"),),
    )
    dry = Decision(False, 403, "role_denied", "forbidden", rule="r", rule_set="b", enforced=False)
    first, second = _written(
        tmp_path,
        CheckAudit(TS, refused, _facts(), 0.0, "", None),
        CheckAudit(TS, dry, _facts(), 0.0, "", None),
    )
    assert first["violations"] == [{"pointer": "/email", "reason": "not a valid email"}]
    assert (first["enforced"], first["rule_set"]) == (True, None)
    assert (second["decision"], second["enforced"], second["rule_set"]) == ("deny", False, "b")
    assert second["violations"] is None
