"""bench.driver's process mode: bodies dealt into files, driver processes against a real
rate-limit sidecar (memory store), their results merged."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import configs, driver
from bench.messages import ratelimit_request
from bench.procs import Procs, free_port, port_open, wait_until
from bench.sidecars import AUTHZ_PATH, RL_PATH

RULES = {
    "domain": "edge",
    "descriptors": [{"key": "k", "rate_limit": {"unit": "second", "requests_per_unit": 1_000_000}}],
}


def test_bodies_are_dealt_round_robin_and_read_back_whole(tmp_path: Path) -> None:
    bodies = [b"", b"x", b"\x00" * 70_000, b"last"]
    shards = [tmp_path / "a", tmp_path / "b"]
    assert driver.write_bodies(shards, bodies) == 4
    assert list(driver.read_bodies(shards[0])) == [b"", b"\x00" * 70_000]
    assert list(driver.read_bodies(shards[1])) == [b"x", b"last"]


@pytest.mark.grpc
def test_driver_processes_share_the_bodies_and_every_answer_is_checked(tmp_path: Path) -> None:
    procs = Procs(tmp_path / "logs")
    port = free_port()
    configs.write_yaml(tmp_path / "rules" / "edge.yaml", RULES)
    settings = configs.ratelimit_settings(
        listen=f"127.0.0.1:{port}", rules_dir=tmp_path / "rules", redis_url=None
    )
    path = configs.write_yaml(tmp_path / "ratelimit.yaml", settings)
    body = ratelimit_request([[("k", "v")]])
    try:
        procs.python("ratelimit", ["-m", "ratelimit_service", "serve", "--settings", str(path)])
        assert wait_until(lambda: port_open(port), timeout=30)
        result = driver.drive_in_processes(
            procs,
            "driver",
            address=f"127.0.0.1:{port}",
            method=RL_PATH,
            bodies=(body for _ in range(301)),
            check="rate_ok",
            work=tmp_path / "runs",
            processes=2,
            concurrency=8,
        )
        assert (result.sent, result.ok, result.bad, result.errors) == (301, 301, 0, 0)
        assert result.extra["processes"] == 2
        wrong = driver.drive_in_processes(  # no Check here: every call is an error
            procs,
            "wrong",
            address=f"127.0.0.1:{port}",
            method=AUTHZ_PATH,
            bodies=[body] * 5,
            check="allowed",
            work=tmp_path / "runs",
        )
        assert (wrong.sent, wrong.ok) == (5, 0)
        assert wrong.bad + wrong.errors == 5
        assert wrong.first_problem
        # The time budget: more bodies than a second allows, stopped after about a second.
        bounded = driver.drive_in_processes(
            procs,
            "bounded",
            address=f"127.0.0.1:{port}",
            method=RL_PATH,
            bodies=(body for _ in range(300_000)),
            check="rate_ok",
            work=tmp_path / "runs",
            processes=2,
            seconds=1.0,
        )
        assert bounded.extra["stopped_at_deadline"]
        assert 0 < bounded.sent < 300_000
        assert bounded.ok == bounded.sent  # every call that went out was answered
    finally:
        procs.stop_all()
