"""The footprint: Redis commands and memory per bucket; each sidecar's peak RSS.

Both sidecars run here on their default stack, one worker, in plaintext.

Redis cost (the rate-limit sidecar with the `redis-cost` rules):
- commands per ShouldRateLimit: `INFO commandstats` before and after a fixed number of
  2-descriptor calls from h2load (`-n`), every command's delta divided by the calls; the
  sidecar's own health probe (PING once a second) is listed, not hidden;
- memory per bucket: FLUSHALL, then 100,000 calls with 100,000 distinct subjects (from
  two grpc driver processes: h2load cannot vary bodies), then `used_memory` and `DBSIZE`; every key
  is SCANned for its TTL (a key without one would be a leak), and a few keys' own
  `MEMORY USAGE` is sampled.

Peak RSS (`VmHWM` from /proc/PID/status) of each sidecar after 100,000 requests with
100,000 distinct subjects: the rate-limit sidecar of the Redis cost, and the authz
sidecar (one worker, default 10,000-entry verified-token cache, audit on) fed 100,000
distinct EdDSA tokens (pre-minted before the clock starts).

Run side by side, the two took longer than one after the other (291.6 s against 264 s on
2026-11-22: five busy processes on two cores), so they run one after the other.

They run last, and their drives stop sending when the time budget says so: on a slow
machine (the same VM kind has measured 2-3x apart between sessions) `make bench` stays
under 10 minutes and says, in its notes and in the request counts, that it measured fewer
than 100,000 subjects.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import configs, driver
from bench.context import Ctx, describe, stage
from bench.load import GRPC_HEADERS, Client, Shape, grpc_frame, run
from bench.messages import Token, check_request, fast_eddsa_tokens, ratelimit_request
from bench.procs import REPO, free_port, port_open, wait_until
from bench.sidecars import AUTHZ_PATH, RL_PATH, listening_sockets, store_failures


def script_commands() -> set[str]:
    """The Redis commands gcra.lua runs (lowercase), read from the script itself."""
    text = (REPO / "ratelimit_service" / "stores" / "gcra.lua").read_text()
    return {m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", text)}


def memory_status(pid: int) -> dict[str, int]:
    """VmHWM (peak) and VmRSS of a process, in KiB."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def _start(ctx: Ctx, name: str, args: list[str], port: int) -> int:
    log = ctx.dir("logs") / f"{name}.log"
    log.unlink(missing_ok=True)
    proc = ctx.procs.python(name, args, stdout=log)
    if not wait_until(lambda: listening_sockets(port) >= 1, timeout=30):
        raise RuntimeError(f"{name} did not listen; see {log}")
    wait_until(lambda: port_open(port), timeout=5)
    return proc.pid


def _stop(ctx: Ctx, pid: int) -> None:
    for _name, proc in list(ctx.procs.children):
        if proc.pid == pid:
            ctx.procs.stop(proc)


ADDRESSES = 256
DRIVER_PROCESSES = 2  # for the rate limiter's 100,000 calls
# The 100,000-subject drives run last and stop sending when the time budget says so: the
# rate limiter's may use this share of what is left (the authz one, slower per call, the
# rest), after RESERVE_S for what follows them (TTL scan, minting, stopping, writing).
RATELIMIT_SHARE = 0.4
RESERVE_S = 45.0


def _drive_seconds(ctx: Ctx, *, share: float) -> float:
    return max((ctx.remaining() - RESERVE_S) * share, 5.0)


def _note_if_stopped(ctx: Ctx, what: str, drove: driver.DriveResult, wanted: int) -> None:
    if drove.extra.get("stopped_at_deadline"):
        ctx.notes.append(
            f"{what}: stopped by the time budget after {drove.sent:,} of {wanted:,} requests"
            " (a slow machine: the figures are for that many)"
        )


def _rl_bodies(count: int) -> Iterator[bytes]:
    for i in range(count):
        yield ratelimit_request(
            [[("remote_address", f"10.1.0.{i % ADDRESSES}")], [("subject", f"s-{i}")]]
        )


def _cost_bodies(ctx: Ctx) -> list[Path]:
    """One 2-descriptor body per h2load process (address, subject), as `REDIS_COST_RULES`
    expects."""
    out = []
    for i in range(ctx.timing.clients):
        path = ctx.dir("bodies") / f"redis-cost-{i}.bin"
        descriptors = [[("remote_address", f"10.0.0.{i + 1}")], [("subject", f"u{i}")]]
        path.write_bytes(grpc_frame(ratelimit_request(descriptors)))
        out.append(path)
    return out


def redis_and_ratelimit(ctx: Ctx) -> tuple[dict[str, Any], dict[str, Any]]:
    assert ctx.redis is not None
    r = ctx.redis
    t = ctx.timing
    bodies = _cost_bodies(ctx)
    port = free_port()
    cfg_dir = ctx.dir("configs", "redis-cost")
    configs.write_yaml(cfg_dir / "rules" / "edge.yaml", configs.REDIS_COST_RULES)
    settings = configs.ratelimit_settings(
        listen=f"127.0.0.1:{port}", rules_dir=cfg_dir / "rules", redis_url=r.url
    )
    cfg = configs.write_yaml(cfg_dir / "ratelimit.yaml", settings)
    args = ["-m", "ratelimit_service", "serve", "--settings", str(cfg)]
    r.client.flushall()
    pid = _start(ctx, "ratelimit-redis-cost", args, port)
    address = f"127.0.0.1:{port}"
    cost: dict[str, Any] = {"server_command": shlex.join([sys.executable, *args])}
    mem: dict[str, Any] = {}
    try:
        for body in bodies:  # loads the script (SCRIPT LOAD) before counting
            problem = driver.check_rate_ok(
                driver.call_once(address, RL_PATH, body.read_bytes()[5:])
            )
            if problem:
                raise RuntimeError(f"redis-cost: {problem}")
        # Commands per call, from h2load's fixed count of 2-descriptor calls.
        before = r.commandstats()
        started = time.monotonic()
        clients = [Client(f"http://{address}{RL_PATH}", b, GRPC_HEADERS) for b in bodies]
        res = run(
            ctx.procs,
            clients,
            # One stream per connection: below saturation, so no call runs into the 10 ms
            # store timeout (a timed-out call is still counted by Redis).
            Shape(t.conns, 1, requests=t.command_count_calls),
            work_dir=ctx.dir("runs", "redis-cost"),
        )
        seconds = time.monotonic() - started
        after = r.commandstats()
        calls = res.requests
        deltas = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}
        deltas = {k: v for k, v in deltas.items() if v and k != "info"}
        # commandstats also counts the commands a script runs inside Redis; those are the
        # ones gcra.lua calls. Everything else was sent over the wire by the sidecar.
        inside = script_commands()
        sent = {k: v for k, v in deltas.items() if k not in inside}
        in_script = {k: v for k, v in deltas.items() if k in inside}
        per = max(calls, 1)
        cost.update(
            {
                "calls": calls,
                "seconds": round(seconds, 2),
                "sent_by_sidecar": sent,
                "run_inside_script": in_script,
                "sent_per_call": {k: round(v / per, 4) for k, v in sent.items()},
                "inside_script_per_call": {k: round(v / per, 4) for k, v in in_script.items()},
                "round_trips_per_call": round(sum(sent.values()) / per, 4),
                "evalsha_per_call": round(sent.get("evalsha", 0) / per, 4),
                "h2load_command": res.commands[0] if res.commands else "",
            }
        )
        # Memory per bucket, 100,000 distinct subjects.
        r.client.flushall()
        time.sleep(0.2)
        base_info = r.client.info("memory")
        rss_before = memory_status(pid)
        n = t.distinct_subjects
        # Two driver processes: one Python driver's ceiling is below this server's.
        drove = driver.drive_in_processes(
            ctx.procs,
            "driver-ratelimit-memory",
            address=address,
            method=RL_PATH,
            bodies=_rl_bodies(n),
            check="rate_ok",
            work=ctx.dir("runs", "memory"),
            processes=DRIVER_PROCESSES,
            seconds=_drive_seconds(ctx, share=RATELIMIT_SHARE),
        )
        _note_if_stopped(ctx, "Redis memory and rate-limit RSS", drove, n)
        info = r.client.info("memory")
        keys = int(r.client.dbsize())
        ttl_stats = _ttls(r.client)
        sample = [k for k in r.client.scan_iter(count=1000, match="*")][:5]
        mem.update(
            {
                "requests": drove.sent,
                "ok": drove.ok,
                "problems": drove.bad + drove.errors,
                "first_problem": drove.first_problem,
                "driver_seconds": round(drove.seconds, 1),
                "driver_processes": drove.extra.get("processes", 1),
                "keys": keys,
                "used_memory_before": int(base_info["used_memory"]),
                "used_memory_after": int(info["used_memory"]),
                "bytes_per_key": round(
                    (int(info["used_memory"]) - int(base_info["used_memory"])) / max(keys, 1), 1
                ),
                "memory_usage_samples": {
                    k.decode(errors="replace"): int(r.client.memory_usage(k) or 0) for k in sample
                },
                **ttl_stats,
            }
        )
        rss = memory_status(pid)
        ratelimit_rss = {
            "sidecar": "ratelimit",
            "requests": drove.sent,
            "distinct_subjects": n,
            "before_kib": rss_before,
            "after_kib": rss,
            "store": "redis",
        }
    finally:
        _stop(ctx, pid)
    cost["store_failures"] = store_failures(ctx.work / "logs" / "ratelimit-redis-cost.log")
    return {"commands": cost, "memory": mem}, ratelimit_rss


def _ttls(client: Any) -> dict[str, Any]:
    """TTL of every key (pipelined): none may be without one."""
    no_ttl = gone = 0
    total = 0
    low, high = None, None
    batch: list[bytes] = []

    def flush() -> None:
        nonlocal no_ttl, gone, total, low, high
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.pttl(key)
        for ttl in pipe.execute():
            total += 1
            if ttl == -2:  # expired between SCAN and PTTL
                gone += 1
                continue
            if ttl is None or ttl < 0:
                no_ttl += 1
                continue
            low = ttl if low is None else min(low, ttl)
            high = ttl if high is None else max(high, ttl)
        batch.clear()

    for key in client.scan_iter(count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            flush()
    if batch:
        flush()
    return {
        "keys_scanned": total,
        "keys_without_ttl": no_ttl,
        "keys_expired_while_scanning": gone,
        "ttl_min_s": round(low / 1000, 1) if low is not None else None,
        "ttl_max_s": round(high / 1000, 1) if high is not None else None,
    }


def authz_rss(ctx: Ctx) -> dict[str, Any]:
    """The authz sidecar fed distinct EdDSA tokens (one driver process: the sidecar, not
    the driver, is the bound here)."""
    n = ctx.timing.distinct_subjects
    started = time.perf_counter()
    tokens: list[Token] = list(fast_eddsa_tokens(ctx.keys, n, prefix="rss-user-"))
    mint_s = time.perf_counter() - started
    port = free_port()
    cfg_dir = ctx.dir("configs", "authz-rss")
    audit = ctx.dir("audit") / "authz-rss.jsonl"
    audit.unlink(missing_ok=True)
    data = configs.authz_config(
        listen=f"127.0.0.1:{port}", jwks_file=ctx.keys.jwks_file, audit_file=audit
    )
    cfg = configs.write_yaml(cfg_dir / "authz.yaml", data)
    args = ["-m", "authz_service", "serve", "--config", str(cfg)]
    pid = _start(ctx, "authz-rss", args, port)
    try:
        bodies = (
            check_request(method="GET", path=f"/api/v1/users/{tok.subject}", token=tok.jwt)
            for tok in tokens
        )
        before = memory_status(pid)
        drove = driver.drive_in_processes(
            ctx.procs,
            "driver-authz-rss",
            address=f"127.0.0.1:{port}",
            method=AUTHZ_PATH,
            bodies=bodies,
            check="allowed",
            work=ctx.dir("runs", "authz-rss"),
            seconds=_drive_seconds(ctx, share=1.0),
        )
        _note_if_stopped(ctx, "authz RSS", drove, n)
        time.sleep(0.5)  # let the audit writer drain
        after = memory_status(pid)
    finally:
        _stop(ctx, pid)
    return {
        "sidecar": "authz",
        "requests": drove.sent,
        "allowed": drove.ok,
        "problems": drove.bad + drove.errors,
        "first_problem": drove.first_problem,
        "distinct_subjects": n,
        "token_alg": "EdDSA",
        "mint_seconds": round(mint_s, 1),
        "driver_seconds": round(drove.seconds, 1),
        "verified_token_cache_size": 10_000,
        "before_kib": before,
        "after_kib": after,
        "audit_lines": sum(1 for _ in audit.open("rb")) if audit.exists() else 0,
        "server_command": shlex.join([sys.executable, *args]),
    }


def run_sections(ctx: Ctx) -> tuple[dict[str, Any], dict[str, Any]]:
    redis_cost: dict[str, Any] = {}
    rss: list[dict[str, Any]] = []
    with stage(ctx, "footprint: Redis cost and rate-limit sidecar RSS"):
        if not ctx.out_of_time(60):
            try:
                redis_cost, rl_rss = redis_and_ratelimit(ctx)
                rss.append(rl_rss)
            except Exception as exc:
                ctx.notes.append(f"redis cost: failed: {describe(exc)}")
    with stage(ctx, "footprint: authz sidecar RSS"):
        if not ctx.out_of_time(60):
            try:
                rss.append(authz_rss(ctx))
            except Exception as exc:
                ctx.notes.append(f"authz RSS: failed: {describe(exc)}")
    return redis_cost, {"sidecars": rss}
