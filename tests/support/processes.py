"""Start and stop service processes in tests; always stopped by their own pid."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# Ports handed out in this test process: never handed out twice.
_HANDED_OUT: set[int] = set()
_RANDOM = random.Random()
_LOWEST = 10_000  # above the well-known ports and the machine's own services


def free_port() -> int:
    """A loopback port that is free now, below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) lies in the ephemeral range, where every client
    socket takes its source port: a server started a moment later can find it taken by
    some connection (seen: "Failed to bind to address 127.0.0.1:33648"). Below that range
    only servers bind."""
    high = _ephemeral_start()
    for _ in range(1_000):
        port = _RANDOM.randrange(_LOWEST, high)
        if port not in _HANDED_OUT and port_is_free(port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:  # the whole low range busy: fall back on the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(int(text.split()[0]), _LOWEST + 1_000)
    except (OSError, ValueError, IndexError):
        return 32_768


def wait_until(predicate: Callable[[], bool], *, timeout: float = 15.0, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def children_of(pid: int) -> list[int]:
    """Direct children, read from /proc (Linux)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def stop(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM by pid, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def running(
    args: Sequence[str], *, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `python -m <args>`; on exit send SIGTERM, then SIGKILL after 10 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            yield proc
        finally:
            stop(proc)
