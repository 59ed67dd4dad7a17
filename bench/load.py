"""Load from h2load (nghttp2-client): gRPC as framed HTTP/2 POSTs, HTTPS for the edge.

A gRPC unary call is an HTTP/2 POST with `content-type: application/grpc`, `te: trailers`
and a body of the 5-byte frame header (flag 0, 4-byte big-endian length) and the
serialized request. h2load sends one body file for every request of a process, so a load
with several distinct requests runs several h2load processes side by side, each with its
own body (and/or headers), all for the same duration; their rates add up and their
per-request logs (`--log-file`) are merged for the latency percentiles.

Saturation: every process keeps `streams` requests in flight on each of its `conns`
connections. Fixed rate: `--rps` per connection, so the processes together offer the
requested rate; latency is measured from each request's start to the end of its response
(h2load's log), only over the measured window (after `--warm-up-time`).

h2load counts an HTTP 200 as a success even when the gRPC status in the trailers is an
error, so every configuration is checked for the right answer with a real client before
it is loaded (see `bench.sidecars` and `bench.edge`).
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import CpuMeter, CpuWindow, Procs

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass(frozen=True)
class Client:
    """One h2load process: what it sends."""

    url: str
    body: Path | None = None  # gRPC: the framed request
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shape:
    """How hard: connections and streams per process; None rate = saturation."""

    conns: int = 1
    streams: int = 8
    duration_s: float = 5.0
    warmup_s: float = 1.0
    rate: float | None = None  # total requests/second over all processes
    requests: int | None = None  # a fixed count over all processes instead of a duration


@dataclass
class Latency:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_of(durations_us: Sequence[int]) -> Latency:
    values = sorted(durations_us)
    n = len(values)
    mean = sum(values) / n / 1000 if n else math.nan
    return Latency(
        count=n,
        p50_ms=percentile(values, 50) / 1000,
        p90_ms=percentile(values, 90) / 1000,
        p99_ms=percentile(values, 99) / 1000,
        p999_ms=percentile(values, 99.9) / 1000,
        max_ms=(values[-1] / 1000) if n else math.nan,
        mean_ms=mean,
    )


@dataclass
class LoadResult:
    rate_rps: float  # achieved, summed over processes
    offered_rps: float | None  # None at saturation
    requests: int
    succeeded: int  # h2load: 2xx answers
    failed: int  # streams that got no answer at all (reset, timeout): status -1 in the log
    statuses: dict[str, int]
    latency: Latency
    cpu: CpuWindow | None
    commands: list[str] = field(default_factory=list)
    probe_delta: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rate_rps": round(self.rate_rps, 1),
            "offered_rps": self.offered_rps,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "statuses": self.statuses,
            "latency": self.latency.as_dict(),
            "cpu": self.cpu.as_dict() if self.cpu else None,
            "command": self.commands[0] if self.commands else "",
            "processes": len(self.commands),
        }
        if self.probe_delta is not None:
            out["probe_delta"] = {k: v for k, v in self.probe_delta.items() if v}
        return out


_FINISHED = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)


def command(client: Client, shape: Shape, log_file: Path) -> list[str]:
    """The h2load command line for one client (`shape.requests` is per client here)."""
    argv = [
        H2LOAD,
        "-t", "1",
        "-c", str(shape.conns),
        "-m", str(shape.streams),
        "--log-file", str(log_file),
    ]  # fmt: skip
    if shape.requests is not None:
        argv += ["-n", str(shape.requests)]
    else:
        argv += ["-D", _ms(shape.duration_s), "--warm-up-time", _ms(shape.warmup_s)]
    if client.body is not None:
        argv += ["-d", str(client.body)]
    for header in client.headers:
        argv += ["-H", header]
    return [*argv, client.url]


def _ms(seconds: float) -> str:
    """An h2load duration (a bare number would be whole seconds)."""
    return f"{round(seconds * 1000)}ms"


def run(
    procs: Procs,
    clients: Sequence[Client],
    shape: Shape,
    *,
    work_dir: Path,
    cpu_groups: dict[str, list[int]] | None = None,
    probe: Callable[[], dict[str, int]] | None = None,
) -> LoadResult:
    """Run one h2load per client at once, for the same duration; merge their results.

    `probe` (e.g. Redis's command counts) is read when the warm-up ends and again when the
    load ends; the difference is in `LoadResult.probe_delta`: what the server did in about
    the measured window.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    per_conn_rps = None
    if shape.rate is not None:
        per_conn_rps = shape.rate / (len(clients) * shape.conns)
    per_client = shape
    if shape.requests is not None:
        count = max(shape.conns, shape.requests // len(clients))
        per_client = Shape(shape.conns, shape.streams, rate=shape.rate, requests=count)
    running: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    commands: list[str] = []
    meter = CpuMeter(cpu_groups or {})
    meter.start()
    try:
        for index, client in enumerate(clients):
            log_file = work_dir / f"h2load-{index}.tsv"
            out_file = work_dir / f"h2load-{index}.out"
            log_file.unlink(missing_ok=True)
            out_file.unlink(missing_ok=True)
            argv = command(client, per_client, log_file)
            if per_conn_rps is not None:
                argv[-1:-1] = ["--rps", f"{per_conn_rps:g}"]
            commands.append(shlex.join(argv))
            proc = procs.spawn(f"h2load-{index}", argv, stdout=out_file)
            running.append((proc, log_file, out_file))
        if probe is not None:
            time.sleep(shape.warmup_s if shape.requests is None else 0)
            probe_before = probe()
        deadline = time.monotonic() + (
            shape.duration_s + shape.warmup_s + 30 if shape.requests is None else 120
        )
        for proc, _, _ in running:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                procs.stop(proc, grace=2)
    finally:
        for proc, _, _ in running:
            procs.stop(proc, grace=2)
    cpu = meter.stop()
    probe_delta: dict[str, int] | None = None
    if probe is not None:
        after = probe()
        probe_delta = {k: v - probe_before.get(k, 0) for k, v in after.items()}
    rate = 0.0
    requests = succeeded = failed = 0
    durations: list[int] = []
    statuses: Counter[str] = Counter()
    for _proc, log_file, out_file in running:
        text = out_file.read_text(errors="replace") if out_file.exists() else ""
        m = _FINISHED.search(text)
        if m:
            rate += float(m.group(1))
        r = _REQUESTS.search(text)
        if r:
            requests += int(r.group(3))
            succeeded += int(r.group(4))
        if log_file.exists():
            for line in log_file.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                statuses[parts[1]] += 1
                if parts[1] == "-1":
                    failed += 1
                else:
                    durations.append(int(parts[2]))
    return LoadResult(
        rate_rps=rate,
        offered_rps=shape.rate,
        requests=requests,
        succeeded=succeeded,
        failed=failed,
        statuses=dict(sorted(statuses.items())),
        latency=latency_of(durations),
        cpu=cpu,
        commands=commands,
        probe_delta=probe_delta,
    )


def version() -> str:
    try:
        out = subprocess.run(  # noqa: S603
            [H2LOAD, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return "missing"
    return out.strip().split()[-1] if out.strip() else "unknown"
