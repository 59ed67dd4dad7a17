"""The audit sink: order, encoding on the caller's loop, bounded backlog, flush on close."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from sidecar_runtime.audit import AuditSink, TimeFormatter, iso_time, redact


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_outside_a_loop_are_written_in_order_on_flush(tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    sink = AuditSink(str(target), flush_interval=60)
    try:
        for i in range(5):
            sink.emit({"n": i, "ts": 1_700_000_000.25 + i})
        sink.flush()
        written = lines(target)
    finally:
        sink.close()
    assert [r["n"] for r in written] == [0, 1, 2, 3, 4]
    assert written[0]["ts"] == "2023-11-14T22:13:20.250Z"
    assert sink.written == 5


async def test_records_emitted_on_a_loop_are_encoded_there_and_written(tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    sink = AuditSink(str(target), flush_interval=0.01)
    encoders: set[int] = set()
    original = sink._encode_pending

    def spy() -> None:
        encoders.add(threading.get_ident())
        original()

    sink._encode_pending = spy  # type: ignore[method-assign]
    try:
        for i in range(100):
            sink.emit({"n": i, "ts": 1_700_000_000.0})
        for _ in range(200):
            await asyncio.sleep(0.01)
            if sink.written == 100:
                break
        assert [r["n"] for r in lines(target)] == list(range(100))
        # The batch was encoded by the loop's own thread (the writer only writes).
        assert threading.get_ident() in encoders
    finally:
        sink.close()


def test_a_full_backlog_drops_and_counts(tmp_path: Path) -> None:
    sink = AuditSink(str(tmp_path / "audit.jsonl"), max_backlog=3, flush_interval=60)
    try:
        for i in range(5):
            sink.emit({"n": i})
        assert sink.dropped == 2
    finally:
        sink.close()
    assert [r["n"] for r in lines(tmp_path / "audit.jsonl")] == [0, 1, 2]


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    sink = AuditSink(str(target), flush_interval=60)
    sink.emit({"n": 1, "value": object()})  # anything unknown is written as str()
    sink.close()
    [record] = lines(target)
    assert record["n"] == 1
    assert str(record["value"]).startswith("<object")


def test_time_formatter_matches_iso_time_across_seconds() -> None:
    fmt = TimeFormatter()
    for ts in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.001, 1_699_999_999.5, 0.0):
        assert fmt(ts) == iso_time(ts)


def test_redact_hides_credential_headers() -> None:
    out = redact({"Authorization": "Bearer x", "cookie": "a=b", "accept": "json"})
    assert out == {"Authorization": "[redacted]", "cookie": "[redacted]", "accept": "json"}


class _Entry:
    def __init__(self, n: int) -> None:
        self.n = n

    def as_dict(self) -> dict[str, Any]:
        return {"entry": self.n, "ts": 1_700_000_000.5}


def test_entries_are_encoded_in_order_with_dicts(tmp_path: Path) -> None:
    target = tmp_path / "audit.jsonl"
    sink = AuditSink(str(target), flush_interval=60)
    try:
        sink.emit({"n": 0})
        sink.emit(_Entry(1))
        sink.emit({"n": 2})
        sink.flush()
        written = lines(target)
    finally:
        sink.close()
    assert written == [{"n": 0}, {"entry": 1, "ts": "2023-11-14T22:13:20.500Z"}, {"n": 2}]
    assert sink.written == 3
