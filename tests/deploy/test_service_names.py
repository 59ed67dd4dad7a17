"""Issue 21 part 2: the dev certificates carry the names the sidecars are reached by in each
topology, every rendered Envoy config checks exactly that name, and the dev Redis asks
for a password (devstack.redis_auth)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from devstack.envoy_config import PROFILES, build, sidecar_server_name
from devstack.kubernetes import envoy_config_text
from devstack.pki import SIDECAR_NAMES, Pki, certificate_names, ensure_pki, issue_certificate
from devstack.redis_auth import (
    CONF_FILE,
    ensure_redis_password,
    parse_assignments,
    secret_environment,
)
from tests.envoy.envoy_process import free_port_params, running_envoy
from tests.envoy.fakes import FakeAuthz, FakeRateLimit
from tests.support.processes import wait_until

REPO = Path(__file__).resolve().parents[2]
# What each topology's Envoy dials the sidecars by, and must verify.
EXPECTED = {
    "local": {"authz": "localhost", "ratelimit": "localhost"},
    "compose": {"authz": "authz", "ratelimit": "ratelimit"},
    "kubernetes": {"authz": "localhost", "ratelimit": "localhost"},
}
CHECKED_IN = {
    "local": (REPO / "envoy" / "envoy.local.yaml").read_text(),
    "compose": (REPO / "envoy" / "envoy.compose.yaml").read_text(),
    "kubernetes": envoy_config_text(),
}


def _tls(config: dict[str, Any], cluster: str) -> dict[str, Any]:
    [found] = [c for c in config["static_resources"]["clusters"] if c["name"] == cluster]
    context: dict[str, Any] = found["transport_socket"]["typed_config"]
    return context


def test_every_topology_is_covered() -> None:
    assert set(EXPECTED) == set(PROFILES)


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("cluster", ["authz", "ratelimit"])
def test_rendered_envoy_configs_verify_the_sidecars_name(profile: str, cluster: str) -> None:
    name = EXPECTED[profile][cluster]
    for config in (build(PROFILES[profile]()), yaml.safe_load(CHECKED_IN[profile])):
        tls = _tls(config, cluster)
        assert tls["sni"] == name
        validation = tls["common_tls_context"]["validation_context"]
        assert validation["match_typed_subject_alt_names"] == [
            {"san_type": "DNS", "matcher": {"exact": name}}
        ]


@pytest.mark.parametrize(
    ("host", "override", "expected"),
    [
        ("127.0.0.1", None, "localhost"),
        ("::1", None, "localhost"),
        ("authz", None, "authz"),
        ("10.0.0.7", None, "10.0.0.7"),
        ("authz", "authz.edge.svc", "authz.edge.svc"),
    ],
)
def test_server_name_follows_the_address(host: str, override: str | None, expected: str) -> None:
    assert sidecar_server_name(host, override) == expected


def test_an_address_is_checked_as_an_ip_san_without_sni() -> None:
    config = build(dataclasses.replace(PROFILES["local"](), authz_host="10.0.0.7"))
    tls = _tls(config, "authz")
    assert "sni" not in tls  # RFC 6066: SNI is for host names
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}
    ]


def test_dev_sidecar_certificate_carries_every_name_envoy_checks(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    names = set(certificate_names(pki.sidecar_cert))
    assert {name for names_ in EXPECTED.values() for name in names_.values()} <= names
    assert set(SIDECAR_NAMES) <= names
    cert = x509.load_pem_x509_certificate(pki.sidecar_cert.read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # Server for Envoy; client for the sidecar's own health probe (Kubernetes).
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # The listener's certificate is not a sidecar's under the compose names.
    assert not {"authz", "ratelimit"} & set(certificate_names(pki.envoy_cert))


def test_a_pki_made_before_the_service_names_is_made_again(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    ca_key = serialization.load_pem_private_key((pki.root / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    old_pem, _ = issue_certificate(
        common_name="edgeguard-sidecar",
        ca_cert=ca_cert,
        ca_key=ca_key,  # type: ignore[arg-type]
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=("localhost", "127.0.0.1", "::1"),
    )
    pki.sidecar_cert.write_bytes(old_pem)
    ensure_pki(tmp_path / "pki")
    assert set(SIDECAR_NAMES) <= set(certificate_names(pki.sidecar_cert))
    assert pki.sidecar_cert.read_bytes() != old_pem


# --- the dev Redis password ----------------------------------------------------------------


def test_redis_password_is_made_once_group_readable_and_in_the_conf(tmp_path: Path) -> None:
    password_file = ensure_redis_password(tmp_path)
    password = password_file.read_text().strip()
    assert len(password) >= 40
    conf = tmp_path / CONF_FILE
    assert conf.read_text() == f"requirepass {password}\n"
    for path in (password_file, conf):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(password_file.parent.stat().st_mode) == 0o750
    assert ensure_redis_password(tmp_path).read_text().strip() == password


def test_secret_env_reads_the_first_line(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    env = secret_environment(parse_assignments([f"REDIS_PASSWORD={secret}"]))
    assert env["REDIS_PASSWORD"] == "s3cret"
    assert env["PATH"] == os.environ["PATH"]
    for bad in ("NOEQUALS", "=file", "A B=file", "A="):
        with pytest.raises(ValueError, match="NAME=FILE"):
            parse_assignments([bad])


def test_with_secret_env_execs_the_command_with_the_variable(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    code = "import os, sys; print(os.environ['REDIS_PASSWORD'], sys.argv[1:])"
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "with-secret-env", f"REDIS_PASSWORD={secret}",
         "--", sys.executable, "-c", code, "--flag"],
        capture_output=True, text=True, check=False, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "s3cret ['--flag']"
    refused = subprocess.run(
        [sys.executable, "-m", "devstack", "with-secret-env", f"REDIS_PASSWORD={secret}"],
        capture_output=True, text=True, check=False, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert refused.returncode == 2


# --- the real Envoy: a certificate of the same CA without the name is refused -------------


@pytest.mark.e2e
def test_envoy_refuses_a_sidecar_certificate_without_the_expected_name(tmp_path: Path) -> None:
    """Compose's names on loopback: the authz fake shows the dev sidecar certificate
    (it carries `authz`); the rate-limit fake shows the listener's (same CA, no
    `ratelimit`), which Envoy must refuse for its SAN."""
    pki = ensure_pki(tmp_path / "pki")
    impostor = Pki(tmp_path / "impostor")
    impostor.root.mkdir()
    shutil.copy(pki.ca, impostor.ca)
    shutil.copy(pki.envoy_cert, impostor.sidecar_cert)
    shutil.copy(pki.envoy_key, impostor.sidecar_key)
    params = free_port_params(pki, authz_server_name="authz", ratelimit_server_name="ratelimit")
    authz = FakeAuthz(pki, params.authz_port)
    ratelimit = FakeRateLimit(impostor, params.ratelimit_port)
    authz.start()
    ratelimit.start()
    try:
        with running_envoy(params, pki, tmp_path) as envoy:
            refused = wait_until(
                lambda: envoy.stat("cluster.ratelimit.ssl.fail_verify_san") > 0, timeout=15
            )
            assert refused, envoy.log_text()
            assert wait_until(lambda: envoy.stat("cluster.authz.membership_healthy") == 1)
            assert envoy.stat("cluster.authz.ssl.fail_verify_san") == 0
            assert envoy.stat("cluster.ratelimit.membership_healthy") == 0
            assert envoy.request("/healthz").status == 503
    finally:
        authz.stop()
        ratelimit.stop()
