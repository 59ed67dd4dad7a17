"""The floor: a sidecar whose Check returns OK at once, on the sidecars' own server.

Same bootstrap as both sidecars (sidecar_runtime.server.SidecarServer: the same grpc.aio
options, health, reflection, keepalive enforcement; sidecar_runtime.workers for
`--workers N`), so the difference between this and a real sidecar is the work it does per
call and nothing else.

    python -m bench.floor --listen 127.0.0.1:PORT [--workers N]
        [--mtls CERT KEY CA] [--subject NAME] [--burn-us N] [--redis URL]

`--burn-us N` makes each call spend N µs of Python CPU (a busy loop) before answering: the
floor with a handler of known cost, to show how much work per call a given share of the
floor's throughput leaves room for.

`--redis URL` makes each call await one PING on the rate limiter's own pipelined Redis
client (`ratelimit_service.redis_pipe`) before answering: the floor plus the one Redis
round trip per decision that the design requires (ARCHITECTURE.md §5b), with no other work.

`--mtls` serves like the deployed sidecars (client certificate required); `--subject`
adds `{"subject": NAME}` to Check's dynamic metadata, so Envoy's stage-1 rate limit (keyed
on it) makes its call too: the whole edge with sidecars that do no work.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.rpc import code_pb2, status_pb2

from ratelimit_service.redis_pipe import RedisPipe, endpoint_from_url, pack
from sidecar_runtime.server import ServiceBinding, SidecarServer, serve_until_signalled
from sidecar_runtime.settings import ServerSettings, TlsSettings
from sidecar_runtime.workers import run_workers, worker_index

AUTHZ = "envoy.service.auth.v3.Authorization"
RATELIMIT = "envoy.service.ratelimit.v3.RateLimitService"
_OK = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
_RL_OK = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


_PING = pack("PING")


class FloorAuthz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self, response: Any = _OK, burn_us: float = 0, redis: RedisPipe | None = None
    ) -> None:
        self._response = response
        self._burn_s = burn_us / 1e6
        self._redis = redis

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
        if self._burn_s:
            _burn(self._burn_s)
        if self._redis is not None:
            await self._redis.execute(_PING, timeout_s=1.0)
        return self._response


def _burn(seconds: float) -> None:
    """Hold the CPU (and the GIL) for `seconds`, as a handler doing that much work would."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class FloorRateLimit(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # noqa: N802
        return _RL_OK


async def _serve(
    listen: str,
    *,
    reuse_port: bool,
    mtls: Sequence[str] | None,
    subject: str | None,
    burn_us: float = 0,
    redis_url: str | None = None,
) -> None:
    tls = TlsSettings()
    if mtls:
        cert, key, ca = mtls
        tls = TlsSettings(mode="mtls", cert_file=cert, key_file=key, ca_file=ca)
    settings = ServerSettings(listen=listen, tls=tls)
    response = _OK
    if subject:
        response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
        response.dynamic_metadata.update({"subject": subject})
    redis = None
    if redis_url:
        endpoint = endpoint_from_url(redis_url)
        if endpoint is None:
            raise SystemExit(f"--redis {redis_url}: only plain redis:// URLs here")
        redis = RedisPipe(endpoint)
        await redis.open_all()
    authz, ratelimit = FloorAuthz(response, burn_us, redis), FloorRateLimit()
    bindings = [
        ServiceBinding(
            AUTHZ, lambda s: external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authz, s)
        ),
        ServiceBinding(
            RATELIMIT, lambda s: rls_pb2_grpc.add_RateLimitServiceServicer_to_server(ratelimit, s)
        ),
    ]
    server = SidecarServer(settings, bindings, reuse_port=reuse_port)
    await server.start()
    await serve_until_signalled(server)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--mtls", nargs=3, metavar=("CERT", "KEY", "CA"))
    parser.add_argument("--subject")
    parser.add_argument("--burn-us", type=float, default=0, help="Python CPU per Check, µs")
    parser.add_argument("--redis", help="await one PING on this Redis per Check")
    args = parser.parse_args(argv)
    if args.workers > 1 and worker_index() is None:
        return run_workers(args.workers)
    asyncio.run(
        _serve(
            args.listen,
            reuse_port=args.workers > 1,
            mtls=args.mtls,
            subject=args.subject,
            burn_us=args.burn_us,
            redis_url=args.redis,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
