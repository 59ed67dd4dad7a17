"""A small grpc.aio client for what h2load cannot do: many distinct requests.

h2load sends one body per process, so runs that need every request to differ (warming the
verified-token cache with the whole 1,000-token pool; 100,000 distinct subjects for the
Redis-memory and RSS measurements) use this driver instead. It is not used for any
throughput or latency figure: its own ceiling (~3,000 calls/s on one core here, below a
sidecar's) would be measured instead of the sidecar's. Requests are pre-serialized
and sent as bytes (no protobuf work on the client side); every answer is checked.

Also `call_once`, the correctness check run against every configuration before load.

`drive_in_processes` runs the driver in other processes (`python -m bench.driver`), each
sending its share of the bodies from a file, so several drivers can load one server past
one driver's ceiling; each can stop at a deadline (the bench's time budget).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from bench.procs import Procs


@dataclass
class DriveResult:
    sent: int = 0
    ok: int = 0
    bad: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_problem: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def _channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


async def _drive(
    address: str,
    method: str,
    bodies: Iterator[bytes],
    check: Callable[[bytes], str | None],
    concurrency: int,
    channels: int,
    seconds: float | None = None,
) -> DriveResult:
    result = DriveResult()
    chans = [_channel(address) for _ in range(channels)]
    calls = [c.unary_unary(method) for c in chans]
    deadline = None if seconds is None else time.monotonic() + seconds

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        for body in bodies:  # a shared iterator: each body is sent once
            if deadline is not None and time.monotonic() > deadline:
                result.extra["stopped_at_deadline"] = True  # the rest are never sent
                return
            result.sent += 1
            try:
                answer = await call(body, timeout=10)
            except grpc.aio.AioRpcError as exc:
                result.errors += 1
                result.first_problem = result.first_problem or f"{exc.code().name}: {exc.details()}"
                continue
            problem = check(answer)
            if problem is None:
                result.ok += 1
            else:
                result.bad += 1
                result.first_problem = result.first_problem or problem

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        result.seconds = time.perf_counter() - started
        for chan in chans:
            await chan.close()
    return result


def drive(
    address: str,
    method: str,
    bodies: Iterable[bytes],
    check: Callable[[bytes], str | None],
    *,
    concurrency: int = 32,
    channels: int = 2,
    seconds: float | None = None,
) -> DriveResult:
    """Send every body once (`concurrency` in flight); check every answer. With `seconds`,
    stop sending after that long (`extra["stopped_at_deadline"]`; `sent` says how many)."""
    return asyncio.run(
        _drive(
            address,
            method,
            iter(bodies),
            check,
            concurrency=concurrency,
            channels=channels,
            seconds=seconds,
        )
    )


def call_once(address: str, method: str, body: bytes, *, timeout: float = 10.0) -> bytes:
    """One call with the sync API (the correctness check before each load)."""
    with grpc.insecure_channel(address) as chan:
        answer: bytes = chan.unary_unary(method)(body, timeout=timeout)
        return answer


# --- answer checks --------------------------------------------------------------------------


def check_allowed(answer: bytes) -> str | None:
    from envoy.service.auth.v3 import external_auth_pb2

    response = external_auth_pb2.CheckResponse.FromString(answer)
    if response.status.code != 0 or not response.HasField("ok_response"):
        denied = response.denied_response
        return f"not allowed: grpc status {response.status.code}, http {denied.status.code}"
    return None


def check_rate_ok(answer: bytes) -> str | None:
    from envoy.service.ratelimit.v3 import rls_pb2

    response = rls_pb2.RateLimitResponse.FromString(answer)
    if response.overall_code != rls_pb2.RateLimitResponse.OK:
        return f"overall_code {response.overall_code}"
    if response.HasField("dynamic_metadata") and response.dynamic_metadata.fields:
        decision = response.dynamic_metadata.fields.get("decision")
        if decision is not None and decision.string_value != "ok":
            return f"decision {decision.string_value}"  # e.g. a failure-mode answer
    return None


CHECKS: dict[str, Callable[[bytes], str | None]] = {
    "allowed": check_allowed,
    "rate_ok": check_rate_ok,
}


# --- in other processes -----------------------------------------------------------------------

_LENGTH = struct.Struct(">I")


def write_bodies(paths: Sequence[Path], bodies: Iterable[bytes]) -> int:
    """Deal the bodies round robin into the files (each record: 4-byte length, body)."""
    handles = [path.open("wb") for path in paths]
    count = 0
    try:
        for count, body in enumerate(bodies, 1):
            out = handles[(count - 1) % len(handles)]
            out.write(_LENGTH.pack(len(body)))
            out.write(body)
    finally:
        for handle in handles:
            handle.close()
    return count


def read_bodies(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while header := source.read(_LENGTH.size):
            (size,) = _LENGTH.unpack(header)
            yield source.read(size)


def drive_in_processes(
    procs: Procs,
    name: str,
    *,
    address: str,
    method: str,
    bodies: Iterable[bytes],
    check: str,
    work: Path,
    processes: int = 1,
    concurrency: int = 64,
    seconds: float | None = None,
    timeout: float = 600.0,
) -> DriveResult:
    """Deal the bodies into `processes` files, run one driver process per file, and merge
    their results. With `seconds`, each stops sending after that long (the bench's time
    budget); a process still running after `timeout` is stopped and the drive fails."""
    work.mkdir(parents=True, exist_ok=True)
    shards = [work / f"{name}-{i}.bodies" for i in range(processes)]
    write_bodies(shards, bodies)
    children, outs = [], []
    started = time.monotonic()
    try:
        for i, shard in enumerate(shards):
            out = work / f"{name}-{i}.json"
            out.unlink(missing_ok=True)
            args = ["-m", "bench.driver", "--address", address, "--method", method]
            args += ["--bodies", str(shard), "--check", check, "--out", str(out)]
            args += ["--concurrency", str(concurrency)]
            if seconds is not None:
                args += ["--seconds", f"{max(seconds, 1.0):.1f}"]
            children.append(procs.python(f"{name}-{i}", args))
            outs.append(out)
        deadline = started + timeout
        for child in children:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for child in children:
            procs.stop(child)  # a no-op for those that ended
    merged = DriveResult(seconds=time.monotonic() - started)
    for out, child in zip(outs, children, strict=True):
        if child.returncode != 0 or not out.exists():
            raise RuntimeError(f"driver process {child.pid} failed ({child.returncode})")
        part = DriveResult(**json.loads(out.read_text()))
        merged.sent += part.sent
        merged.ok += part.ok
        merged.bad += part.bad
        merged.errors += part.errors
        merged.first_problem = merged.first_problem or part.first_problem
        if part.extra.get("stopped_at_deadline"):
            merged.extra["stopped_at_deadline"] = True
    merged.extra["processes"] = len(children)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.driver")
    parser.add_argument("--address", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--check", choices=sorted(CHECKS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, help="stop sending after this long")
    args = parser.parse_args(argv)
    result = drive(
        args.address,
        args.method,
        read_bodies(args.bodies),
        CHECKS[args.check],
        concurrency=args.concurrency,
        seconds=args.seconds,
    )
    args.out.write_text(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
