"""Profiles of the sidecars under load: cProfile of the event-loop thread, per request.

py-spy and pyinstrument are not installed here (and the bench installs nothing), so the
sidecar runs under `bench.profiled` (cProfile switched on and off by signals around the
load only). The table lists the top functions by own time ("self") and by inclusive time
("cum"), each divided by the number of requests served while profiling: microseconds per
request. cProfile's own overhead inflates functions with many small calls, so compare
entries with each other, and the profiled rate with the unprofiled one.
"""

from __future__ import annotations

import os
import pstats
import signal
import time
from pathlib import Path
from typing import Any

from bench import sidecars
from bench.context import Ctx, stage
from bench.load import Shape, run
from bench.procs import REPO
from bench.sidecars import RL_PATH, Material, Row

TOP = 25
# Waiting for I/O in the event loop: not work, left out of the shares.
IDLE = {"<method 'poll' of 'select.epoll' objects>"}


def _short(filename: str) -> str:
    if filename.startswith(str(REPO)):
        return filename[len(str(REPO)) + 1 :]
    marker = "site-packages/"
    if marker in filename:
        return filename.split(marker, 1)[1]
    if "/lib/python" in filename:
        return "stdlib/" + filename.rsplit("/", 1)[-1]
    return filename


def _name(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func  # a built-in / C function
    return f"{_short(filename)}:{line}({func})"


def summarize(path: Path, requests: int) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = max((ct for _cc, _nc, _tt, ct, _callers in raw.values()), default=0.0)
    idle = sum(raw[k][2] for k in raw if _name(k) in IDLE)
    own_total = sum(tt for _cc, _nc, tt, _ct, _callers in raw.values()) - idle
    per = max(requests, 1)

    def entry(key: tuple[str, int, str]) -> dict[str, Any]:
        _cc, nc, tt, ct, _ = raw[key]
        return {
            "function": _name(key),
            "calls_per_request": round(nc / per, 2),
            "self_us_per_request": round(tt / per * 1e6, 2),
            "cum_us_per_request": round(ct / per * 1e6, 2),
            "self_share": round(tt / own_total, 4) if own_total else 0.0,
        }

    busy = [k for k in raw if _name(k) not in IDLE]
    by_self = sorted(busy, key=lambda k: raw[k][2], reverse=True)[:TOP]
    by_cum = sorted(busy, key=lambda k: raw[k][3], reverse=True)[:TOP]
    return {
        "requests": requests,
        "idle_seconds": round(idle, 3),
        "profiled_seconds": round(own_total, 3),
        "us_per_request_profiled": round(own_total / per * 1e6, 1),
        "max_cum_seconds": round(total, 3),
        "top_self": [entry(k) for k in by_self],
        "top_cum": [entry(k) for k in by_cum],
    }


def profile_row(ctx: Ctx, row: Row, material: Material) -> dict[str, Any]:
    out = ctx.dir("profiles") / f"{row.name}.prof"
    out.unlink(missing_ok=True)
    server = sidecars.start_server(ctx, row, material, profile_out=out)
    try:
        sidecars.make_ready(server, row, material)
        clients = sidecars.load_clients(server, row, sidecars.bodies_for(row, material))
        t = ctx.timing
        shape = Shape(t.conns, t.streams, requests=t.profile_calls)
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.2)
        result = run(ctx.procs, clients, shape, work_dir=ctx.dir("runs", f"profile-{row.name}"))
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 20
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # let dump_stats finish writing
    finally:
        sidecars.stop_server(ctx, server)
    if not out.exists():
        raise RuntimeError(f"no profile written for {row.name}")
    summary = summarize(out, result.requests)
    summary["row"] = row.name
    summary["label"] = row.label
    summary["profiled_rate_rps"] = round(result.rate_rps, 1)
    summary["command"] = server.command
    summary["profile_file"] = str(out.relative_to(ctx.work))
    return summary


def run_section(ctx: Ctx, material: Material) -> dict[str, Any]:
    targets = [
        Row("floor-w1", "floor: Check returns OK", "floor", 1),
        Row("check-pool-rs256-w1", "Check, RS256 token pool", "authz", 1, "RS256"),
        Row("rl-redis-w1", "ShouldRateLimit, 2 descriptors, Redis", "ratelimit", 1,
            store="redis", method=RL_PATH),
    ]  # fmt: skip
    profiles = []
    for row in targets:
        if ctx.out_of_time(40):
            break
        with stage(ctx, f"profile: {row.name}"):
            try:
                profiles.append(profile_row(ctx, row, material))
            except Exception as exc:
                ctx.notes.append(f"profile {row.name}: failed: {exc}")
    return {"profiles": profiles}
