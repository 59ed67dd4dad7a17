"""docker-compose.yml and the Dockerfile: structure, and configs that exist and validate.

Docker itself does not run on this machine; these tests check what a reviewer would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.configs import COMPOSE_DEV_DIR, COMPOSE_PKI, compose_files
from devstack.peppers import ensure_pepper
from devstack.pki import Pki, ensure_pki
from devstack.redis_auth import CONF_FILE, PASSWORD_ENV, PASSWORD_FILE

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if svc.get("image") == "edgeguard:dev"]


def _app_path(container_path: str) -> Path:
    assert container_path.startswith("/app/"), container_path
    return REPO / container_path.removeprefix("/app/")


def test_topology_of_section_4() -> None:
    assert {"envoy", "authz", "ratelimit", "redis", "upstream", "idp", "init"} <= set(SERVICES)
    assert SERVICES["envoy"]["ports"] == ["127.0.0.1:8443:8443"]
    exposed = [name for name, svc in SERVICES.items() if svc.get("ports")]
    assert exposed == ["envoy"], "only Envoy is reachable from outside"


@pytest.mark.parametrize("name", OURS)
def test_hardened_services(name: str) -> None:
    svc = SERVICES[name]
    assert svc["read_only"] is True
    assert not str(svc["user"]).startswith("0")
    assert svc["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in svc["security_opt"]


@pytest.mark.parametrize("name", ["envoy", "authz", "ratelimit", "redis", "upstream", "idp"])
def test_long_running_services_have_health_checks(name: str) -> None:
    assert SERVICES[name]["healthcheck"]["test"]


def test_envoy_starts_after_healthy_sidecars() -> None:
    deps = SERVICES["envoy"]["depends_on"]
    for name in ("authz", "ratelimit", "upstream"):
        assert deps[name] == {"condition": "service_healthy"}


def test_secrets_come_from_a_volume_mounted_read_only() -> None:
    assert SERVICES["init"]["volumes"] == ["secrets:/etc/edgeguard"]
    for name in ("authz", "ratelimit", "envoy", "idp", "redis"):
        assert "secrets:/etc/edgeguard:ro" in SERVICES[name]["volumes"]
    # `init` fills the volume first (Envoy waits for the sidecars, which wait for it).
    for name in ("authz", "ratelimit", "idp", "redis"):
        assert SERVICES[name]["depends_on"]["init"] == {
            "condition": "service_completed_successfully"
        }


def test_redis_requires_the_password_init_makes() -> None:
    redis = SERVICES["redis"]
    conf = f"{COMPOSE_DEV_DIR}/{CONF_FILE}"
    # A config file, not --requirepass: the password never shows on a command line.
    assert redis["command"][:2] == ["redis-server", conf]
    # Its own user, in the group of `init`, which writes the file group-readable.
    init_group = SERVICES["init"]["user"].split(":")[1]
    assert redis["user"] == f"999:{init_group}"
    probe = " ".join(redis["healthcheck"]["test"])
    assert f"{COMPOSE_DEV_DIR}/{PASSWORD_FILE}" in probe
    assert "REDISCLI_AUTH" in probe


@pytest.mark.parametrize("name", ["authz", "ratelimit"])
def test_sidecars_get_the_redis_password_as_their_configs_say(name: str) -> None:
    command = SERVICES[name]["command"]
    split = command.index("--")
    assert command[:4] == ["python", "-m", "devstack", "with-secret-env"]
    assert command[4:split] == [f"{PASSWORD_ENV}={COMPOSE_DEV_DIR}/{PASSWORD_FILE}"]
    config = yaml.safe_load(_app_path(command[-1]).read_text())
    envs = (
        [config["store"]["password_env"]]
        if name == "ratelimit"
        else [config[section]["password_env"] for section in ("api_keys", "revocation")]
    )
    assert set(envs) == {PASSWORD_ENV}


def test_dockerfile_is_slim_non_root_and_bakes_no_secrets() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    copies = re.findall(r"^COPY (?!--from)(\S+)", text, re.M)
    assert not any(c.startswith(".dev") or c.endswith((".pem", ".key")) for c in copies)
    assert ".dev" in (REPO / ".dockerignore").read_text().split()


def _referenced_files() -> list[Path]:
    out = []
    for name in OURS:
        command = SERVICES[name]["command"]
        out += [_app_path(arg) for arg in command if str(arg).startswith("/app/")]
    return out


def test_referenced_configs_exist_and_are_generated_fresh() -> None:
    files = _referenced_files()
    assert {p.name for p in files} == {"authz.yaml", "ratelimit.yaml", "envoy.compose.yaml"}
    assert all(p.is_file() for p in files)
    for path, text in compose_files().items():
        assert path.read_text() == text, f"{path} is stale: run python -m devstack render-configs"


@pytest.fixture(scope="module")
def compose_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("compose") / "pki")


def _with_local_pki(source: Path, pki: Pki, tmp: Path) -> Path:
    """`source` with the compose secrets volume's paths moved to a local dev dir (the
    PKI, and the API-key pepper `devstack init` makes next to it)."""
    target = tmp / source.name
    local = pki.root.parent
    ensure_pepper(local)
    text = source.read_text().replace(COMPOSE_PKI, str(pki.root))
    target.write_text(text.replace(COMPOSE_DEV_DIR, str(local)))
    return target


def test_compose_authz_config_validates(compose_pki: Pki, tmp_path: Path) -> None:
    config = _with_local_pki(REPO / "deploy" / "compose" / "authz.yaml", compose_pki, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "authz_service", "check-config", str(config)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_compose_ratelimit_config_validates(compose_pki: Pki, tmp_path: Path) -> None:
    source = REPO / "deploy" / "compose" / "ratelimit.yaml"
    text = source.read_text().replace(COMPOSE_PKI, str(compose_pki.root))
    text = text.replace("/app/config/ratelimit/rules", str(REPO / "config" / "ratelimit" / "rules"))
    config = tmp_path / "ratelimit.yaml"
    config.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "ratelimit_service", "check-config", str(config)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_compose_envoy_config_validates(compose_pki: Pki, tmp_path: Path) -> None:
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent))
    assert envoy is not None
    config = _with_local_pki(REPO / "envoy" / "envoy.compose.yaml", compose_pki, tmp_path)
    done = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_devstack_commands_run_from_an_installed_package(tmp_path: Path) -> None:
    """The image installs devstack into site-packages, without config/ next to it: the
    commands compose runs (init, with-secret-env) must not read the demo policy at
    import."""
    shutil.copytree(REPO / "devstack", tmp_path / "devstack")
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "with-secret-env", f"{PASSWORD_ENV}={secret}", "--",
         sys.executable, "-c", f"import os; print(os.environ[{PASSWORD_ENV!r}])"],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pw\n"
