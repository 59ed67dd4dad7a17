"""The `server:` section both sidecars share: listener, server stack, TLS/mTLS, workers,
limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sidecar_runtime.config import Frozen, resolve_path


class TlsSettings(Frozen):
    """`plaintext` for a loopback sidecar, `tls`, or `mtls` (client certificate required).

    Relative file paths are resolved against the config file's directory.
    """

    mode: Literal["plaintext", "tls", "mtls"] = "plaintext"
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None

    _relative_to_config = field_validator("cert_file", "key_file", "ca_file")(resolve_path)

    @model_validator(mode="after")
    def _files_for_mode(self) -> TlsSettings:
        if self.mode == "plaintext":
            return self
        for name in ("cert_file", "key_file") + (("ca_file",) if self.mode == "mtls" else ()):
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"{name} is required when mode is {self.mode}")
            if not Path(value).is_file():
                raise ValueError(f"{name} {value} does not exist")
        return self


class KeepaliveSettings(Frozen):
    # Clients pinging more often than this are sent GOAWAY after a few strikes.
    min_ping_interval_seconds: float = Field(default=10.0, ge=1.0)
    permit_without_calls: bool = False
    max_ping_strikes: int = Field(default=2, ge=0)
    # Recycle connections so load spreads over workers and replicas after scaling.
    max_connection_age_seconds: float | None = Field(default=None, gt=0)
    max_connection_idle_seconds: float | None = Field(default=300.0, gt=0)


# Which grpcio server serves the calls (docs/operations.md, "Server stack"):
#   aio      grpc.aio on asyncio's own event loop
#   uvloop   grpc.aio on uvloop's event loop
#   sync     grpcio's thread-pool server: handlers run on `threads` worker threads, and what
#            is asynchronous (JWKS fetches, reloads, health, the Redis probe) on one loop
# The default is uvloop: in `make bench` (2 cores, 2026-12-05 10:04 UTC, default profile,
# the real handlers behind Envoy) it served the most requests, 1,670 req/s against aio's
# 1,502 and sync's 1,662, at 1,007 µs of server CPU per request (aio 1,126, sync 975).
# Sync's 3 % less CPU bought no throughput, and alone, without Envoy, sync was the most
# expensive stack for both sidecars (authz 326 µs per call, uvloop 193). A trivial Check
# had favoured sync (server / Envoy µs: aio 288 / 165, uvloop 257 / 161, sync 161 / 129).
Stack = Literal["aio", "uvloop", "sync"]


class ServerSettings(Frozen):
    listen: str = "127.0.0.1:9001"
    # A second, plaintext listener that serves grpc.health.v1 only (the same statuses and
    # drain as `listen`'s, plus `liveness`), for Kubernetes' native gRPC probe: the kubelet
    # dials the pod's IP with no TLS and no client certificate (docs/operations.md,
    # "Health"). It answers health and nothing else, so it exposes no decision and takes
    # no request of the sidecar's. Null (the default): no such listener. With `workers`,
    # every worker binds it with SO_REUSEPORT, like `listen`.
    health_listen: str | None = None
    stack: Stack = "uvloop"
    # sync only: the worker threads that run handlers. One interpreter lock serves them
    # all, so more threads buy overlap with waiting (Redis, a JWKS fetch), not more CPU.
    threads: int = Field(default=4, ge=1, le=256)
    # sync only: calls in progress (running or waiting for a thread) at most; beyond it a
    # call is refused at once with RESOURCE_EXHAUSTED instead of queueing without bound.
    # A call queued longer than its caller's timeout (Envoy: 20 ms for the rate limiter,
    # 200 ms for ext_authz by default) is wasted work.
    max_concurrent_rpcs: int = Field(default=256, ge=1, le=100_000)
    tls: TlsSettings = TlsSettings()
    reflection: bool = True
    workers: int = Field(default=1, ge=1, le=64)
    # On SIGTERM, health says NOT_SERVING at once but calls are still served this long, so
    # load balancers stop sending before the server refuses anything. It must outlast the
    # health checks of the Envoy in front: its sidecar clusters (devstack/envoy_config.py)
    # probe every 1 s with a 0.5 s timeout and drop a host after 2 failed probes, i.e. at
    # most ~2.5 s after NOT_SERVING starts; 5 s doubles that for a loaded Envoy or a probe
    # lost in flight. Raise it with the checks' interval x unhealthy_threshold (+ timeout).
    # Drain + grace (10 s) stays well inside Kubernetes' default 30 s termination grace.
    drain_period_seconds: float = Field(default=5.0, ge=0, le=300)
    # Then new calls are refused and those in flight get this long to finish.
    grace_period_seconds: float = Field(default=5.0, ge=0, le=300)
    max_receive_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_send_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_concurrent_streams: int = Field(default=1000, ge=1)
    keepalive: KeepaliveSettings = KeepaliveSettings()

    @field_validator("max_concurrent_rpcs")
    @classmethod
    def _room_for_every_thread(cls, value: int, info: ValidationInfo) -> int:
        threads = info.data.get("threads")
        if threads is not None and value < threads:
            raise ValueError(f"is below threads ({threads}): some threads would never get a call")
        return value

    @field_validator("health_listen")
    @classmethod
    def _health_listen_has_its_own_port(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        port = _port_of("health_listen", value)
        listen_port = str(info.data.get("listen", "")).rpartition(":")[2]
        # With SO_REUSEPORT (workers) both servers could bind one port, and the kernel
        # would hand some of Envoy's mTLS connections to the plaintext health server.
        if port != 0 and listen_port.isdigit() and int(listen_port) == port:
            raise ValueError(f"health_listen {value!r} must not share listen's port")
        return value

    @model_validator(mode="after")
    def _listen_has_port(self) -> ServerSettings:
        _port_of("listen", self.listen)
        return self


def _port_of(key: str, address: str) -> int:
    """The port of a HOST:PORT `address`, or a ValueError that names `key`."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{key} {address!r} must be HOST:PORT")
    return int(port)
