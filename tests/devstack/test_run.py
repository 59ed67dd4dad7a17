"""`make run` as a user runs it: the whole stack in the foreground, Ctrl-C stops everything."""

from __future__ import annotations

import dataclasses
import random
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devstack.stack import Ports
from tests.support.processes import children_of, port_is_free, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _offset() -> int:
    """A shift for the stack's default ports that puts every one of them below the
    kernel's ephemeral range (tests.support.processes.free_port says why) and free now."""
    defaults = [getattr(Ports(), field.name) for field in dataclasses.fields(Ports)]
    rng = random.Random()
    for _ in range(200):
        offset = rng.randrange(10_000 - min(defaults), 32_768 - max(defaults))
        if all(port_is_free(port + offset) for port in defaults):
            return offset
    raise RuntimeError("no free block of ports below the ephemeral range")


def test_run_serves_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    offset = _offset()
    out = tmp_path / "run.out"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run", "--dev-dir", str(tmp_path / "dev"),
             "--port-offset", str(offset)],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert wait_until(lambda: b"edgeguard is up" in out.read_bytes(), timeout=60), (
            out.read_text()
        )
        banner = out.read_text()
        assert "curl --cacert" in banner
        assert "grpcurl" in banner
        children = children_of(proc.pid)
        assert len(children) >= 4  # redis (or not), ratelimit, authz, envoy
        ctx = ssl.create_default_context(cafile=str(tmp_path / "dev" / "pki" / "ca.pem"))
        url = f"https://localhost:{8443 + offset}/api/v1/public/ping"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        time.sleep(0.2)
        assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
