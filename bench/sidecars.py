"""Each sidecar alone, per server stack: what explains the edge's figures.

One `python -m authz_service serve` and one `python -m ratelimit_service serve` per stack
(`server.stack`), in plaintext on a free port (h2load cannot present a client
certificate; the mTLS path is the edge's), all live at once and loaded in alternating
rounds (bench.rounds) at saturation, straight from h2load: no Envoy, no TLS. A row's
rate is its median over the rounds, its CPU per call that round's server (and Redis)
cores over its rate.

- authz: the 31-route bench policy (bench.configs), audit on, `GET /api/v1/users/{sub}`
  with the subject's own RS256 token (scope + CEL ownership). The pool of `pool_size`
  tokens is sent once through the grpc driver first, so the verified-token cache holds
  all of them, as after a minute of real traffic; h2load carries `clients` of them.
- ratelimit: the call Envoy makes in the default profile (subject, authenticated client
  address, authz rule) against the demo rules with every limit raised, on the bench's
  Redis: nothing is denied and every call does the full work.
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

from bench import configs, driver, edge, edge_configs, rounds
from bench.context import Ctx, describe, stage
from bench.load import GRPC_HEADERS, Client, Shape, grpc_frame, run
from bench.messages import Token, check_request, mint_pool, ratelimit_request
from bench.procs import free_port, port_open, wait_until
from devstack import envoy_config

AUTHZ_PATH = "/envoy.service.auth.v3.Authorization/Check"
RL_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
AUTHZ_RULE = "get-user"  # the authz route the bench's request matches


@dataclass(frozen=True)
class Row:
    kind: str  # authz | ratelimit
    stack: str

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.stack}"

    @property
    def method(self) -> str:
        return AUTHZ_PATH if self.kind == "authz" else RL_PATH


@dataclass
class Material:
    """Tokens and request bodies shared by every row (and the footprint sections)."""

    pool: list[Token]  # RS256, distinct subjects
    check_bodies: list[Path]  # framed CheckRequests, one per h2load process
    rl_bodies: list[Path]  # framed RateLimitRequests, one per h2load process
    jwks_file: Path


def profile_descriptors(index: int) -> list[list[tuple[str, str]]]:
    """The descriptors of the default profile's one ShouldRateLimit call."""
    return [
        [(envoy_config.SUBJECT_KEY, f"u{index}")],
        [(envoy_config.AUTHENTICATED_KEY, "true"), ("remote_address", f"10.0.0.{index + 1}")],
        [(envoy_config.RULE_KEY, AUTHZ_RULE)],
    ]


def prepare(ctx: Ctx) -> Material:
    t = ctx.timing
    bodies = ctx.dir("bodies")
    started = time.perf_counter()
    pool = mint_pool(ctx.keys, "RS256", t.pool_size, prefix="rs256-user-")
    ctx.log(f"  minted {t.pool_size} RS256 tokens in {time.perf_counter() - started:.1f} s")
    step = max(1, t.pool_size // t.clients)
    check_bodies, rl_bodies = [], []
    for i in range(t.clients):
        path = bodies / f"check-{i}.bin"
        path.write_bytes(grpc_frame(check_body(pool[i * step])))
        check_bodies.append(path)
        path = bodies / f"ratelimit-{i}.bin"
        path.write_bytes(grpc_frame(ratelimit_request(profile_descriptors(i))))
        rl_bodies.append(path)
    return Material(pool, check_bodies, rl_bodies, ctx.keys.jwks_file)


def check_body(token: Token) -> bytes:
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
    row: Row
    pid: int
    address: str
    command: str
    log: Path


def _server_config(ctx: Ctx, row: Row, address: str) -> Path:
    cfg_dir = ctx.dir("configs", row.name)
    if row.kind == "authz":
        audit = ctx.dir("audit") / f"{row.name}.jsonl"
        data = configs.authz_config(listen=address, jwks_file=ctx.keys.jwks_file, audit_file=audit)
    else:
        assert ctx.redis is not None
        configs.write_yaml(cfg_dir / "rules" / "edge.yaml", edge_configs.bench_rules())
        data = configs.ratelimit_settings(
            listen=address, rules_dir=cfg_dir / "rules", redis_url=ctx.redis.url
        )
    data["server"]["stack"] = row.stack
    return configs.write_yaml(cfg_dir / f"{row.kind}.yaml", data)


def start_server(ctx: Ctx, row: Row) -> Server:
    port = free_port()
    address = f"127.0.0.1:{port}"
    path = _server_config(ctx, row, address)
    flag = "--config" if row.kind == "authz" else "--settings"
    args = ["-m", f"{row.kind}_service", "serve", flag, str(path)]
    log = ctx.dir("logs") / f"{row.name}.log"
    proc = ctx.procs.python(row.name, args, stdout=log)
    if not wait_until(lambda: listening_sockets(port) >= 1 or proc.poll() is not None, timeout=30):
        raise RuntimeError(f"{row.name}: not listening on {address}; see {log}")
    if proc.poll() is not None:
        raise RuntimeError(f"{row.name}: exited with {proc.returncode}; see {log}")
    wait_until(lambda: port_open(port), timeout=5)
    return Server(row, proc.pid, address, shlex.join([sys.executable, *args]), log)


def stop_server(ctx: Ctx, server: Server) -> None:
    for _name, proc in list(ctx.procs.children):
        if proc.pid == server.pid:
            ctx.procs.stop(proc)


def make_ready(server: Server, material: Material) -> None:
    """Each body's answer checked with a real gRPC client; for authz, the whole token
    pool sent once (what the verified-token cache holds after real traffic)."""
    bodies = material.check_bodies if server.row.kind == "authz" else material.rl_bodies
    check = driver.check_allowed if server.row.kind == "authz" else driver.check_rate_ok
    verify(server, bodies, check)
    if server.row.kind == "authz":
        warm = driver.drive(
            server.address, AUTHZ_PATH, (check_body(t) for t in material.pool), check
        )
        if warm.ok != len(material.pool):
            raise RuntimeError(f"{server.row.name}: pool warm-up: {warm.first_problem}")


def verify(server: Server, bodies: Sequence[Path], check: Callable[[bytes], str | None]) -> None:
    for body in bodies:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = driver.call_once(server.address, server.row.method, body.read_bytes()[5:])
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        problem = check(answer)
        if problem is not None:
            raise RuntimeError(f"{server.command}: wrong answer for {body.name}: {problem}")


def store_failures(log: Path) -> int:
    """Failure-mode answers a rate-limit sidecar logged (lines are rate-limited; each
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


def load(ctx: Ctx, server: Server, material: Material, label: str) -> dict[str, Any]:
    """One saturation load of a row: its server's CPU (and Redis's, for ratelimit) and,
    for ratelimit, Redis script calls per answer (below 1: failure-mode answers)."""
    t = ctx.timing
    bodies = material.check_bodies if server.row.kind == "authz" else material.rl_bodies
    url = f"http://{server.address}{server.row.method}"
    groups = {"server": [server.pid]}
    probe = None
    if server.row.kind == "ratelimit" and ctx.redis is not None:
        groups["redis"] = [ctx.redis.pid]
        probe = ctx.redis.commandstats
    result = run(
        ctx.procs,
        [Client(url, body, GRPC_HEADERS) for body in bodies],
        Shape(t.conns, t.streams, t.sidecar_saturation_s, t.warmup_s),
        work_dir=ctx.dir("runs", server.row.name, label),
        cpu_groups=groups,
        probe=probe,
    )
    out = result.as_dict()
    if result.probe_delta is not None and result.requests:
        out["redis_calls_per_request"] = round(
            result.probe_delta.get("evalsha", 0) / result.requests, 3
        )
    if result.failed:
        ctx.notes.append(f"{server.row.name} {label}: {result.failed} requests failed in h2load")
    return out


def _loader(ctx: Ctx, server: Server, material: Material) -> Callable[[int], dict[str, Any]]:
    return lambda index: load(ctx, server, material, f"round-{index + 1}")


def run_section(ctx: Ctx, material: Material) -> dict[str, Any]:
    t = ctx.timing
    stacks, _ = edge.sidecar_stacks()
    rows = [Row(kind, stack) for stack in stacks for kind in ("authz", "ratelimit")]
    per_load = t.sidecar_saturation_s + t.warmup_s + 1.5
    if ctx.out_of_time(len(rows) * (8 + per_load) + 100):
        return {"rows": []}
    servers: dict[str, Server] = {}
    try:
        with stage(ctx, f"sidecars alone: start {len(rows)} servers"):
            for row in rows:
                try:
                    servers[row.name] = start_server(ctx, row)
                    make_ready(servers[row.name], material)
                except Exception as exc:  # one broken row must not lose the others
                    ctx.notes.append(f"sidecar {row.name}: did not start ({describe(exc)})")
                    if row.name in servers:
                        stop_server(ctx, servers.pop(row.name))
        loaders = {name: _loader(ctx, s, material) for name, s in servers.items()}
        with stage(ctx, f"sidecars alone: {t.sidecar_rounds} alternating rounds"):
            loads = rounds.run_rounds(
                ctx, loaders, t.sidecar_rounds, what="sidecars",
                may_continue=lambda: ctx.remaining() > len(loaders) * per_load + 100,
            )  # fmt: skip
    finally:
        for server in servers.values():
            stop_server(ctx, server)
    out = []
    for name, server in servers.items():
        if not loads[name]:
            continue
        row = server.row
        entry: dict[str, Any] = {"name": name, "kind": row.kind, "stack": row.stack}
        entry["saturation"] = rounds.median_load(loads[name], lambda x: float(x["rate_rps"]))
        entry["rounds"] = loads[name]
        entry["server_command"] = server.command
        if row.kind == "ratelimit":
            entry["store_failures"] = store_failures(server.log)
        out.append(entry)
    return {"rows": out, "rounds": t.sidecar_rounds}
