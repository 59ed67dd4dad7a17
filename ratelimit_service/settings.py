"""The service's own settings file (not the rule files), validated like every config.

Relative paths (rules, TLS files) are resolved against the settings file's directory.

server:               sidecar_runtime's shared section (listen, tls, workers, ...);
                      listen defaults to 127.0.0.1:9002
rules: rules/         rule file or directory
store:
  type: redis         memory (default) | redis
  url: redis://127.0.0.1:6390/0          standalone; or
  sentinel: {master_name: mymaster, addresses: ["10.0.0.1:26379"]}; or
  cluster: {addresses: ["10.0.0.1:7000", "10.0.0.2:7000"]}
  tls: {ca_file: ca.pem, cert_file: null, key_file: null}
                      for a rediss:// url: the CA that signed Redis's certificate (else
                      the system's CAs), and a client certificate if Redis asks for one
  username: null
  password_env: null  name of an environment variable holding the password
  timeouts: {call_ms: 10, connect_ms: 200}
  pipelined_connections: 2   standalone url: connections of the pipelined client, each
                             carrying any number of concurrent calls
  max_connections: 256       Sentinel, Cluster: redis-py's pool (one call per connection)
failure_mode: fail_open       fail_open | fail_closed (when the store fails)
key_prefix: "rl:"
max_in_flight: 256            store calls in flight; beyond, answer with the failure mode
empty_bucket_cache: {enabled: true, max_entries: 100000}
circuit_breaker: {failure_threshold: 5, failure_span_seconds: 0.2, open_seconds: 1.0,
                  probe_interval_seconds: 1.0}
                             opens after failure_threshold failures in a row that span
                             failure_span_seconds (a burst from one stall does not)
log: {level: INFO, max_lines_per_second: 10, hash_key_env: null}
reload: {watch: true, interval_seconds: 1.0}
merge_domains: false          several rule files may add descriptors to one domain (the
                              reference's MERGE_DOMAIN_CONFIG); off: a domain twice is an error
global_shadow_mode: false     every OVER_LIMIT answered OK, counted (the reference's SHADOW_MODE)
global_quota_mode: false      every limit in quota mode (the reference's QUOTA_MODE)
stats: {enabled: true, near_limit_ratio: 0.8, max_detailed_keys: 10000}
                             the reference's per-descriptor counters (docs/ratelimit.md)
debug: {listen: null}         127.0.0.1:6070: the loopback-only debug listener (/rlconfig, /json)
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sidecar_runtime.config import Frozen, read_yaml, resolve_path, validate_model
from sidecar_runtime.settings import ServerSettings
from sidecar_runtime.telemetry import TelemetrySettings

DEFAULT_LISTEN = "127.0.0.1:9002"


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


class TimeoutSettings(Frozen):
    # Envoy's rate-limit filter gives up after 20 ms by default; answer well before.
    call_ms: float = Field(default=10.0, gt=0, le=10_000)
    connect_ms: float = Field(default=200.0, gt=0, le=30_000)


class SentinelSettings(Frozen):
    master_name: str = Field(min_length=1)
    addresses: list[str] = Field(min_length=1)
    password_env: str | None = None  # the sentinels' own password, if any

    @model_validator(mode="after")
    def _addresses(self) -> SentinelSettings:
        for address in self.addresses:
            _host_port(address)
        return self


class ClusterSettings(Frozen):
    addresses: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _addresses(self) -> ClusterSettings:
        for address in self.addresses:
            _host_port(address)
        return self


class RedisTlsSettings(Frozen):
    """TLS to Redis for a `rediss://` url. Redis's certificate is always verified and its
    name checked against the url's host; `ca_file` replaces the system's CAs (a private
    CA, as Redis deployments often use). `cert_file` + `key_file`: the client certificate
    Redis asks for with `tls-auth-clients yes`."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    _relative_to_config = field_validator("ca_file", "cert_file", "key_file")(resolve_path)

    @model_validator(mode="after")
    def _usable(self) -> RedisTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name} {value} does not exist")
        try:
            self.context()
        except (ssl.SSLError, OSError) as exc:  # not PEM, a key that does not fit, ...
            raise ValueError(f"unusable TLS files: {exc}") from None
        return self

    def context(self) -> ssl.SSLContext:
        """A client context: verifies the server's certificate and host name."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class StoreSettings(Frozen):
    type: Literal["memory", "redis"] = "memory"
    url: str | None = None
    sentinel: SentinelSettings | None = None
    cluster: ClusterSettings | None = None
    tls: RedisTlsSettings | None = None
    username: str | None = None
    password_env: str | None = None
    db: int = Field(default=0, ge=0)
    timeouts: TimeoutSettings = TimeoutSettings()
    # Standalone: calls pipeline on a few long-lived connections (redis_pipe); one is
    # enough for throughput, a second keeps calls flowing while another reconnects.
    pipelined_connections: int = Field(default=2, ge=1, le=64)
    max_connections: int = Field(default=256, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_topology(self) -> StoreSettings:
        chosen = [n for n in ("url", "sentinel", "cluster") if getattr(self, n) is not None]
        if self.type == "memory" and chosen:
            raise ValueError(f"{chosen[0]} is only for type: redis")
        if self.type == "redis" and len(chosen) != 1:
            raise ValueError("type redis needs exactly one of url, sentinel, cluster")
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        if self.tls is not None and not (self.url or "").startswith("rediss://"):
            # Sentinel and Cluster over TLS are not supported (yet): refused, not ignored.
            raise ValueError("tls is for a rediss:// url")
        return self


class CacheSettings(Frozen):
    enabled: bool = True
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)


class BreakerSettings(Frozen):
    failure_threshold: int = Field(default=5, ge=1, le=1000)
    # The failures in a row must also span this long: a burst of timeouts from one stall
    # of a loaded process must not open the breaker (circuit_breaker.CircuitBreaker).
    failure_span_seconds: float = Field(default=0.2, ge=0, le=60)
    open_seconds: float = Field(default=1.0, gt=0, le=300)
    probe_interval_seconds: float = Field(default=1.0, gt=0, le=300)


class LogSettings(Frozen):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_lines_per_second: float = Field(default=10.0, gt=0, le=10_000)
    # Descriptor values are logged as keyed hashes; with a shared key, hashes correlate
    # across replicas. Without one, each process picks a random key.
    hash_key_env: str | None = None
    # Where decision lines (audit schema, docs/audit-schema.md) go: stdout, stderr or a file.
    decisions_target: str = "stdout"


class ReloadSettings(Frozen):
    watch: bool = True
    interval_seconds: float = Field(default=1.0, ge=0.05, le=3600)


class StatsSettings(Frozen):
    """The reference's per-descriptor counters (total_hits, over_limit, near_limit,
    within_limit, shadow_mode), keyed as it keys them."""

    enabled: bool = True
    # The reference's NEAR_LIMIT_RATIO: a hit past this share of the limit is near_limit.
    near_limit_ratio: float = Field(default=0.8, gt=0, le=1)
    # `detailed_metric` and `value_to_metric` put request values into keys: at most this
    # many such keys are kept; beyond, hits count under the limit's own key.
    max_detailed_keys: int = Field(default=10_000, ge=0, le=1_000_000)


class DebugSettings(Frozen):
    """The debug listener: plain HTTP, loopback only (it answers without credentials)."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _loopback_only(cls, listen: str | None) -> str | None:
        if listen is None:
            return None
        host, _ = _host_port(listen)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"the debug listener must be on a loopback address, not {host}")
        return listen


class ServiceSettings(Frozen):
    server: ServerSettings = ServerSettings(listen=DEFAULT_LISTEN)
    rules: Path
    store: StoreSettings = StoreSettings()
    failure_mode: Literal["fail_open", "fail_closed"] = "fail_open"
    key_prefix: str = Field(default="rl:", max_length=64, pattern=r"^[^{}\s]*$")
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    empty_bucket_cache: CacheSettings = CacheSettings()
    circuit_breaker: BreakerSettings = BreakerSettings()
    log: LogSettings = LogSettings()
    reload: ReloadSettings = ReloadSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    merge_domains: bool = False
    global_shadow_mode: bool = False
    global_quota_mode: bool = False
    stats: StatsSettings = StatsSettings()
    debug: DebugSettings = DebugSettings()

    _rules_relative_to_file = field_validator("rules")(resolve_path)

    @model_validator(mode="before")
    @classmethod
    def _default_listen(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("server"), dict):
            data = {**data, "server": {"listen": DEFAULT_LISTEN, **data["server"]}}
        return data


def load_settings(path: Path, overrides: dict[str, Any] | None = None) -> ServiceSettings:
    """Read the settings file, apply command-line overrides and validate. Relative paths
    (rules, TLS files) are resolved against the file's directory."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = _merge(data, overrides or {})
    return validate_model(ServiceSettings, data, path)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def host_port(address: str) -> tuple[str, int]:
    """Split a validated HOST:PORT."""
    return _host_port(address)
