"""Real redis-server processes for tests: one standalone server, or a 3-master Cluster.

    server = RedisServer.start(tmp_path)          # free loopback port, no persistence
    server.url                                    # redis://127.0.0.1:PORT/0
    server.stop(); server.restart()               # same port, fresh (empty) data
    server.pause(); server.resume()               # SIGSTOP/SIGCONT: a hung server
    with server.paused(): ...                     # the same around a block
    RedisServer.start(tmp_path, password="s3cret") # --requirepass; client() logs in
    RedisServer.start(tmp_path, tls=RedisTls.from_pki(pki))  # TLS only; url is rediss://

    cluster = RedisCluster.start(tmp_path, masters=3)
    cluster.addresses                             # ["127.0.0.1:PORT", ...]
    cluster.stop()

    sentinel = RedisSentinel.start(tmp_path, server, master_name="mymaster")
    sentinel.address                              # 127.0.0.1:PORT of the sentinel

Every process is started with `--save "" --appendonly no`, bound to 127.0.0.1, in its own
directory under the given tmp dir, and stopped by its pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devstack.pki import Pki

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CLUSTER_SLOTS = 16384
_START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class RedisTls:
    """A TLS-only redis-server (`--port 0 --tls-port PORT`): its certificate and key, the
    CA it checks client certificates with, whether it asks for one (`auth_clients`: no,
    yes or optional), and the client certificate its inspection client() presents."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path
    client_key: Path
    auth_clients: str = "no"

    @classmethod
    def from_pki(cls, pki: Pki, *, auth_clients: str = "no") -> RedisTls:
        return cls(
            pki.sidecar_cert, pki.sidecar_key, pki.ca, pki.client_cert, pki.client_key, auth_clients
        )

    def server_args(self, port: int) -> tuple[str, ...]:
        return (
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", self.auth_clients,
        )  # fmt: skip


@dataclass
class RedisServer:
    """One redis-server child process."""

    directory: Path
    port: int
    extra_args: tuple[str, ...] = ()
    config_text: str | None = None  # written to a config file given first (sentinel mode)
    password: str | None = None  # --requirepass; the inspection client() logs in with it
    tls: RedisTls | None = None  # TLS only, on `port`
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        tmp: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        config_text: str | None = None,
        password: str | None = None,
        tls: RedisTls | None = None,
    ) -> RedisServer:
        """Start on `port` (or a free one, retried on a race) and wait until it answers.
        With `password`, clients must AUTH (`--requirepass`); with `tls`, speak TLS."""
        for attempt in range(3):
            server = cls(Path(tmp), port or free_port(), tuple(args), config_text, password, tls)
            try:
                server._launch()
                return server
            except RedisStartError:
                server.stop()
                if port is not None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def client(self) -> redis.Redis:
        """A synchronous client for test set-up and inspection."""
        if self.tls is None:
            return redis.Redis(
                host=self.host, port=self.port, password=self.password, socket_timeout=5
            )
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=5,
            ssl=True,
            ssl_ca_certs=str(self.tls.ca),
            ssl_certfile=str(self.tls.client_cert),
            ssl_keyfile=str(self.tls.client_key),
        )

    def _launch(self) -> None:
        workdir = self.directory / f"redis-{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config: list[str] = []
        if self.config_text is not None:
            config_file = workdir / "redis.conf"
            config_file.write_text(self.config_text)
            config = [str(config_file)]
        listen = ("--port", str(self.port)) if self.tls is None else self.tls.server_args(self.port)
        cmd = [
            REDIS_SERVER,
            *config,
            *listen,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
            "--daemonize", "no",
            *(("--requirepass", self.password) if self.password else ()),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(workdir)

    def _wait_ready(self, workdir: Path) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    log = workdir / "redis.log"
                    tail = log.read_text()[-500:] if log.exists() else ""
                    raise RedisStartError(f"redis-server on {self.port} exited: {tail}")
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                time.sleep(0.02)
        finally:
            client.close()
        raise RedisStartError(f"redis-server on {self.port} did not answer in {_START_TIMEOUT_S}s")

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it does not exit within 5 s. Idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Start again on the same port (the data is gone: no persistence)."""
        self.stop()
        self._launch()

    @property
    def bus_port(self) -> int | None:
        """The cluster bus port, for a cluster node."""
        if "--cluster-port" not in self.extra_args:
            return None
        return int(self.extra_args[self.extra_args.index("--cluster-port") + 1])

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing answers."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Frozen for the block, and resumed whatever the block raised."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def reset(self) -> None:
        """Empty the data, the scripts and the command statistics (between tests)."""
        client = self.client()
        try:
            client.flushall()
            client.script_flush()
            client.config_resetstat()
        finally:
            client.close()

    def command_calls(self, name: str) -> int:
        """How often a command ran since the last reset (INFO commandstats)."""
        client = self.client()
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        entry = stats.get(f"cmdstat_{name.lower()}")
        return int(entry["calls"]) if isinstance(entry, dict) else 0


@dataclass
class RedisCluster:
    """A Redis Cluster of `masters` primaries (no replicas) with the slots split evenly."""

    nodes: list[RedisServer]

    @classmethod
    def start(cls, tmp: Path, *, masters: int = 3) -> RedisCluster:
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters):
                bus = free_port()
                nodes.append(
                    RedisServer.start(
                        tmp,
                        args=(
                            "--cluster-enabled", "yes",
                            "--cluster-port", str(bus),
                            "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", "2000",
                        ),
                    )
                )  # fmt: skip
            cluster = cls(nodes)
            cluster._form()
            return cluster
        except BaseException:
            for node in nodes:
                node.stop()
            raise

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def _form(self) -> None:
        per = CLUSTER_SLOTS // len(self.nodes)
        for index, node in enumerate(self.nodes):
            low = index * per
            high = CLUSTER_SLOTS - 1 if index == len(self.nodes) - 1 else low + per - 1
            client = node.client()
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            finally:
                client.close()
        # Every node meets every other: a full mesh at once instead of waiting for gossip.
        for node in self.nodes:
            client = node.client()
            try:
                for other in self.nodes:
                    if other is not node:
                        client.execute_command(
                            "CLUSTER", "MEET", other.host, other.port, other.bus_port
                        )
            finally:
                client.close()
        self._wait_converged()

    def _wait_converged(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._node_sees_whole_cluster(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise RedisStartError("cluster did not converge")

    def _node_sees_whole_cluster(self, node: RedisServer) -> bool:
        client = node.client()
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            slots = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        return "cluster_state:ok" in text and len(slots) == len(self.nodes)

    def reset(self) -> None:
        for node in self.nodes:
            node.reset()

    def command_calls(self, name: str) -> int:
        return sum(node.command_calls(name) for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class RedisSentinel:
    """One Sentinel watching one master (quorum 1): enough to test Sentinel discovery."""

    server: RedisServer
    master_name: str

    @classmethod
    def start(
        cls, tmp: Path, master: RedisServer, *, master_name: str = "mymaster"
    ) -> RedisSentinel:
        config = (
            f"sentinel monitor {master_name} {master.host} {master.port} 1\n"
            f"sentinel down-after-milliseconds {master_name} 1000\n"
        )
        return cls(RedisServer.start(tmp, args=("--sentinel",), config_text=config), master_name)

    @property
    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self.server.stop()
