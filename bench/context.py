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

from bench.procs import Procs, free_port, port_open, wait_until
from devstack.idp_keys import IdpKeys

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_NICE = -10


@dataclass(frozen=True)
class Timing:
    """Fixed durations and counts; `smoke` shrinks every one of them."""

    saturation_s: float = 2.5
    fixed_s: float = 2.0
    warmup_s: float = 1.0
    edge_saturation_s: float = 4.0
    edge_fixed_s: float = 3.0
    sidecar_fixed_rps: int = 1000
    edge_rates: tuple[int, ...] = (500, 1000)
    pool_size: int = 1000
    distinct_subjects: int = 100_000
    command_count_calls: int = 20_000
    profile_calls: int = 5_000
    clients: int = 10  # h2load processes (distinct bodies) per load
    conns: int = 2  # connections per h2load process
    streams: int = 4  # streams per connection at saturation
    edge_streams: int = 1  # the same through Envoy (see bench.edge: sidecar timeouts)
    fixed_streams: int = 16  # streams per connection at a fixed rate (never the limit)
    cost_s: float = 1.5  # one load of a round (bench.rounds)
    rounds_warmup_s: float = 0.5  # before each load of a round (the servers are warm)


SMOKE = Timing(
    saturation_s=1,
    fixed_s=1,
    warmup_s=0,
    edge_saturation_s=1,
    edge_fixed_s=1,
    sidecar_fixed_rps=200,
    edge_rates=(100,),
    pool_size=20,
    distinct_subjects=300,
    command_count_calls=200,
    profile_calls=300,
    clients=2,
    conns=1,
    fixed_streams=8,
    cost_s=1,
    rounds_warmup_s=0,
)


@dataclass
class RedisProc:
    port: int
    url: str
    client: redis.Redis

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
    smoke: bool
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
        self.redis = RedisProc(port, f"redis://127.0.0.1:{port}/0", client)
        return self.redis

    def _favour(self, pid: int) -> None:
        """Redis stands for a server with CPU of its own. Here it shares 2 cores with the
        sidecars and 10 h2load processes, and the scheduler's fair share (a slice among a
        dozen busy processes) delays its replies past the rate limiter's 10 ms timeout:
        the failure mode then answers, and the run measures the crowding, not the limiter.
        A higher priority gives it the 0.1-0.3 cores it uses without waiting in line."""
        try:
            os.setpriority(os.PRIO_PROCESS, pid, REDIS_NICE)
        except OSError as exc:
            self.notes.append(f"redis-server keeps the default priority ({exc.strerror})")
        else:
            self.notes.append(f"redis-server runs at nice {REDIS_NICE} (see bench.context)")


def _ping(client: redis.Redis) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(client.ping())
    return False


@contextlib.contextmanager
def stage(ctx: Ctx, title: str) -> Iterator[None]:
    started = time.monotonic()
    ctx.log(f"[bench] {title} ...")
    try:
        yield
    finally:
        ctx.log(f"[bench] {title}: {time.monotonic() - started:.1f} s")
