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
    cluster = RedisCluster.start(tmp_path, masters=3, replicas=1, node_timeout_ms=1000)
    cluster.owner(slot); cluster.migrate_slot(slot, to=node)   # IMPORTING/MIGRATING, MIGRATE
    cluster.kill(node); cluster.wait_for_failover(node)   # SIGKILL by pid; a replica takes over
    cluster.misplaced_keys()                      # keys on a master that does not own their slot

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def kill(self) -> None:
        """SIGKILL by pid, as a crash: no shutdown, no reply to anything in flight."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
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
    """A Redis Cluster of `masters` primaries with the slots split evenly, and `replicas`
    replicas per primary (the nodes after the masters). `cluster-require-full-coverage
    no`: the slots of a dead master fail alone, the others keep serving."""

    nodes: list[RedisServer]
    masters: int = 3

    @classmethod
    def start(
        cls, tmp: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 2000
    ) -> RedisCluster:
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters * (1 + replicas)):
                bus = free_port()
                nodes.append(
                    RedisServer.start(
                        tmp,
                        args=(
                            "--cluster-enabled", "yes",
                            "--cluster-port", str(bus),
                            "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", str(node_timeout_ms),
                            "--cluster-require-full-coverage", "no",
                            # A replica's first sync at once, not after 5 s: one that
                            # never synced is too stale to take over.
                            "--repl-diskless-sync-delay", "0",
                        ),
                    )
                )  # fmt: skip
            cluster = cls(nodes, masters)
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
        primaries = self.nodes[: self.masters]
        per = CLUSTER_SLOTS // len(primaries)
        for index, node in enumerate(primaries):
            low = index * per
            high = CLUSTER_SLOTS - 1 if index == len(primaries) - 1 else low + per - 1
            _command(node, "CLUSTER", "ADDSLOTSRANGE", low, high)
        # Every node meets every other: a full mesh at once instead of waiting for gossip.
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    _command(node, "CLUSTER", "MEET", other.host, other.port, other.bus_port)
        self._wait(lambda: all(self._knows_all(node) for node in self.nodes), "meet")
        for index, replica in enumerate(self.nodes[self.masters :]):
            master = primaries[index % self.masters]
            _command(replica, "CLUSTER", "REPLICATE", self.node_id(master))
        self._wait(lambda: all(self._node_sees_whole_cluster(n) for n in self.nodes), "form")
        self._wait(lambda: all(_synced(replica) for replica in self.nodes[self.masters :]), "sync")

    def _wait(self, done: Callable[[], bool], what: str, within: float = _START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if done():
                    return
            time.sleep(0.05)
        raise RedisStartError(f"cluster: {what} not done in {within} s")

    def _knows_all(self, node: RedisServer) -> bool:
        text = _text(_command(node, "CLUSTER", "NODES"))
        return len(text.strip().splitlines()) == len(self.nodes) and "handshake" not in text

    def _node_sees_whole_cluster(self, node: RedisServer) -> bool:
        # CLUSTER NODES, not CLUSTER SLOTS: redis 7.0 caches the latter, and a replica
        # learnt by gossip may be missing from it for a long while.
        info = _text(_command(node, "CLUSTER", "INFO"))
        lines = _cluster_nodes(node)
        replicas = [line for line in lines if "slave" in line[2]]
        owners = {port for port, _ in _slot_ranges(lines)}
        return (
            "cluster_state:ok" in info
            and len(replicas) == len(self.nodes) - self.masters
            and len(owners) == self.masters
        )

    def node_id(self, node: RedisServer) -> str:
        return _text(_command(node, "CLUSTER", "MYID"))

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def primaries(self) -> list[RedisServer]:
        """The live nodes that are masters now."""
        return [n for n in self.live() if _text(_command(n, "ROLE")[0]) == "master"]

    def owner(self, slot: int, *, ask: RedisServer | None = None) -> RedisServer:
        """The master that serves `slot`, as `ask` (default: any live master) sees it."""
        port = _owner_port(ask or self.primaries()[0], slot)
        if port is None:
            raise AssertionError(f"no master serves slot {slot}")
        return next(node for node in self.nodes if node.port == port)

    def migrate_slot(self, slot: int, *, to: RedisServer, pause_s: float = 0.0) -> int:
        """Move `slot` and its keys to master `to`, as `redis-cli --cluster reshard` does:
        SETSLOT IMPORTING on the target, MIGRATING on the source, MIGRATE the keys in
        batches, then SETSLOT NODE on the target, the source and every other master.
        With `pause_s`, one key per MIGRATE and a pause after each step (a long
        migration: clients meet ASK and TRYAGAIN). Returns how many keys moved."""
        source = self.begin_migration(slot, to=to)
        time.sleep(pause_s)
        moved = self.move_keys(slot, source=source, to=to, pause_s=pause_s)
        self.end_migration(slot, source=source, to=to)
        return moved

    def begin_migration(self, slot: int, *, to: RedisServer) -> RedisServer:
        """SETSLOT IMPORTING on `to`, MIGRATING on the owner; returns the owner."""
        source = self.owner(slot)
        _command(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        _command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
        return source

    def move_keys(
        self, slot: int, *, source: RedisServer, to: RedisServer, pause_s: float = 0.0
    ) -> int:
        """MIGRATE the slot's keys (one at a time, with a pause after each, if `pause_s`)."""
        moved = 0
        batch = 1 if pause_s else 100
        while keys := _command(source, "CLUSTER", "GETKEYSINSLOT", slot, batch):
            _command(source, "MIGRATE", to.host, to.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        return moved

    def end_migration(self, slot: int, *, source: RedisServer, to: RedisServer) -> None:
        """SETSLOT NODE on the target, the source, then every other master."""
        target_id = self.node_id(to)
        _command(to, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        _command(source, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.primaries():
            if node is not to and node is not source:
                _command(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def misplaced_keys(self) -> list[tuple[str, str]]:
        """(node, key) for each key held by a master that does not own the key's slot."""
        wrong = []
        for node in self.primaries():
            for key in _command(node, "KEYS", "*"):
                slot = int(_command(node, "CLUSTER", "KEYSLOT", key))
                if self.owner(slot, ask=node) is not node:
                    wrong.append((node.address, _text(key)))
        return wrong

    def kill(self, node: RedisServer) -> None:
        node.kill()

    def wait_for_failover(self, dead: RedisServer, within: float = 15.0) -> RedisServer:
        """Until a replica serves the dead master's slots; returns the new master."""
        slot = next(
            low
            for port, (low, _) in _slot_ranges(_cluster_nodes(self.primaries()[0]))
            if port == dead.port
        )

        def moved() -> bool:
            owners = {_owner_port(node, slot) for node in self.primaries()}
            return None not in owners and dead.port not in owners

        self._wait(moved, "failover", within)
        return self.owner(slot)

    def reset(self) -> None:
        for node in self.primaries():
            node.reset()

    def command_calls(self, name: str) -> int:
        return sum(node.command_calls(name) for node in self.live())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _command(node: RedisServer, *args: object) -> Any:
    client = node.client()
    try:
        return client.execute_command(*args)
    finally:
        client.close()


def _cluster_nodes(node: RedisServer) -> list[list[str]]:
    """CLUSTER NODES as `node` sees it, one split line per node."""
    return [line.split() for line in _text(_command(node, "CLUSTER", "NODES")).splitlines()]


def _slot_ranges(lines: list[list[str]]) -> list[tuple[int, tuple[int, int]]]:
    """(port, (first, last slot)) of every master's slot range, from CLUSTER NODES (the
    `[slot->-id]` entries of a migration in progress are not ranges it serves)."""
    ranges = []
    for fields in lines:
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for entry in fields[8:]:
            if entry.startswith("["):
                continue
            low, _, high = entry.partition("-")
            ranges.append((port, (int(low), int(high or low))))
    return ranges


def _synced(replica: RedisServer) -> bool:
    client = replica.client()
    try:
        return client.info("replication").get("master_link_status") == "up"
    finally:
        client.close()


def _owner_port(node: RedisServer, slot: int) -> int | None:
    for port, (low, high) in _slot_ranges(_cluster_nodes(node)):
        if low <= slot <= high:
            return port
    return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
