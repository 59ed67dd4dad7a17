"""The `server:` section both sidecars share: listener, TLS/mTLS, workers, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

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


class ServerSettings(Frozen):
    listen: str = "127.0.0.1:9001"
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

    @model_validator(mode="after")
    def _listen_has_port(self) -> ServerSettings:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen {self.listen!r} must be HOST:PORT")
        return self
