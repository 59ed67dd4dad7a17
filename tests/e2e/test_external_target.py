"""The suite against a running stack (docs/testing.md): its settings, the client's pacing,
and `scripts/compose-test`, whose Docker is replaced here by a stand-in script.

The compose stand-in answers `docker` the way the script asks it (info, compose config,
up, run ... tar, port, down) and serves a Stack started here: so the script's whole path
(the secrets copied out, the external settings, the suite's subset, the teardown) runs
without a Docker engine. Only the real images and network are not exercised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import REPO
from tests.e2e.conftest import Edge, running_stack
from tests.support import e2e_target
from tests.support.e2e_target import CommandMinter, KeyMinter, TargetError, from_environ
from tests.support.pacing import Limit, Pacer, rule_limits

SCRIPT = REPO / "scripts" / "compose-test"
ENGINE_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
# A `docker` that knows just what scripts/compose-test asks of it (module docstring).
FAKE_DOCKER = f"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  info) [ -n "${{FAKE_DOCKER_ENGINE:-}}" ] && {{ echo 27.0.0; exit 0; }}
        echo "{ENGINE_DOWN}" >&2; exit 1 ;;
  image) exit 0 ;;
  compose)
    shift; [ "$1" = -p ] && shift 2
    case "$1" in
      version) echo "Docker Compose version v2.30.0" ;;
      config) echo '{{"services": {{"redis": {{"image": "redis:7.0-alpine"}},
                                     "envoy": {{"image": "edgeguard:dev", "build": {{}}}}}}}}' ;;
      run) tar -C "$FAKE_DEV_DIR" -cf - pki idp ;;
      port) echo "$FAKE_LISTENER" ;;
    esac ;;
esac
"""


# --- settings --------------------------------------------------------------------------------


def test_without_settings_the_suite_starts_its_own_stack() -> None:
    assert from_environ({}) is None
    assert from_environ({"EDGEGUARD_E2E_TARGET": "self"}) is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EDGEGUARD_E2E_TARGET": "elsewhere"}, "EDGEGUARD_E2E_TARGET"),
        ({"EDGEGUARD_E2E_URL": "http://127.0.0.1:8443"}, "EDGEGUARD_E2E_URL"),
        ({"EDGEGUARD_E2E_CA": "/no/such/ca.pem"}, "EDGEGUARD_E2E_CA"),
        ({"EDGEGUARD_E2E_PKI": "/no/such/dir"}, "EDGEGUARD_E2E_PKI"),
        ({"EDGEGUARD_E2E_IDP_KEYS": "/no/such/dir"}, "EDGEGUARD_E2E_IDP_KEYS"),
        ({"EDGEGUARD_E2E_AUTHZ_ADDR": "authz"}, "EDGEGUARD_E2E_AUTHZ_ADDR"),
        ({"EDGEGUARD_E2E_STAGE0": "both"}, "EDGEGUARD_E2E_STAGE0"),
        ({"EDGEGUARD_E2E_FRESH_SOURCES": "maybe"}, "EDGEGUARD_E2E_FRESH_SOURCES"),
        (
            {"EDGEGUARD_E2E_URL": "https://edge.example", "EDGEGUARD_E2E_FRESH_SOURCES": "1"},
            "EDGEGUARD_E2E_FRESH_SOURCES",
        ),
    ],
)
def test_a_bad_setting_is_refused_naming_the_variable(
    pki_and_keys: Path, env: dict[str, str], named: str
) -> None:
    base = {
        "EDGEGUARD_E2E_TARGET": "external",
        "EDGEGUARD_E2E_PKI": str(pki_and_keys / "pki"),
        "EDGEGUARD_E2E_IDP_KEYS": str(pki_and_keys),
    }
    with pytest.raises(TargetError, match=named):
        from_environ({**base, **env})


def test_a_target_needs_a_ca_and_one_way_to_mint_tokens(pki_and_keys: Path) -> None:
    external = {"EDGEGUARD_E2E_TARGET": "external"}
    with pytest.raises(TargetError, match="EDGEGUARD_E2E_CA"):
        from_environ(external)
    with_ca = {**external, "EDGEGUARD_E2E_CA": str(pki_and_keys / "pki" / "ca.pem")}
    with pytest.raises(TargetError, match="IDP_KEYS or EDGEGUARD_E2E_TOKEN_COMMAND"):
        from_environ(with_ca)
    both = {
        **with_ca,
        "EDGEGUARD_E2E_IDP_KEYS": str(pki_and_keys),
        "EDGEGUARD_E2E_TOKEN_COMMAND": "true",
    }
    with pytest.raises(TargetError, match="not both"):
        from_environ(both)


def test_the_settings_of_a_target(pki_and_keys: Path) -> None:
    target = from_environ(
        {
            "EDGEGUARD_E2E_TARGET": "external",
            "EDGEGUARD_E2E_URL": "https://127.0.0.1:18443",
            "EDGEGUARD_E2E_PKI": str(pki_and_keys / "pki"),
            "EDGEGUARD_E2E_IDP_KEYS": str(pki_and_keys),  # a dev dir: its idp/ is used
            "EDGEGUARD_E2E_ISSUER": "http://idp:8082",
            "EDGEGUARD_E2E_RATELIMIT_ADDR": "127.0.0.1:19002",
            "EDGEGUARD_E2E_STAGE0": "global",
            "EDGEGUARD_E2E_FRESH_SOURCES": "1",
        }
    )
    assert target is not None
    assert (target.host, target.port, target.server_name) == ("127.0.0.1", 18443, "localhost")
    assert target.ca == pki_and_keys / "pki" / "ca.pem"
    assert dict(target.sidecars) == {"ratelimit": "127.0.0.1:19002"}
    assert (target.stage0, target.fresh_sources, target.redis_url) == ("global", True, None)
    assert isinstance(target.minter, KeyMinter)
    assert target.idp_keys is not None
    assert target.idp_keys.root == pki_and_keys / "idp"


def test_the_token_command_gets_the_request_and_its_token_is_used(pki_and_keys: Path) -> None:
    command = f"{sys.executable} -m tests.support.sign_token --keys {pki_and_keys / 'idp'}"
    minter = CommandMinter(tuple(command.split()))
    token = minter(issuer="http://idp:8082", audience="api://demo", subject="alice", roles=["a"])
    assert token.count(".") == 2
    failing = CommandMinter((sys.executable, "-c", "import sys; sys.exit('no keys')"))
    with pytest.raises(TargetError, match="no keys"):
        failing(subject="alice")


@pytest.fixture(scope="module")
def pki_and_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev dir with a PKI and IdP keys, as `python -m devstack init` makes them."""
    dev = tmp_path_factory.mktemp("dev")
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "init", "--dev-dir", str(dev)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return dev


# --- pacing ----------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_pacer_keeps_under_every_bucket_it_is_given() -> None:
    clock = FakeTime()
    pacer = Pacer(
        {"address": Limit(20, 40), "subject": Limit(10, 20)},
        share=0.5,
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )
    keys = {"a": "address", "s:alice": "subject"}
    for _ in range(10):  # the subject's burst at half share, without waiting
        pacer.acquire(keys)
    assert clock.now == 100.0
    pacer.acquire(keys)  # then one token per 1/5 s
    assert clock.now == pytest.approx(100.2)
    pacer.acquire({"a": "address", "s:bob": "subject"})  # another subject: its own bucket
    assert clock.now == pytest.approx(100.2)
    pacer.refill()
    pacer.acquire(keys)
    assert clock.now == pytest.approx(100.2)


def test_the_pacer_reads_the_demo_rules() -> None:
    limits = rule_limits()
    assert limits["per-client-address"] == Limit(20, 40)
    assert limits["per-subject"] == Limit(10, 20)
    assert limits["admin-stats-route"] == Limit(5, 10)


# --- scripts/compose-test ----------------------------------------------------------------------


def _compose_test(
    tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """scripts/compose-test with the stand-in `docker` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    # Nothing of an outer run's: its settings, a stand-in of its own, the script's knobs.
    outer = (e2e_target.PREFIX, "FAKE_DOCKER_", "FAKE_DEV_", "FAKE_LISTENER", "COMPOSE_TEST_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(outer)}
    # A session of its own: on a timeout every process of it goes (the script's `timeout`
    # puts pytest in a process group of its own, so a group kill would leave it running).
    with subprocess.Popen(
        [str(SCRIPT), *args],
        env={
            **clean,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHON": sys.executable,
            "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_session(session: int) -> None:
    """SIGKILL every process of the session the script leads (read from /proc, Linux)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # state, ppid, pgrp, session
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def test_compose_test_without_a_docker_engine_says_skipped(tmp_path: Path) -> None:
    done = _compose_test(tmp_path, env={})
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("compose-test: SKIPPED: the Docker engine is not reachable")
    assert ENGINE_DOWN in last
    assert done.returncode == 0
    required = _compose_test(tmp_path, env={"COMPOSE_TEST_REQUIRE_DOCKER": "1"})
    assert "SKIPPED" in required.stdout
    assert required.returncode == 3
    assert "compose" not in (tmp_path / "docker.log").read_text()  # nothing was started


def _stand_in(edge: Edge, listener: str, issuer: str) -> dict[str, str]:
    """The stand-in `docker`'s settings: an engine, `edge`'s secrets, its listener."""
    return {
        "FAKE_DOCKER_ENGINE": "1",
        "FAKE_DEV_DIR": str(edge.stack.options.dev_dir),
        "FAKE_LISTENER": listener,
        "COMPOSE_TEST_ISSUER": issuer,
    }


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with running_stack(tmp_path_factory.mktemp("compose-stand-in")) as edge:
        yield edge


# A few of each kind: tokens and policy, TLS, raw HTTP/1.1, HTTP/2, gRPC, a flood.
SUBSET = [
    "tests/e2e/test_edge.py",
    "tests/e2e/test_grpc.py",
    "tests/e2e/test_rate_limits.py",
    "-k",
    "valid_token or invalid_token or idor or ambiguous_framing or tls13_is_preferred"
    " or walk_through or per_subject_limit or tokens_never_appear",
]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.own_stack("starts the stack that stands in for compose")
def test_compose_test_runs_the_suite_against_the_stack_and_takes_it_down(
    running: Edge, tmp_path: Path
) -> None:
    # Published on every address, as compose may report it: the script asks 127.0.0.1.
    env = _stand_in(running, f"0.0.0.0:{running.ports.envoy}", running.stack.issuer)

    done = _compose_test(tmp_path, *SUBSET, env=env, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "compose-test: PASSED"
    # Some of the subset ran, and what needs a stack of its own was skipped, saying why.
    assert " passed" in done.stdout
    assert "own_stack: scans the log files" in done.stdout
    calls = (tmp_path / "docker.log").read_text().splitlines()
    compose = [c for c in calls if c.startswith("compose")]
    assert compose[-1].endswith("down -v --remove-orphans")
    assert any(" up -d --build --wait" in c for c in compose)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.own_stack("starts the stack that stands in for compose")
def test_compose_test_fails_when_the_suite_fails_and_still_takes_it_down(
    running: Edge, tmp_path: Path
) -> None:
    # The wrong issuer: every token is refused, so the suite fails.
    env = _stand_in(running, f"127.0.0.1:{running.ports.envoy}", "http://idp.invalid:8082")

    done = _compose_test(tmp_path, "tests/e2e/test_edge.py", "-k", "valid_token", env=env)

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("compose-test: FAILED: the e2e suite")
    calls = (tmp_path / "docker.log").read_text().splitlines()
    assert calls[-1].endswith("down -v --remove-orphans")
