"""The debug listener: plain HTTP on a loopback address, for someone at the machine.

    GET  /          the endpoints
    GET  /rlconfig  the loaded rules, one line per limit (`rule_lines`)
    GET  /stats     the reference's per-descriptor counters, under its statsd names
    POST /json      a RateLimitRequest in protobuf's JSON mapping -> the ShouldRateLimit
                    answer as JSON: 200 OK, 429 OVER_LIMIT, 400 not a valid request,
                    411 no Content-Length, 413 over MAX_BODY_BYTES, 503 no answer in time

It answers without credentials, which is why the settings refuse any address but a
loopback one. `/json` goes through the gRPC servicer's own entry point (the bytes a
gRPC call would carry, `ShouldRateLimit` on grpc.aio or `should_rate_limit_sync` on the
threaded server, see `servicer_call`), so it gets the same decision, decision lines and
counters as Envoy's calls, and takes tokens like them. One thread serves one request at
a time (it is a tool, not an API), each connection limited to `_SOCKET_TIMEOUT_S`.
Request bodies and their descriptor values are never logged.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, NoReturn

from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format

from ratelimit_service.descriptor_stats import STAT_NAMES, StatsSnapshot
from ratelimit_service.limits.rules import Level, Limit, Node, RuleSet
from ratelimit_service.servicer import RateLimitServicer
from ratelimit_service.settings import host_port
from sidecar_runtime.loops import LoopBridge, LoopUnavailableError

log = logging.getLogger(__name__)

# A RateLimitRequest Envoy sends is well under 1 KiB; 64 KiB leaves room for any test.
MAX_BODY_BYTES = 64 * 1024
_SOCKET_TIMEOUT_S = 5.0
_ANSWER_TIMEOUT_S = 5.0
# How often the serving thread looks for `stop` (http.server's default, 0.5 s, is the
# time a shutdown waits).
_SHUTDOWN_POLL_S = 0.05
_STATS_PREFIX = "ratelimit.service.rate_limit"
ENDPOINTS = (
    ("GET", "/", "this list"),
    ("GET", "/rlconfig", "the loaded rules, one line per limit"),
    ("GET", "/stats", "the per-descriptor counters (the reference's statsd names)"),
    ("POST", "/json", "a JSON RateLimitRequest -> the ShouldRateLimit answer (429 if over)"),
)


class CallRefusedError(Exception):
    """The servicer refused the call (an invalid request); `details` names the rule."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class HttpCallContext:
    """What the servicer reads of a gRPC call's context, for a call that came over HTTP:
    no metadata, and `abort` raises at once (so `await context.abort(...)` on the aio
    path raises before anything is awaited, as grpc.aio's does)."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def abort(self, code: Any, details: str) -> NoReturn:
        raise CallRefusedError(code, details)


# Serialized RateLimitRequest -> serialized RateLimitResponse; CallRefusedError if refused.
ShouldRateLimitBytes = Callable[[bytes], bytes]


def servicer_call(
    servicer: RateLimitServicer, *, aio: bool, bridge: LoopBridge
) -> ShouldRateLimitBytes:
    """The servicer's gRPC entry point for this process's server stack, callable from the
    listener's thread: on grpc.aio the coroutine runs on the process's loop; on the
    threaded server the handler runs on this thread, as on one of grpcio's workers."""
    if aio:

        def on_loop(body: bytes) -> bytes:
            context: Any = HttpCallContext()
            future = bridge.submit(servicer.ShouldRateLimit(body, context))
            try:
                return future.result(timeout=_ANSWER_TIMEOUT_S)
            except FutureTimeout:
                future.cancel()  # nobody waits for it any more
                raise

        return on_loop

    def on_thread(body: bytes) -> bytes:
        return servicer.should_rate_limit_sync(body, HttpCallContext())

    return on_thread


@dataclass(frozen=True, slots=True)
class DebugSources:
    """What the listener shows and calls (all read per request, so reloads show)."""

    rules: Callable[[], RuleSet]
    should_rate_limit: ShouldRateLimitBytes
    stats: Callable[[], StatsSnapshot] | None = None
    global_quota_mode: bool = False
    global_shadow_mode: bool = False


# -- the texts -------------------------------------------------------------------------


def rule_lines(
    rules: RuleSet, *, global_shadow_mode: bool = False, global_quota_mode: bool = False
) -> Iterator[str]:
    """One line per limit, domains sorted, descriptors in file order, parents first:

    `<stat key>: name=<json string> unit=<unit> requests_per_unit=<n> burst=<n>
    shadow_mode=<bool> quota_mode=<bool>`, with `unit_multiplier=<n>` after the unit
    when it is not 1, and `unlimited=true` instead of unit, requests_per_unit and burst
    for an unlimited limit. The global modes show in every line they apply to."""
    for name in sorted(rules.domains):
        for node in _nodes(rules.domains[name].root):
            for limit in node.limits:
                yield _limit_line(
                    node.stat_base_key,
                    limit,
                    shadow=limit.shadow or global_shadow_mode,
                    quota=limit.quota or global_quota_mode,
                )


def _nodes(level: Level | None) -> Iterator[Node]:
    if level is None:
        return
    for node in level.nodes.values():
        yield node
        yield from _nodes(node.children)


def _limit_line(stat_key: str, limit: Limit, *, shadow: bool, quota: bool) -> str:
    fields = [f"name={json.dumps(limit.name)}"]
    if limit.unlimited:
        fields.append("unlimited=true")
    else:
        fields.append(f"unit={limit.unit}")
        if limit.unit_multiplier != 1:
            fields.append(f"unit_multiplier={limit.unit_multiplier}")
        fields.append(f"requests_per_unit={limit.requests_per_unit} burst={limit.burst}")
    fields.append(f"shadow_mode={_flag(shadow)} quota_mode={_flag(quota)}")
    return f"{stat_key}: {' '.join(fields)}"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def stats_lines(snapshot: StatsSnapshot) -> Iterator[str]:
    """`ratelimit.service.rate_limit.<stat key>.<stat>: <count>`, as the reference's
    /stats shows its counters, then `<domain>.domain_not_found` and the folded checks."""
    for key, counts in sorted(snapshot.rows):
        for stat, count in zip(STAT_NAMES, counts, strict=True):
            yield f"{_STATS_PREFIX}.{key}.{stat}: {count}"
    for domain, count in sorted(snapshot.domains_not_found):
        yield f"{_STATS_PREFIX}.{domain}.domain_not_found: {count}"
    yield f"{_STATS_PREFIX}.detailed_keys_folded: {snapshot.folded}"


# -- the listener ----------------------------------------------------------------------


class DebugListener:
    """The HTTP server on its own thread; `start` binds, `stop` closes."""

    def __init__(self, listen: str, sources: DebugSources) -> None:
        self._listen = listen
        self._sources = sources
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        """Bind and serve; returns the bound port (`listen` may name port 0)."""
        host, port = host_port(self._listen)
        server_class = _Server6 if ":" in host else _Server
        server = server_class((host, port), _Handler)
        server.sources = self._sources
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name="ratelimit-debug-http",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "debug listener",
            extra={"fields": {"event": "debug_listening", "host": host, "port": self.port}},
        )
        return self.port

    def stop(self) -> None:
        """Finish the request being served, stop, and close the socket (blocks: call it
        off the event loop, which a /json call may be waiting on)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()


class _Server(HTTPServer):
    allow_reuse_address = True
    sources: DebugSources


class _Server6(_Server):
    address_family = socket.AF_INET6


@dataclass(frozen=True, slots=True)
class _Reply:
    status: HTTPStatus
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    allow: str = ""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _SOCKET_TIMEOUT_S
    server_version = "ratelimit-debug"
    sys_version = ""

    def do_GET(self) -> None:
        self._send(self._get(self._route()))

    def do_POST(self) -> None:
        route = self._route()
        if route != "/json":
            self._send(_not_allowed(route, "GET") if route in _GET_ROUTES else _NOT_FOUND)
            return
        self._send(self._post_json())

    def _route(self) -> str:
        return self.path.split("?", 1)[0]

    def _get(self, route: str) -> _Reply:
        sources = self.server.sources
        if route == "/":
            return _text(f"{method:4} {path:10} {what}" for method, path, what in ENDPOINTS)
        if route == "/rlconfig":
            return _text(
                rule_lines(
                    sources.rules(),
                    global_shadow_mode=sources.global_shadow_mode,
                    global_quota_mode=sources.global_quota_mode,
                )
            )
        if route == "/stats":
            if sources.stats is None:
                return _text(["stats are off (stats.enabled: false)"])
            return _text(stats_lines(sources.stats()))
        if route == "/json":
            return _not_allowed(route, "POST")
        return _NOT_FOUND

    def _post_json(self) -> _Reply:
        body = self._body()
        if isinstance(body, _Reply):
            return body
        try:
            request = _parse_request(body)
        except (json_format.ParseError, ValueError, RecursionError) as exc:  # ValueError:
            # JSON and UTF-8 errors; RecursionError: nesting deeper than the parser goes
            return _error(HTTPStatus.BAD_REQUEST, f"not a JSON RateLimitRequest: {exc}")
        try:
            wire = self.server.sources.should_rate_limit(request.SerializeToString())
        except CallRefusedError as exc:
            return _error(HTTPStatus.BAD_REQUEST, exc.details)
        except (FutureTimeout, LoopUnavailableError):
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "no answer in time")
        return _answer(rls_pb2.RateLimitResponse.FromString(wire))

    def _body(self) -> bytes | _Reply:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return _error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return _error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if not raw.strip().isdigit():
            return _error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        if reply.allow:
            self.send_header("Allow", reply.allow)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The method, the path without its query, and the status: never a body or query.
        log.debug(
            "debug request",
            extra={
                "fields": {
                    "event": "debug_request",
                    "method": self.command,
                    "route": self._route(),
                    "status": int(code) if str(code).isdigit() else 0,
                }
            },
        )

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own lines quote the request line; log_request says what matters.
        return


_GET_ROUTES = frozenset({"/", "/rlconfig", "/stats"})


def _text(lines: Iterable[str]) -> _Reply:
    return _Reply(HTTPStatus.OK, "".join(f"{line}\n" for line in lines).encode())


def _json(status: HTTPStatus, text: str) -> _Reply:
    return _Reply(status, text.encode(), content_type="application/json")


def _error(status: HTTPStatus, message: str) -> _Reply:
    return _json(status, json.dumps({"error": message}))


def _not_allowed(route: str, allow: str) -> _Reply:
    reply = _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{route} takes {allow}")
    return _Reply(reply.status, reply.body, reply.content_type, allow=allow)


_NOT_FOUND = _error(HTTPStatus.NOT_FOUND, "no such endpoint; GET / lists them")

_STATUS_BY_CODE = {
    rls_pb2.RateLimitResponse.OK: HTTPStatus.OK,
    rls_pb2.RateLimitResponse.OVER_LIMIT: HTTPStatus.TOO_MANY_REQUESTS,
}


def _parse_request(body: bytes) -> Any:
    """A RateLimitRequest from protobuf's JSON mapping; the document must be an object
    (protobuf's own parser lets `[]` through as an empty message)."""
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the JSON document must be an object")
    return json_format.ParseDict(document, rls_pb2.RateLimitRequest())


def _answer(response: Any) -> _Reply:
    """The reference's /json answer: the response in protobuf's JSON mapping, 200 for
    OK, 429 for OVER_LIMIT (500 for an answer with no code, which the service never
    gives)."""
    status = _STATUS_BY_CODE.get(response.overall_code, HTTPStatus.INTERNAL_SERVER_ERROR)
    return _json(status, json_format.MessageToJson(response))
