"""The audit sink: one JSON line per decision, written off the hot path.

`emit()` only appends a record to a deque (no encoding, no I/O, no lock on the caller's
side). A record is a dict, or an `AuditEntry`: a hot path's fixed-schema line kept as
plain references until it encodes itself. Called from an event loop, `emit()` also
schedules, once per batch, an encoding pass on that loop `flush_interval` later: the batch
becomes one string with a reused encoder, and a writer thread does only the blocking
`write`. Encoding on a second thread would cost the same CPU plus a GIL hand-over per
batch that slows the loop's own work (measured: ~25 us per decision under load). Records
emitted outside a loop are encoded by the writer thread. When the backlog is full,
records are dropped and counted rather than slowing decisions down. Callers must never
put a token, a key or an Authorization header into a record; `redact()` guards header
maps.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)


class AuditEntry(Protocol):
    """A record that a hot path keeps as plain references; its fields are built when its
    batch is encoded, off the hot path (see authz_service.audit_line)."""

    def as_dict(self) -> dict[str, Any]:
        """The line's fields; a float `ts` is `time.time()`, formatted by the sink."""
        ...


Record = dict[str, Any] | AuditEntry


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` with credential-bearing values replaced."""
    return {k: ("[redacted]" if k.lower() in SENSITIVE_HEADERS else v) for k, v in headers.items()}


def iso_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds."""
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"


class TimeFormatter:
    """iso_time, formatting the seconds part once per second (lines come in bursts)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int(ts * 1000) % 1000:03d}Z"


class AuditSink:
    def __init__(
        self,
        target: str = "stdout",
        *,
        max_backlog: int = 100_000,
        flush_interval: float = 0.05,
    ) -> None:
        self._target = target
        self._max_backlog = max_backlog
        self._flush_interval = flush_interval
        self._pending: deque[Record] = deque()
        self._encoded: deque[tuple[str, int]] = deque()  # (lines, count) ready to write
        self._encoder = json.JSONEncoder(separators=(",", ":"), default=str)
        self._encode_lock = threading.Lock()  # one encoding pass at a time (order)
        self._time_format = TimeFormatter()
        self._scheduled = False
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        self.written = 0
        self._stream: IO[str] | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def emit(self, record: Record) -> None:
        """Queue one record; never blocks."""
        if len(self._pending) >= self._max_backlog:
            self.dropped += 1
            return
        self._pending.append(record)
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop here: the writer thread encodes it
            self._scheduled = True
            loop.call_later(self._flush_interval, self._encode_on_loop)

    def _encode_on_loop(self) -> None:
        self._scheduled = False
        self._encode_pending()
        self._wake.set()

    def _encode_pending(self) -> None:
        with self._encode_lock:
            encode = self._encoder.encode
            time_format = self._time_format
            lines = []
            pending = self._pending
            while pending:
                record = pending.popleft()
                if not isinstance(record, dict):
                    record = record.as_dict()
                ts = record.get("ts")
                if isinstance(ts, float):
                    # Callers pass time.time(); formatting happens here, off the hot path.
                    record["ts"] = time_format(ts)
                lines.append(encode(record))
            if lines:
                self._encoded.append(("\n".join(lines) + "\n", len(lines)))

    def _open(self) -> IO[str]:
        if self._target == "stdout":
            return sys.stdout
        if self._target == "stderr":
            return sys.stderr
        return Path(self._target).open("a", encoding="utf-8", buffering=1 << 16)

    def _write_encoded(self) -> None:
        if not self._encoded:
            return
        with self._write_lock:
            stream = self._stream = self._stream or self._open()
            while self._encoded:
                chunk, count = self._encoded.popleft()
                stream.write(chunk)
                self.written += count
            stream.flush()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                if not self._scheduled:  # records emitted outside any loop
                    self._encode_pending()
                self._write_encoded()
            except (OSError, ValueError):
                self.dropped += len(self._pending) + sum(n for _, n in self._encoded)
                self._pending.clear()
                self._encoded.clear()

    def flush(self) -> None:
        """Write everything queued so far (tests and shutdown)."""
        self._encode_pending()
        self._write_encoded()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=2)
        self.flush()
        if self._stream is not None and self._target not in ("stdout", "stderr"):
            self._stream.close()
