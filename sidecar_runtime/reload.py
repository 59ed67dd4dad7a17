"""Config reload on SIGHUP (wired in `server.serve_until_signalled`) and on file change.

File change is detected by polling `stat()` of each watched path (size, mtime, inode):
no extra dependency, and it follows the symlink swaps Kubernetes uses for ConfigMaps.
The reload callback must load, validate and swap the whole config, or keep the old one.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from sidecar_runtime.loops import Periodic

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    out = []
    for path in paths:
        targets = sorted(path.rglob("*")) if path.is_dir() else [path]
        for target in targets:
            try:
                st = os.stat(target)
            except OSError:
                out.append((str(target), -1, -1, -1))
                continue
            out.append((str(target), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


class FileWatcher:
    """Calls `on_change` when any watched file (or file under a watched dir) changes."""

    def __init__(
        self,
        paths: Callable[[], Iterable[Path]],
        on_change: Callable[[], Awaitable[object]],
        *,
        interval: float = 1.0,
    ) -> None:
        self._paths = paths
        self._on_change = on_change
        self._last: Fingerprint | None = None
        self._periodic = Periodic(
            self._check, interval=lambda: interval, what="reload after file change"
        )

    def start(self) -> None:
        self._last = fingerprint(self._paths())
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _check(self) -> None:
        current = fingerprint(self._paths())
        if current != self._last:
            self._last = current
            await self._on_change()
