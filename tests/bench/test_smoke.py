"""`python -m bench --smoke`: the harness runs end to end with tiny counts.

Proves that every section starts its processes, loads them, checks their answers, writes
the JSON and the Markdown, and stops everything it started. It never asserts a timing:
speed is what `make bench` measures, not what a test decides.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import BEGIN, END

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing"),
]

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _running_with(text: str) -> list[str]:
    """Command lines of live processes that mention `text`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                out.append(cmdline)
    return out


def test_smoke_run_writes_results_and_leaves_nothing_running(tmp_path: Path) -> None:
    work = tmp_path / "work"
    results = tmp_path / "latest.json"
    doc = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--work", str(work),
         "--results", str(results), "--doc", str(doc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(results.read_text())
    assert data["mode"] == "smoke"
    assert data["machine"]["nproc"] >= 1
    assert set(data["versions"]) >= {"python", "grpcio", "envoy", "redis-server", "h2load"}
    assert not [n for n in data["notes"] if "failed" in n], data["notes"]

    rows = {r["name"]: r for r in data["sections"]["sidecars"]["rows"]}
    assert {"floor-w1", "check-pool-rs256-w1", "rl-redis-w1"} <= set(rows)
    for row in rows.values():
        assert row["saturation"]["requests"] > 0
        assert row["saturation"]["latency"]["count"] > 0
        assert row["fixed"]["requests"] > 0
    assert rows["floor-w1"]["ratio_to_floor"] == 1.0
    assert rows["check-pool-rs256-w1"]["audit_lines"] > 0
    assert rows["floor-burn20-w1"]["ratio_to_floor"] > 0
    # The floor that awaits one Redis PING per call reached Redis, which the run watched.
    assert rows["floor-redis-w1"]["ratio_to_floor"] > 0
    assert "redis" in rows["floor-redis-w1"]["saturation"]["cpu"]["run_queue_wait"]
    # Rows that reach Redis say how long it waited for a core; rows that do not, nothing.
    assert rows["floor-redis-w1"]["saturation"]["redis_wait_us_per_slice"] >= 0
    assert rows["rl-redis-w1"]["saturation"]["redis_wait_us_per_slice"] >= 0
    assert "redis_wait_us_per_slice" not in rows["rl-memory-w1"]["saturation"]
    assert [n for n in data["notes"] if n.startswith("redis-server")], data["notes"]

    # The judged rows' saturation comes from the alternating rounds (bench.rounds).
    [targets] = data["sections"]["rounds"]["groups"]
    [judged] = targets["candidates"]
    assert judged["name"] == "check-pool-rs256-w1"
    assert len(judged["ratios"]) == 1
    assert judged["ratio_median"] > 0
    assert rows["check-pool-rs256-w1"]["saturation"]["from_rounds"] == judged["rates"]
    assert rows["floor-w1"]["saturation"]["from_rounds"] == targets["reference_rates"]

    [cost] = data["sections"]["telemetry_cost"]["groups"]
    [on] = cost["candidates"]
    assert on["ratio_median"] is not None
    assert min(cost["reference_rates"] + on["rates"]) > 0
    # 1 % sampled: an extra, paced client sent a small share of the calls.
    [share] = on["sampled_share"]
    assert 0 < share < 0.2

    edges = {c["name"]: c for c in data["sections"]["edge"]["configs"]}
    assert set(edges) == {
        "envoy-direct", "envoy-proxy", "envoy-builtin", "envoy-floor-authz",
        "envoy-floor-sidecars", "envoy-sidecars",
    }  # fmt: skip
    assert edges["envoy-builtin"]["verify"] == {"owner": 200, "other_user": 403, "no_token": 401}
    assert edges["envoy-sidecars"]["verify"] == {"owner": 200, "other_user": 403, "no_token": 401}
    for config in edges.values():
        assert config["saturation"]["statuses"].get("200", 0) > 0
    assert edges["envoy-sidecars"]["demo_limits"]["statuses"].get("429", 0) > 0

    cost = data["sections"]["redis"]["commands"]
    assert cost["evalsha_per_call"] == 1.0
    memory = data["sections"]["redis"]["memory"]
    assert memory["keys_without_ttl"] == 0
    # A few fail-open answers (a Redis call over its 10 ms timeout) depend on timing, so
    # they are counted by the bench, not asserted away here.
    assert memory["ok"] > 0
    assert memory["requests"] == data["timing"]["distinct_subjects"]
    assert memory["driver_processes"] == 2
    sidecars = {r["sidecar"]: r for r in data["sections"]["memory"]["sidecars"]}
    assert sidecars["authz"]["requests"] == data["timing"]["distinct_subjects"]
    assert sidecars["authz"]["allowed"] == sidecars["authz"]["requests"]
    assert sidecars["ratelimit"]["after_kib"]["VmHWM"] > 0

    assert data["sections"]["profiles"]["profiles"]
    assert "authz" in data["sections"]["hotpath"]

    text = doc.read_text()
    assert BEGIN in text
    assert END in text
    assert "### 1. Sidecar ceilings" in text
    assert "### 1a. The ratio targets" in text
    assert "### 1b. Telemetry cost" in text

    # Re-rendering a stored result measures nothing and gives the same tables.
    again = tmp_path / "again.md"
    subprocess.run(
        [sys.executable, "-m", "bench", "--render", str(results), "--doc", str(again)],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    assert "### 1. Sidecar ceilings" in again.read_text()

    # Every process the harness started is gone: the ones it started itself (their pids
    # are listed in logs/pids.txt) and the local stack's (their command lines name files
    # in the work directory).
    started = [
        int(line.split()[0]) for line in (work / "logs" / "pids.txt").read_text().splitlines()
    ]
    assert len(started) > 10
    assert not [pid for pid in started if _alive(pid)]
    assert not _running_with(str(work))
