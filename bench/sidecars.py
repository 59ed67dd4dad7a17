"""Section 1: each sidecar's ceiling, next to a floor server, in one run.

Every row starts one server (`floor`, the authz sidecar or the rate-limit sidecar, the real
`python -m ... serve` command), checks that each request body gets the intended answer,
then loads it with h2load twice: at saturation and at a fixed rate. Ratios are taken to
the floor measured in the same run with the same worker count and the same client shape.

Load shape: `clients` h2load processes, each with its own request body (a distinct token
or subject), `conns` connections each; `streams` requests in flight per connection at
saturation, a total of `sidecar_fixed_rps` at the fixed rate.

Token pool: h2load sends one body per process, so a load carries `clients` distinct tokens
at a time. Before the load, the whole pool (1,000 distinct tokens per algorithm) is sent
once through the grpc driver, so the verified-token cache holds all 1,000 (as it would
after a minute of real traffic), and the loaded tokens are drawn from the pool. A pool
smaller than the cache (default 10,000) is all cache hits after first use, with 10 or
1,000 distinct tokens alike. "Fresh token" rows set `verified_token_cache_size: 0`: every
request parses the token and checks its signature -- the crypto cost, measured with the
same bodies.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import configs, driver
from bench.context import Ctx, stage
from bench.load import GRPC_HEADERS, Client, LoadResult, Shape, grpc_frame, run
from bench.messages import Token, check_request, mint_pool, ratelimit_request
from bench.procs import free_port, port_open, wait_until

AUTHZ_PATH = "/envoy.service.auth.v3.Authorization/Check"
RL_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    kind: str  # floor | authz | ratelimit
    workers: int = 1
    alg: str = "RS256"  # authz rows: the pool's algorithm
    cache_size: int = 10_000  # authz rows
    store: str = "redis"  # ratelimit rows: redis | memory
    method: str = AUTHZ_PATH
    audit: bool = True  # authz rows
    # Traces and metrics exported over OTLP, this share of traces sampled (None: off).
    sampled: float | None = None
    burn_us: float = 0  # floor rows: Python CPU spent per call before answering
    redis_ping: bool = False  # floor rows: one Redis round trip per call before answering

    @property
    def uses_redis(self) -> bool:
        """Does a call to this row's server reach the bench's Redis?"""
        return self.redis_ping or (self.kind == "ratelimit" and self.store == "redis")


def _all_rows(w: int) -> dict[str, Row]:
    sfx = f"-w{w}"
    rows = [
        Row(f"floor{sfx}", "floor: Check returns OK", "floor", w),
        Row(f"floor-rl{sfx}", "floor: ShouldRateLimit returns OK", "floor", w, method=RL_PATH),
        Row(f"floor-burn20{sfx}", "floor + 20 µs of Python CPU per call", "floor", w,
            burn_us=20),
        Row(f"floor-redis{sfx}", "floor + one Redis round trip (PING) per call", "floor", w,
            redis_ping=True),
        Row(f"check-pool-rs256{sfx}", "Check, RS256 token pool", "authz", w, "RS256"),
        Row(f"check-pool-eddsa{sfx}", "Check, EdDSA token pool", "authz", w, "EdDSA"),
        Row(f"check-pool-rs256-noaudit{sfx}", "Check, RS256 token pool, audit off", "authz", w,
            "RS256", audit=False),
        Row(f"check-pool-rs256-otel{sfx}", "Check, RS256 token pool, telemetry on", "authz",
            w, "RS256", sampled=1.0),
        Row(f"check-pool-rs256-otel0{sfx}",
            "Check, RS256 token pool, telemetry on, Envoy samples none", "authz", w, "RS256",
            sampled=0.0),
        Row(f"check-pool-rs256-otel1{sfx}",
            "Check, RS256 token pool, telemetry on, Envoy samples 1%", "authz", w, "RS256",
            sampled=0.01),
        Row(f"check-pool-rs256-otel10{sfx}",
            "Check, RS256 token pool, telemetry on, Envoy samples 10%", "authz", w, "RS256",
            sampled=0.1),
        Row(f"check-fresh-rs256{sfx}", "Check, fresh RS256 (no cache)", "authz", w, "RS256", 0),
        Row(f"check-fresh-eddsa{sfx}", "Check, fresh EdDSA (no cache)", "authz", w, "EdDSA", 0),
        Row(f"rl-redis{sfx}", "ShouldRateLimit, 2 descriptors, Redis", "ratelimit", w,
            store="redis", method=RL_PATH),
        Row(f"rl-redis-otel{sfx}", "ShouldRateLimit, 2 descriptors, Redis, telemetry on",
            "ratelimit", w, store="redis", method=RL_PATH, sampled=1.0),
        Row(f"rl-redis-otel0{sfx}",
            "ShouldRateLimit, 2 descriptors, Redis, telemetry on, Envoy samples none",
            "ratelimit", w, store="redis", method=RL_PATH, sampled=0.0),
        Row(f"rl-redis-otel1{sfx}",
            "ShouldRateLimit, 2 descriptors, Redis, telemetry on, Envoy samples 1%",
            "ratelimit", w, store="redis", method=RL_PATH, sampled=0.01),
        Row(f"rl-redis-otel10{sfx}",
            "ShouldRateLimit, 2 descriptors, Redis, telemetry on, Envoy samples 10%",
            "ratelimit", w, store="redis", method=RL_PATH, sampled=0.1),
        Row(f"rl-memory{sfx}", "ShouldRateLimit, 2 descriptors, memory store", "ratelimit", w,
            store="memory", method=RL_PATH),
        Row(f"floor{sfx}-end", "floor: Check returns OK (again, last)", "floor", w),
    ]  # fmt: skip
    return {r.name.replace(sfx, ""): r for r in rows}


# Which rows each run measures, in order. The targets' ratios come from bench.rounds
# (the floor and the judged rows in alternating rounds), the "-otel" rows from
# bench.telemetry_cost; this table gives each row's saturation and fixed-rate latency.
FULL_PLAN = {
    1: ["floor", "floor-rl", "floor-burn20", "check-pool-rs256", "check-pool-eddsa",
        "check-fresh-rs256", "check-fresh-eddsa", "rl-redis", "rl-memory"],
    2: ["floor", "check-pool-rs256", "check-pool-eddsa", "rl-redis"],
}  # fmt: skip
SMOKE_PLAN = {
    1: ["floor", "floor-burn20", "floor-redis", "check-pool-rs256", "check-fresh-eddsa",
        "rl-redis", "rl-memory"]
}  # fmt: skip


def row_named(name: str) -> Row:
    """A row by its full name (`check-pool-rs256-w2`)."""
    base, _, workers = name.rpartition("-w")
    return _all_rows(int(workers))[base]


def rows(plan: dict[int, list[str]]) -> list[Row]:
    out: list[Row] = []
    for w, names in plan.items():
        table = _all_rows(w)
        out += [table[n] for n in names]
    return out


@dataclass
class Material:
    """Tokens and request bodies shared by every row."""

    pools: dict[str, list[Token]]
    check_bodies: dict[str, list[Path]]  # alg -> framed CheckRequests (one per client)
    rl_bodies: list[Path]
    jwks_file: Path


def prepare(ctx: Ctx) -> Material:
    t = ctx.timing
    pools: dict[str, list[Token]] = {}
    bodies_dir = ctx.dir("bodies")
    check_bodies: dict[str, list[Path]] = {}
    for alg in ("RS256", "EdDSA"):
        started = time.perf_counter()
        pools[alg] = mint_pool(ctx.keys, alg, t.pool_size, prefix=f"{alg.lower()}-user-")
        ctx.log(f"  minted {t.pool_size} {alg} tokens in {time.perf_counter() - started:.1f} s")
        step = max(1, t.pool_size // t.clients)
        chosen = [pools[alg][i * step] for i in range(t.clients)]
        check_bodies[alg] = []
        for i, token in enumerate(chosen):
            path = bodies_dir / f"check-{alg.lower()}-{i}.bin"
            path.write_bytes(grpc_frame(_check_body(token)))
            check_bodies[alg].append(path)
    rl_bodies = []
    for i in range(t.clients):
        path = bodies_dir / f"ratelimit-{i}.bin"
        body = ratelimit_request([[("remote_address", f"10.0.0.{i + 1}")], [("subject", f"u{i}")]])
        path.write_bytes(grpc_frame(body))
        rl_bodies.append(path)
    return Material(pools, check_bodies, rl_bodies, ctx.keys.jwks_file)


def _check_body(token: Token) -> bytes:
    return check_request(method="GET", path=f"/api/v1/users/{token.subject}", token=token.jwt)


def listening_sockets(port: int) -> int:
    """How many LISTEN sockets are bound to 127.0.0.1:port (one per SO_REUSEPORT worker)."""
    needle = f":{port:04X} "
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and (fields[1] + " ").endswith(needle) and fields[3] == "0A":
                count += 1
    return count


@dataclass
class Server:
    pid: int
    address: str
    command: str
    log: Path
    extra: dict[str, Any]


def start_server(
    ctx: Ctx, row: Row, material: Material, *, profile_out: Path | None = None
) -> Server:
    tag = f"{row.name}-profile" if profile_out else row.name
    port = free_port()
    address = f"127.0.0.1:{port}"
    cfg_dir = ctx.dir("configs", tag)
    extra: dict[str, Any] = {}
    prefix = ["-m", "bench.profiled", "--out", str(profile_out)] if profile_out else []
    if row.kind == "floor":
        args = ["-m", "bench.floor", "--listen", address, "--workers", str(row.workers)]
        if row.burn_us:
            args += ["--burn-us", f"{row.burn_us:g}"]
        if row.redis_ping:
            assert ctx.redis is not None
            args += ["--redis", ctx.redis.url]
    elif row.kind == "authz":
        audit = ctx.dir("audit") / f"{tag}.jsonl"
        audit.unlink(missing_ok=True)
        extra["audit_file"] = audit
        data = configs.authz_config(
            listen=address,
            jwks_file=material.jwks_file,
            audit_file=audit,
            cache_size=row.cache_size,
            workers=row.workers,
            audit=row.audit,
        )
        cfg = configs.write_yaml(cfg_dir / "authz.yaml", data)
        args = ["-m", "authz_service", "serve", "--config", str(cfg)]
    else:
        rules = cfg_dir / "rules"
        configs.write_yaml(rules / "edge.yaml", configs.BENCH_RULES)
        redis_url = None
        if row.store == "redis":
            assert ctx.redis is not None
            redis_url = ctx.redis.url
        data = configs.ratelimit_settings(
            listen=address, rules_dir=rules, redis_url=redis_url, workers=row.workers
        )
        cfg = configs.write_yaml(cfg_dir / "ratelimit.yaml", data)
        args = ["-m", "ratelimit_service", "serve", "--settings", str(cfg)]
    log = ctx.dir("logs") / f"{tag}.log"
    log.unlink(missing_ok=True)
    argv = [*prefix, *args] if prefix else args
    env = _telemetry_env(ctx, row) if row.sampled is not None else None
    if env is not None:
        extra["otlp_endpoint"] = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    proc = ctx.procs.python(row.name, argv, stdout=log, env=env)
    if not wait_until(lambda: listening_sockets(port) >= row.workers, timeout=30):
        raise RuntimeError(f"{row.name}: not listening on {address}; see {log}")
    wait_until(lambda: port_open(port), timeout=5)
    return Server(proc.pid, address, shlex.join([sys.executable, *argv]), log, extra)


def _trace_headers(row: Row, index: int, clients: int) -> tuple[str, ...]:
    """With telemetry on, each call carries a W3C traceparent in its gRPC metadata, as
    Envoy sends it when it traces: the first `sampled` share of the clients with the
    sampled flag, the others without (Envoy's sampling decision, which the sidecars'
    parent-based sampler follows)."""
    if row.sampled is None:
        return ()
    return (_traceparent(index, sampled=index < round(row.sampled * clients)),)


def _traceparent(index: int, *, sampled: bool) -> str:
    return f"traceparent: 00-{index + 1:032x}-{index + 1:016x}-{'01' if sampled else '00'}"


def _telemetry_env(ctx: Ctx, row: Row) -> dict[str, str]:
    """Start an OTLP sink for this row and point the sidecar's standard OTEL_* at it."""
    port = free_port()
    ctx.procs.python(
        f"{row.name}-otlp-sink",
        ["-m", "bench.otlp_sink", "--listen", f"127.0.0.1:{port}"],
        stdout=ctx.dir("logs") / f"{row.name}-otlp-sink.log",
    )
    if not wait_until(lambda: port_open(port), timeout=15):
        raise RuntimeError(f"{row.name}: the OTLP sink did not start")
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        # OTel's default sampler: Envoy's decision (the traceparent flag) is followed.
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


def verify(
    server: Server, method: str, bodies: Sequence[Path], check: Callable[[bytes], str | None]
) -> None:
    """Each body once, with a real gRPC client: the answer must be the intended one."""
    for body in bodies:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = driver.call_once(server.address, method, body.read_bytes()[5:])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        problem = check(answer)
        if problem is not None:
            raise RuntimeError(f"{server.command}: wrong answer for {body.name}: {problem}")


def store_failures(log: Path) -> int:
    """Failure-mode answers the rate-limit sidecar logged (lines are rate-limited; each
    carries the count suppressed before it)."""
    total = 0
    if not log.exists():
        return 0
    for line in log.read_text(errors="replace").splitlines():
        if '"store_failure"' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "store_failure":
            total += 1 + int(record.get("suppressed", 0))
    return total


def circuit_openings(log: Path) -> int:
    """How often the rate-limit sidecar's circuit breaker opened (each process counts;
    calls while it is open are answered by the failure mode without a log line)."""
    if not log.exists():
        return 0
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        if '"store_health"' in line and '"serving":false' in line.replace(" ", ""):
            count += 1
    return count


def stop_server(ctx: Ctx, server: Server) -> None:
    for _name, proc in list(ctx.procs.children):
        if proc.pid == server.pid:
            ctx.procs.stop(proc)
            return


def bodies_for(row: Row, material: Material) -> list[Path]:
    if row.method == RL_PATH:
        return material.rl_bodies
    return material.check_bodies[row.alg]


def _check_for(row: Row) -> Callable[[bytes], str | None]:
    if row.kind == "floor":
        return driver.check_any
    return driver.check_allowed if row.kind == "authz" else driver.check_rate_ok


def saturating(ctx: Ctx, workers: int, duration_s: float, warmup_s: float) -> Shape:
    """Saturation with the same requests in flight for any worker count, spread over
    `workers` times the connections: SO_REUSEPORT hands out connections, not requests,
    and 20 connections split at random between 2 workers left one of them idle for part
    of some runs (the floor then measured anywhere from 3,900 to 8,700 req/s)."""
    t = ctx.timing
    spread = workers if t.streams % workers == 0 else 1
    return Shape(t.conns * spread, t.streams // spread, duration_s, warmup_s)


def shapes(ctx: Ctx, workers: int = 1) -> tuple[Shape, Shape]:
    t = ctx.timing
    saturation = saturating(ctx, workers, t.saturation_s, t.warmup_s)
    fixed = Shape(
        t.conns * workers, t.fixed_streams, t.fixed_s, t.warmup_s, rate=t.sidecar_fixed_rps
    )
    return saturation, fixed


def measure_row(
    ctx: Ctx, row: Row, material: Material, *, saturation_run: bool = True
) -> dict[str, Any]:
    """One row: saturation (unless bench.rounds supplies it) and a fixed rate."""
    bodies = bodies_for(row, material)
    server = start_server(ctx, row, material)
    result: dict[str, Any] = {
        "name": row.name,
        "label": row.label,
        "kind": row.kind,
        "workers": row.workers,
        "server_command": server.command,
    }
    try:
        warmup = make_ready(server, row, material)
        if warmup is not None:
            result["pool_warmup"] = warmup
        clients = load_clients(server, row, bodies)
        saturation, fixed = shapes(ctx, row.workers)
        groups, probe = observers(ctx, row, server)
        work = ctx.dir("runs", row.name)
        measured: list[tuple[str, LoadResult]] = []
        if saturation_run:
            sat = run(
                ctx.procs,
                clients,
                saturation,
                work_dir=work / "saturation",
                cpu_groups=groups,
                probe=probe,
            )
            measured.append(("saturation", sat))
        fix = run(
            ctx.procs, clients, fixed, work_dir=work / "fixed", cpu_groups=groups, probe=probe
        )
        measured.append(("fixed", fix))
        for label, res in measured:
            result[label] = load_dict(res)
        _sanity(ctx, row, measured)
    finally:
        stop_server(ctx, server)
    if row.kind == "authz":
        audit = server.extra["audit_file"]
        result["audit_lines"] = _count_lines(audit)
    if row.kind == "ratelimit":
        result["store_failures"] = store_failures(server.log)
        result["circuit_opened"] = circuit_openings(server.log)
    return result


def make_ready(server: Server, row: Row, material: Material) -> dict[str, Any] | None:
    """Check each body's answer; for authz rows with a cache, send the whole token pool
    once (what the cache holds after real traffic). Returns the warm-up's figures."""
    verify(server, row.method, bodies_for(row, material), _check_for(row))
    if row.kind != "authz" or row.cache_size == 0:
        return None
    warm = driver.drive(
        server.address,
        AUTHZ_PATH,
        (_check_body(t) for t in material.pools[row.alg]),
        driver.check_allowed,
    )
    return {
        "tokens": warm.sent,
        "allowed": warm.ok,
        "seconds": round(warm.seconds, 2),
        "problem": warm.first_problem,
    }


def observers(
    ctx: Ctx, row: Row, server: Server
) -> tuple[dict[str, list[int]], Callable[[], dict[str, int]] | None]:
    """What a load of `row` watches: the CPU of the server (and of Redis, when the row
    uses it), and Redis's command counts for a rate-limit row on Redis."""
    groups = {"server": [server.pid]}
    if ctx.redis is None or not row.uses_redis:
        return groups, None
    groups["redis"] = [ctx.redis.pid]
    return groups, ctx.redis.commandstats if row.kind == "ratelimit" else None


def load_dict(result: LoadResult) -> dict[str, Any]:
    """A load's figures for the JSON; with a Redis probe, EVALSHA calls per answered
    request in (about) the measured window: below 1, some answers came without Redis
    (breaker open, in-flight cap; timed-out calls still reach Redis and count). With
    Redis watched, how long it sat runnable but off the CPU per timeslice: what makes
    its replies late here (bench.context._favour), apart from anything the sidecar does."""
    out = result.as_dict()
    if result.probe_delta is not None and result.requests:
        out["redis_calls_per_request"] = round(
            result.probe_delta.get("evalsha", 0) / result.requests, 3
        )
    redis_wait = result.cpu.waits.get("redis") if result.cpu else None
    if redis_wait is not None:
        out["redis_wait_us_per_slice"] = round(redis_wait.us_per_slice, 1)
    return out


def load_clients(
    server: Server, row: Row, bodies: Sequence[Path], *, expected_rps: float | None = None
) -> list[Client]:
    """One client per body. A sampled share below one client's (1 % of 10 clients) is
    sent by one more, paced client, at that share of `expected_rps` (the rate the others
    are expected to reach); without `expected_rps` nothing is sampled."""
    url = f"http://{server.address}{row.method}"
    clients = [
        Client(url, body, GRPC_HEADERS + _trace_headers(row, i, len(bodies)))
        for i, body in enumerate(bodies)
    ]
    share = row.sampled or 0.0
    if 0 < share * len(bodies) < 0.5 and expected_rps:
        header = _traceparent(len(bodies), sampled=True)
        clients.append(
            Client(url, bodies[0], (*GRPC_HEADERS, header), paced_rps=share * expected_rps)
        )
    return clients


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def _sanity(ctx: Ctx, row: Row, measured: list[tuple[str, LoadResult]]) -> None:
    for label, res in measured:
        if res.failed:
            ctx.notes.append(f"{row.name} {label}: {res.failed} requests failed in h2load")
        if res.cpu is not None and res.cpu.foreign_cores > 0.3:
            ctx.notes.append(
                f"{row.name} {label}: other processes used {res.cpu.foreign_cores:.2f} cores"
                " during the run (shared machine): treat this row as noisy"
            )
        if res.probe_delta is not None and res.requests:
            per = res.probe_delta.get("evalsha", 0) / res.requests
            if per < 0.98:
                ctx.notes.append(
                    f"{row.name} {label}: {per:.3f} Redis calls per answer: some answers"
                    " came from the failure mode without Redis (breaker open or in-flight cap)"
                )
    fix = dict(measured)["fixed"]
    if fix.offered_rps and fix.rate_rps < 0.95 * fix.offered_rps:
        ctx.notes.append(
            f"{row.name}: fixed rate {fix.offered_rps} req/s not reached ({fix.rate_rps:.0f});"
            " its latency is a saturated latency"
        )


def run_section(
    ctx: Ctx,
    material: Material,
    plan: dict[int, list[str]],
    *,
    saturation_elsewhere: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Section 1's rows; those in `saturation_elsewhere` get only the fixed-rate run
    here (bench.rounds measures their saturation, see `rounds.fill_saturation`)."""
    results: list[dict[str, Any]] = []
    per_row = ctx.timing.saturation_s + ctx.timing.fixed_s + 2 * ctx.timing.warmup_s + 5
    for row in rows(plan):
        if ctx.out_of_time(per_row + 60):
            break
        with stage(ctx, f"section 1: {row.name}"):
            try:
                results.append(
                    measure_row(
                        ctx, row, material, saturation_run=row.name not in saturation_elsewhere
                    )
                )
            except Exception as exc:  # one broken row must not lose the others
                ctx.notes.append(f"{row.name}: failed: {exc}")
                ctx.log(f"  {row.name} failed: {exc}")
    ratios(results)
    return {"rows": results}


def ratios(results: list[dict[str, Any]]) -> None:
    """Ratios to the floor of the same worker count (the mean of its first and last
    measurement when both exist)."""
    seen: dict[int, list[float]] = {}
    for r in results:
        if r["name"].startswith("floor-w") and "saturation" in r:
            seen.setdefault(r["workers"], []).append(r["saturation"]["rate_rps"])
    floors = {w: sum(v) / len(v) for w, v in seen.items()}
    for r in results:
        if r["name"].startswith("floor-w") and len(seen.get(r["workers"], [])) > 1:
            values = seen[r["workers"]]
            r["floor_spread"] = round((max(values) - min(values)) / floors[r["workers"]], 3)
    rl_floors = {
        r["workers"]: r["saturation"]["rate_rps"]
        for r in results
        if r["name"].startswith("floor-rl-") and "saturation" in r
    }
    base = floors.get(1)
    for r in results:
        if "saturation" not in r:
            continue
        rate = r["saturation"]["rate_rps"]
        floor = floors.get(r["workers"])
        r["ratio_to_floor"] = round(rate / floor, 3) if floor else None
        r["ratio_to_floor_1_worker"] = round(rate / base, 3) if base else None
        rl_floor = rl_floors.get(r["workers"])
        if r["kind"] == "ratelimit" and rl_floor:
            r["ratio_to_rl_floor"] = round(rate / rl_floor, 3)
