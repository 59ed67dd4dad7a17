"""The audit sink: one JSON line per decision, written off the hot path.

`emit()` only appends a dict to a deque (no encoding, no I/O, no lock on the caller's
side); a writer thread encodes and writes batches. When the backlog is full, records are
dropped and counted rather than slowing decisions down. Callers must never put a token,
a key or an Authorization header into a record; `redact()` guards header maps.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of `headers` with credential-bearing values replaced."""
    return {k: ("[redacted]" if k.lower() in SENSITIVE_HEADERS else v) for k, v in headers.items()}


def iso_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds."""
    millis = int(ts * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"


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
        self._pending: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        self.written = 0
        self._stream: IO[str] | None = None
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def emit(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks."""
        if len(self._pending) >= self._max_backlog:
            self.dropped += 1
            return
        self._pending.append(record)

    def _open(self) -> IO[str]:
        if self._target == "stdout":
            return sys.stdout
        if self._target == "stderr":
            return sys.stderr
        return Path(self._target).open("a", encoding="utf-8", buffering=1 << 16)

    def _drain(self) -> None:
        if not self._pending:
            return
        with self._write_lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        stream = self._stream = self._stream or self._open()
        lines = []
        while self._pending:
            record = self._pending.popleft()
            ts = record.get("ts")
            if isinstance(ts, float):
                # Callers pass time.time(); formatting happens here, off the hot path.
                record["ts"] = iso_time(ts)
            lines.append(json.dumps(record, separators=(",", ":"), default=str))
        stream.write("\n".join(lines) + "\n")
        stream.flush()
        self.written += len(lines)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                self._drain()
            except (OSError, ValueError):
                self.dropped += len(self._pending)
                self._pending.clear()

    def flush(self) -> None:
        """Write everything queued so far (tests and shutdown)."""
        self._drain()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=2)
        self._drain()
        if self._stream is not None and self._target not in ("stdout", "stderr"):
            self._stream.close()
