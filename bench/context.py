"""What every section of a bench run shares: work directory, processes, keys, Redis, budget."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.procs import Procs, free_port, port_open, threads, wait_until
from devstack.idp_keys import IdpKeys

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_NICE = -10
REDIS_RT_PRIORITY = 1  # the lowest real-time priority: above every ordinary thread


@dataclass(frozen=True)
class Timing:
    """Fixed durations and counts; `SMOKE` shrinks every one of them."""

    warmup_s: float = 0.5  # before every measured window
    edge_rounds: int = 5  # alternating rounds over the edge configurations
    edge_saturation_s: float = 3.0  # one configuration's load in one round
    half_rate_s: float = 4.0  # the fixed-rate load at half of a configuration's saturation
    exact_burst: int = 300  # the one key's burst in the exactness check
    sidecar_rounds: int = 3  # alternating rounds over the sidecars alone
    sidecar_saturation_s: float = 2.0
    pool_size: int = 1000  # distinct tokens warmed into the authz cache (sidecar rows)
    distinct_subjects: int = 100_000  # footprint: buckets and RSS
    command_count_calls: int = 5_000  # footprint: Redis commands per call
    clients: int = 10  # h2load processes (distinct tokens or bodies) per load
    conns: int = 2  # connections per h2load process
    streams: int = 4  # streams per connection at saturation, sidecars alone
    edge_streams: int = 1  # the same through Envoy (see bench.edge: sidecar timeouts)
    fixed_streams: int = 16  # streams per connection at a fixed rate (never the limit)
    validation_rounds: int = 1000  # body: validations per validator figure
    body_rounds: int = 4  # body: alternating rounds over the routes with and without a schema
    credential_rounds: int = 4  # credentials: alternating rounds of a JWT and an API key


SMOKE = Timing(
    warmup_s=0,
    edge_rounds=2,
    edge_saturation_s=1,
    half_rate_s=1,
    exact_burst=20,
    sidecar_rounds=1,
    sidecar_saturation_s=1,
    pool_size=20,
    distinct_subjects=300,
    command_count_calls=200,
    clients=2,
    conns=1,
    fixed_streams=8,
    validation_rounds=2,
    body_rounds=2,
    credential_rounds=2,
)


@dataclass
class RedisProc:
    port: int
    url: str
    client: redis.Redis
    pid: int

    def commandstats(self) -> dict[str, int]:
        """calls per command (lowercase), from INFO commandstats."""
        info: dict[str, Any] = self.client.info("commandstats")
        out: dict[str, int] = {}
        for key, value in info.items():
            name = re.sub(r"^cmdstat_", "", key)
            out[name] = int(value["calls"]) if isinstance(value, dict) else 0
        return out


@dataclass
class Ctx:
    work: Path
    procs: Procs
    keys: IdpKeys
    timing: Timing
    deadline: float
    redis: RedisProc | None = None
    notes: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def out_of_time(self, needed: float) -> bool:
        """True (and noted) when a step needing `needed` s would overrun the budget."""
        if self.remaining() >= needed:
            return False
        self.notes.append(f"skipped a step needing ~{needed:.0f} s: time budget exhausted")
        return True

    def dir(self, *parts: str) -> Path:
        path = self.work.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start_redis(self) -> RedisProc:
        port = free_port()
        data = self.dir("redis")
        proc = self.procs.spawn(
            "redis",
            [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(data),
            ],
        )  # fmt: skip
        if not wait_until(lambda: port_open(port), timeout=10):
            raise RuntimeError("redis-server did not start")
        self._favour(proc.pid)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        wait_until(lambda: bool(_ping(client)), timeout=10)
        self.redis = RedisProc(port, f"redis://127.0.0.1:{port}/0", client, proc.pid)
        return self.redis

    def _favour(self, pid: int) -> None:
        """Redis stands for a server with CPU of its own. Here it shares 2 cores with the
        sidecars and 10 h2load processes; at its default priority it sat runnable but off
        the CPU for 0.6-2.7 ms per timeslice (scheduler `run_delay`, 500-750 ms in each
        second of a 2-worker load), and the rate limiter's 10 ms timeouts then answered
        with the failure mode: the run measured the crowding, not the limiter.

        `nice` cannot fix that here: with CONFIG_SCHED_AUTOGROUP each session (every
        process the bench spawns leads its own) is one scheduling group, and nice only
        ranks threads inside their group. So every Redis thread gets SCHED_FIFO: it runs
        as soon as it has work (measured: 1.4-2 µs of waiting per timeslice). Redis uses
        0.1-0.3 cores, and the kernel's real-time throttling caps it below a whole core
        in any case. Without the privilege, Redis's autogroup and threads get
        nice -10 instead, which only reduces the waiting, and the notes say so."""
        tids = threads(pid)
        try:
            for tid in tids:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(REDIS_RT_PRIORITY))
        except OSError as exc:
            self.notes.append(
                f"redis-server could not get SCHED_FIFO ({exc.strerror}): nice "
                f"{REDIS_NICE} instead, and late replies may count as failure-mode answers"
            )
            self._nice(pid, tids)
        else:
            self.notes.append(
                f"redis-server runs SCHED_FIFO at priority {REDIS_RT_PRIORITY} (see bench.context)"
            )

    def _nice(self, pid: int, tids: list[int]) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(REDIS_NICE))
        try:
            for tid in tids:
                os.setpriority(os.PRIO_PROCESS, tid, REDIS_NICE)
        except OSError as exc:
            self.notes.append(f"redis-server keeps the default priority ({exc.strerror})")


def _ping(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(client.ping())
    return False


def describe(exc: BaseException) -> str:
    """One line for the notes: a gRPC error's code and details, else the first line."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"gRPC {code()}: {details()}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


@contextlib.contextmanager
def stage(ctx: Ctx, title: str) -> Iterator[None]:
    started = time.monotonic()
    ctx.log(f"[bench] {title} ...")
    try:
        yield
    finally:
        ctx.log(f"[bench] {title}: {time.monotonic() - started:.1f} s")
