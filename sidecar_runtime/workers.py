"""Several worker processes on one port (SO_REUSEPORT), so a sidecar can use every core.

The supervisor re-executes the same command once per worker with `SIDECAR_WORKER_INDEX`
set, forwards SIGTERM/SIGINT/SIGHUP to them, restarts a worker that dies unexpectedly
(with a backoff), and exits once every worker has exited after a stop signal.
grpc does not survive `fork()` after it has started threads, hence processes by exec.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

WORKER_ENV = "SIDECAR_WORKER_INDEX"
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a supervised worker."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw is not None and raw.isdigit() else None


class Supervisor:
    def __init__(self, argv: Sequence[str], count: int) -> None:
        self._argv = list(argv)
        self._count = count
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._restarts: dict[int, int] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        env = {**os.environ, WORKER_ENV: str(index)}
        self._children[index] = subprocess.Popen(self._argv, env=env)  # noqa: S603
        log.info(
            "worker started",
            extra={"fields": {"worker": index, "child_pid": self._children[index].pid}},
        )

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        for index in range(self._count):
            self._spawn(index)
        while True:
            alive = False
            for index, child in list(self._children.items()):
                code = child.poll()
                if code is None:
                    alive = True
                elif not self._stopping:
                    self._restart(index, code)
                    alive = True
            if not alive:
                return 0
            time.sleep(0.2)

    def _restart(self, index: int, code: int) -> None:
        attempt = self._restarts.get(index, 0)
        delay = _RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)]
        log.error(
            "worker exited; restarting",
            extra={"fields": {"worker": index, "code": code, "in_s": delay}},
        )
        self._restarts[index] = attempt + 1
        time.sleep(delay)
        if not self._stopping:
            self._spawn(index)


def run_workers(count: int, argv: Sequence[str] | None = None) -> int:
    """Supervise `count` copies of this process's own command line."""
    # orig_argv keeps `-m package` when started that way; argv[0] would be a file path.
    return Supervisor(argv or [sys.executable, *sys.orig_argv[1:]], count).run()
