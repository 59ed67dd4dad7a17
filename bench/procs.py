"""Processes the bench starts, and the CPU they (and everything else) use.

Every child is started in its own session (`start_new_session=True`) and remembered; it is
stopped by its own pid (SIGTERM, then SIGKILL of the group it leads, which holds only that
child's own descendants, e.g. a sidecar's worker processes). `Procs.stop_all()` runs from
a `finally`, so Ctrl-C, SIGTERM and exceptions all end every process the bench started.

`CpuMeter` reads /proc to tell, for one measured window, how many CPU cores each named
process tree used and how much CPU went to processes that are not the bench's at all
(another job on a shared machine): a run with much foreign CPU is flagged, not trusted.
It also tells how long each tree's threads sat runnable but waiting for a core (the
scheduler's `run_delay`): on two cores shared by the load generator, a sidecar and Redis,
a reply can be late because its process was not on a CPU, not because it was slow.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Procs:
    """The bench's children, by name; stopped in reverse order of start."""

    log_dir: Path
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: Path | None = None,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out_path = stdout or self.log_dir / f"{name}.log"
        with out_path.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - the bench's own commands
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.children.append((name, proc))
        with (self.log_dir / "pids.txt").open("a") as fh:  # for leak checks
            fh.write(f"{proc.pid} {name}\n")
        return proc

    def python(self, name: str, args: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return self.spawn(name, [sys.executable, *args], **kw)  # type: ignore[arg-type]

    def stop(self, proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
        """SIGTERM the pid; after `grace` s, SIGKILL the group it leads (its own tree)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # A supervisor that exited may leave workers still draining: end the group's rest.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.children = [(n, p) for n, p in self.children if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self.children)):
            self.stop(proc, grace=5.0)


# --- CPU accounting from /proc ----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _parent_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                out[int(entry.name)] = int(fields[1])
    return out


def descendants(roots: Iterable[int], parents: Mapping[int, int] | None = None) -> set[int]:
    """The roots and every process below them."""
    parents = parents if parents is not None else _parent_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in parents]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def _ticks(pid: int, *, with_children: bool = True) -> int:
    fields = _stat_fields(pid)
    # utime, stime, cutime, cstime (fields 14-17 of stat; index 11-14 after the comm split)
    end = 15 if with_children else 13
    return 0 if fields is None else sum(int(x) for x in fields[11:end])


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _total_busy_ticks() -> int:
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(x) for x in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle


def threads(pid: int) -> list[int]:
    """The thread ids of a process now; none when it is gone."""
    try:
        return sorted(int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns spent runnable but waiting for a core, timeslices run), summed over the
    process's threads, from /proc/PID/task/TID/schedstat (`on-cpu run_delay slices`)."""
    waited = slices = 0
    for tid in threads(pid):
        try:
            _on_cpu, delay, count = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # the thread ended, or a kernel without schedstats
        waited += int(delay)
        slices += int(count)
    return waited, slices


@dataclass(frozen=True)
class RunQueueWait:
    """How long a tree's threads waited for a core over a window."""

    ms_per_s: float  # milliseconds of waiting per second of wall time, all threads
    us_per_slice: float  # the mean wait before each timeslice it ran

    def as_dict(self) -> dict[str, float]:
        return {"ms_per_s": round(self.ms_per_s, 2), "us_per_slice": round(self.us_per_slice, 1)}


@dataclass
class CpuWindow:
    seconds: float
    cores: dict[str, float]  # name -> cores used on average
    foreign_cores: float  # CPU used by processes that are not the bench's
    waits: dict[str, RunQueueWait] = field(default_factory=dict)  # name -> run-queue wait

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 2),
            "cores": {k: round(v, 2) for k, v in self.cores.items()},
            "foreign_cores": round(self.foreign_cores, 2),
            "run_queue_wait": {k: w.as_dict() for k, w in self.waits.items()},
        }


class CpuMeter:
    """Per-tree CPU over one window: `start()`, then `stop()` returns a CpuWindow.

    `groups` maps a name to root pids; each root's whole tree counts. The bench process
    itself (and its threads) is the group `harness`; its children that end inside the
    window (the h2load processes) are the group `loadgen`. Everything else that used CPU in
    the window is `foreign_cores`.
    """

    def __init__(self, groups: Mapping[str, Iterable[int]]) -> None:
        self._groups = {name: list(pids) for name, pids in groups.items()}
        self._groups.setdefault("harness", [os.getpid()])
        self._start: dict[int, int] = {}
        self._sched0: dict[int, tuple[int, int]] = {}
        self._members: dict[str, set[int]] = {}
        self._t0 = 0.0
        self._busy0 = 0
        self._children0 = 0.0

    def _snapshot_members(self) -> None:
        parents = _parent_map()
        own = os.getpid()
        for name, roots in self._groups.items():
            pids = {own} if name == "harness" else descendants(roots, parents)
            self._members.setdefault(name, set()).update(pids)

    def start(self) -> None:
        self._snapshot_members()
        own = os.getpid()
        for pids in self._members.values():
            for pid in pids:
                self._start[pid] = _ticks(pid, with_children=pid != own)
                self._sched0[pid] = _schedstat(pid)
        self._children0 = _children_seconds()
        self._busy0 = _total_busy_ticks()
        self._t0 = time.monotonic()

    def stop(self) -> CpuWindow:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        busy = _total_busy_ticks() - self._busy0
        self._snapshot_members()  # include processes that appeared meanwhile (h2load)
        cores: dict[str, float] = {}
        waits: dict[str, RunQueueWait] = {}
        own = os.getpid()
        ours = 0.0
        for name, pids in self._members.items():
            used = waited = slices = 0
            for pid in pids:
                now = _ticks(pid, with_children=pid != own)
                used += max(0, now - self._start.get(pid, 0))
                delay, count = _schedstat(pid)
                delay0, count0 = self._sched0.get(pid, (0, 0))
                waited += max(0, delay - delay0)
                slices += max(0, count - count0)
            ours += used / CLK_TCK
            cores[name] = used / CLK_TCK / elapsed
            if name != "harness":
                waits[name] = RunQueueWait(waited / 1e6 / elapsed, waited / 1e3 / max(slices, 1))
        reaped = _children_seconds() - self._children0
        cores["loadgen"] = reaped / elapsed
        ours += reaped
        foreign = max(0.0, busy / CLK_TCK - ours) / elapsed
        return CpuWindow(elapsed, cores, foreign, waits)


def foreign_load(seconds: float = 1.0) -> float:
    """Cores used by everything except this process over `seconds` (machine quietness)."""
    own0, busy0 = _ticks(os.getpid()), _total_busy_ticks()
    time.sleep(seconds)
    own1, busy1 = _ticks(os.getpid()), _total_busy_ticks()
    return max(0, (busy1 - busy0) - (own1 - own0)) / CLK_TCK / seconds


def wait_quiet(
    *, threshold: float = 0.25, max_wait: float = 60.0, log: Callable[[str], None] = print
) -> tuple[float, float]:
    """Wait (up to `max_wait` s) until other processes use under `threshold` cores.

    Returns (seconds waited, the last foreign load seen). A busy shared machine is
    reported, not hidden: the caller records both numbers.
    """
    started = time.monotonic()
    load = foreign_load(1.0)
    while load > threshold and time.monotonic() - started < max_wait:
        log(f"  machine busy ({load:.2f} cores used by other processes); waiting")
        load = foreign_load(2.0)
    return time.monotonic() - started, load
