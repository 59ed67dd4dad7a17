"""Run `python -m ratelimit_service serve` as a child process and find its port in its log."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def write_settings(path: Path, rules: Path, **overrides: Any) -> Path:
    """A settings file listening on a free loopback port; `overrides` are top-level keys
    (`server` is merged into the default one). No drain period unless `server` sets one:
    tests that stop a service do not wait for load balancers that are not there."""
    server = {"listen": "127.0.0.1:0", "drain_period_seconds": 0, **overrides.pop("server", {})}
    data: dict[str, Any] = {
        "server": server,
        "rules": str(rules),
        "store": {"type": "memory"},
        **overrides,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def wait_for(self, event: str, *, count: int = 1, timeout: float = 20.0) -> dict[str, Any]:
        """The `count`-th log line with this event (e.g. "serving"), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if line.get("event") == event]
            if len(found) >= count:
                return found[count - 1]
            if self.process.poll() is not None:
                raise AssertionError(
                    f"service exited {self.process.returncode}: {self.log.read_text()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} line in {timeout}s: {self.log.read_text()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM by pid; SIGKILL after 10 s. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


def start_service(args: Sequence[str], log: Path) -> ServiceProcess:
    """Start `ratelimit-service ARGS` (not waiting for it to serve)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ratelimit_service", *args], stdout=out, stderr=subprocess.STDOUT
        )
    return ServiceProcess(process, log)


@contextlib.contextmanager
def serving(settings: Path, log: Path) -> Iterator[ServiceProcess]:
    """A `serve` process that is listening; always stopped on exit."""
    service = start_service(["serve", "--settings", str(settings)], log)
    try:
        service.port = int(service.wait_for("serving")["port"])
        yield service
    finally:
        service.stop()
