"""CheckAudit.json_line writes exactly what json.dumps writes for the same fields."""

from __future__ import annotations

import json

import pytest

from authz_service.audit_line import CheckAudit, audit_record
from authz_service.pipeline import Decision, deny
from authz_service.policy import RequestFacts
from authz_service.principal import Principal
from sidecar_runtime.audit import TimeFormatter

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


def _as_json_dumps(entry: CheckAudit) -> str:
    fields = entry.as_dict() | {"ts": TimeFormatter()(entry.ts)}
    return json.dumps(fields, separators=(",", ":"), default=str)


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


@pytest.mark.parametrize("entry", _entries())
def test_the_line_is_what_json_dumps_writes(entry: CheckAudit) -> None:
    line = entry.json_line(TimeFormatter())
    assert line == _as_json_dumps(entry)
    assert "\n" not in line
    assert json.loads(line)["ts"] == "2023-11-14T22:13:20.123Z"


def test_the_path_loses_its_query_and_is_capped() -> None:
    allow = Decision(True, 200, "public")
    entry = CheckAudit(TS, allow, _facts("/" + "p" * 5000 + "?token=secret"), 0.0, "", None)
    line = json.loads(entry.json_line(TimeFormatter()))
    assert line["path"] == "/" + "p" * 1023
    assert "secret" not in entry.json_line(TimeFormatter())


def test_audit_record_defaults_ts_to_now() -> None:
    record = audit_record(Decision(True, 200, "public"), _facts(), 0.001)
    assert isinstance(record["ts"], float)
    assert record["ts"] > TS
