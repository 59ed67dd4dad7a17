"""`python -m bench --smoke`: the harness runs end to end with tiny counts.

Proves that every section starts its processes, loads them, checks their answers, writes
the JSON and the Markdown, and stops everything it started. It never asserts a timing:
speed is what `make bench` measures, not what a test decides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.body_validation import CHECK_NAME
from bench.edge import plan
from bench.report import BEGIN, END
from tests.support.oidc_provider import provider_missing_reason

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
        timeout=400,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(results.read_text())
    assert data["mode"] == "smoke"
    assert data["machine"]["nproc"] >= 1
    assert set(data["versions"]) >= {"python", "grpcio", "envoy", "redis-server", "h2load"}
    broken = [n for n in data["notes"] if "failed" in n or "did not start" in n]
    assert not broken, broken
    sections = data["sections"]

    # Every configuration of the plan ran its rounds, answered the policy's checks, and
    # was loaded again at half of its own rate.
    edges = {c["name"]: c for c in sections["edge"]["configs"]}
    assert list(edges) == [spec.name for spec in plan()]
    rounds = data["timing"]["edge_rounds"]
    for name, config in edges.items():
        assert len(config["rounds"]) == rounds, name
        assert config["saturation"]["statuses"].get("200", 0) > 0, name
        assert config["cpu_load"]["cpu"]["cores"]["envoy"] > 0, name
        assert config["half"]["offered_rps"] == max(1, round(config["saturation"]["rate_rps"] / 2))
        if name != "envoy-proxy":
            assert config["verify"] == {"owner": 200, "other_user": 403, "no_token": 401}
    # The profiles' sidecar calls, seen in Redis: one script call per request in the
    # default profile, two with `stage0: global`.
    default = sections["edge"]["default_stack"]
    assert edges[f"edgeguard-{default}"]["saturation"]["redis_calls_per_request"] >= 0.95
    assert edges[f"edgeguard-global-{default}"]["saturation"]["redis_calls_per_request"] >= 1.9
    assert set(edges[f"edgeguard-{default}"]["cpu_load"]["cpu"]["cores"]) >= {
        "envoy", "authz", "ratelimit", "redis"
    }  # fmt: skip

    # Two replicas, one key: every answer is 200 or 429, both replicas decided some, and
    # never more than the burst was admitted unless failure-mode answers explain it.
    exact = sections["exact"]
    burst = data["timing"]["exact_burst"]
    statuses = exact["statuses"]
    assert statuses.get("200", 0) + statuses.get("429", 0) == exact["sent"] == 3 * burst
    assert all(n > 0 for n in exact["calls_per_replica"].values())
    assert len(exact["calls_per_replica"]) == 2
    unbacked = exact["store_failures"] + sum(exact["sidecar_trouble"].values())
    assert burst <= statuses["200"] <= burst + unbacked

    # Each sidecar alone on every stack.
    rows = {r["name"] for r in sections["sidecars"]["rows"]}
    assert rows == {f"{k}-{s}" for k in ("authz", "ratelimit") for s in sections["edge"]["stacks"]}
    for row in sections["sidecars"]["rows"]:
        assert row["saturation"]["rate_rps"] > 0, row["name"]

    # Body schemas: every validator's figures, and both routes through the edge, where
    # Envoy forwards the body on the route with a schema only and every answer was a 200.
    body = sections["body"]
    assert {(r["validator"], r["schema"]) for r in body["validators"]} >= {
        ("jsonschema-rs 2020-12", "demo"), ("jsonschema 2020-12", "profile"),
        ("fastjsonschema draft-07", "profile"), (CHECK_NAME, "demo"), (CHECK_NAME, "profile"),
    }  # fmt: skip
    assert all(r["valid_us"] > 0 and r["invalid_us"] > 0 for r in body["validators"])
    body_edge = body["edge"]
    assert "body:bench-with-schema" in body_edge["envoy_body_routes"]
    assert not [name for name in body_edge["envoy_body_routes"] if "no-schema" in name]
    assert body_edge["verified"]["with-schema roles"] == 422
    assert body_edge["verified"]["no-schema roles"] == 200
    for route, figures in body_edge["routes"].items():
        assert len(figures["rounds"]) == data["timing"]["body_rounds"], route
        assert all(set(x["statuses"]) == {"200"} for x in figures["rounds"]), route
        assert figures["cpu_load"]["cpu"]["cores"]["authz"] > 0, route
    assert set(body_edge["difference"]["us_by_process"]) >= {
        "envoy", "authz", "ratelimit", "servers"
    }  # fmt: skip

    # Credentials: the same rule with a cached JWT and with an API key minted by the CLI,
    # both checked and loaded every round, all 200; the key is in no stored command.
    creds = sections["credentials"]
    expected = {
        "none": 401, "jwt owner": 200, "jwt other_user": 403,
        "api_key owner": 200, "api_key other_user": 403, "api_key jwt_only_rule": 401,
    }  # fmt: skip
    if provider_missing_reason() is None:  # the real OpenID provider runs here
        expected |= {"introspected owner": 200, "introspected other_user": 403}
        assert "introspected_difference" in creds
    assert creds["verified"] == expected
    for name, figures in creds["credentials"].items():
        assert len(figures["rounds"]) == data["timing"]["credential_rounds"], name
        assert all(set(x["statuses"]) == {"200"} for x in figures["rounds"]), name
        assert figures["cpu_load"]["cpu"]["cores"]["authz"] > 0, name
    assert "ApiKey $API_KEY" in creds["credentials"]["api_key"]["saturation"]["command"]
    assert set(creds["difference"]["us_by_process"]) >= {"envoy", "authz", "servers"}
    assert not re.search(r"eg_test_[a-z2-7]{16}_", results.read_text() + doc.read_text())

    # The footprint.
    assert sections["redis"]["commands"]["evalsha_per_call"] == 1.0
    memory = sections["redis"]["memory"]
    assert memory["keys_without_ttl"] == 0
    assert memory["requests"] == data["timing"]["distinct_subjects"]
    sidecars = {r["sidecar"]: r for r in sections["memory"]["sidecars"]}
    assert sidecars["authz"]["allowed"] == sidecars["authz"]["requests"]
    assert sidecars["ratelimit"]["after_kib"]["VmHWM"] > 0

    # Every target was measured (a smoke run's figures decide nothing, so no verdict is
    # asserted), and the tables were written.
    assert all(t["measured"] is not None for t in data["targets"]), data["targets"]
    assert len(data["targets"]) == 7
    text = doc.read_text()
    assert BEGIN in text
    assert END in text
    for title in ("### Targets (issue 16)", "### The edge, side by side", "CPU per request",
                  "### Global limits with two rate-limit replicas", "### Each sidecar alone",
                  "### Redis cost", "### Sidecar memory", "### Body schemas",
                  "schema's cost", "### Credentials", "API key - JWT"):  # fmt: skip
        assert title in text, title

    # Re-rendering a stored result measures nothing and gives the same tables.
    again = tmp_path / "again.md"
    subprocess.run(
        [sys.executable, "-m", "bench", "--render", str(results), "--doc", str(again)],
        cwd=REPO,
        check=True,
        timeout=60,
    )
    assert again.read_text() == text

    # Every process the harness started is gone: the ones it started itself (their pids
    # are listed in logs/pids.txt) and the local stacks' (their command lines name files
    # in the work directory).
    started = [
        int(line.split()[0]) for line in (work / "logs" / "pids.txt").read_text().splitlines()
    ]
    assert len(started) > 10
    assert not [pid for pid in started if _alive(pid)]
    assert not _running_with(str(work))
