"""One bad config file per error class: each must name the file, the key and the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from authz_service.cli import main
from authz_service.compiled_config import compile_config
from authz_service.settings import load_settings
from sidecar_runtime.clock import SystemClock
from sidecar_runtime.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "bad_configs"

CASES = {
    "yaml_syntax.yaml": ("line 4, column 4", "invalid YAML"),
    "duplicate_key.yaml": ("line 8, column 1", "duplicate key 'audit'"),
    "unknown_top_key.yaml": ("rutes", "unknown key"),
    "missing_routes.yaml": ("routes", "list at least one rule"),
    "empty_routes.yaml": ("routes", "list at least one rule"),
    "duplicate_issuer.yaml": ("issuers", "issuer 'https://idp.example' is configured twice"),
    "bad_identity_header.yaml": (
        "identity.headers",
        "'X Auth Subject' is not a lowercase header name",
    ),
    "bad_listen.yaml": ("server", "listen '9001' must be HOST:PORT"),
    "mtls_without_ca.yaml": ("server.tls", "ca_file is required when mode is mtls"),
    "hs256_algorithm.yaml": ("issuers[0].algorithms[0]", "Input should be"),
    "no_key_source.yaml": ("issuers[0]", "exactly one of jwks_file, jwks_url, discovery"),
    "negative_leeway.yaml": ("issuers[0].leeway_seconds", "greater than or equal to 0"),
    "bad_condition.yaml": ("routes[1].conditions[0]", "Syntax error"),
    "bad_template.yaml": ("routes[0].path", "duplicate"),
    "insecure_jwks_url.yaml": (
        "issuers[0].jwks_url",
        "jwks_url 'http://idp.example/jwks' is plain http:// to a host that is not loopback",
    ),
    "insecure_discovery_issuer.yaml": ("issuers[0].issuer", "set allow_insecure_http: true"),
    "missing_ca_file.yaml": ("issuers[0].ca_file", "pki/idp-ca.pem as a CA bundle"),
}


def _load(path: Path) -> None:
    compile_config(load_settings(path), path, clock=SystemClock())


@pytest.mark.parametrize(("name", "expected"), sorted(CASES.items()))
def test_bad_config_names_file_key_and_reason(
    tmp_path: Path, name: str, expected: tuple[str, str]
) -> None:
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    with pytest.raises(ConfigError) as err:
        _load(path)
    key, reason = expected
    assert err.value.file == str(path)
    assert err.value.key.startswith(key), err.value
    assert reason in err.value.reason, err.value


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.yaml")) == sorted(CASES)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_check_config_cli_exits_2_with_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad_listen.yaml"
    shutil.copy(FIXTURES / "bad_listen.yaml", path)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: server: listen '9001' must be HOST:PORT" in err


def test_serve_refuses_to_start_on_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unknown_top_key.yaml"
    shutil.copy(FIXTURES / "unknown_top_key.yaml", path)
    assert main(["serve", "--config", str(path)]) == 2
    assert f"{path}: rutes: unknown key" in capsys.readouterr().err


def test_demo_config_is_valid_once_the_dev_pki_exists(tmp_path: Path) -> None:
    from devstack.peppers import ensure_pepper
    from devstack.pki import ensure_pki

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "config" / "authz").mkdir(parents=True)
    config = tmp_path / "config" / "authz" / "demo.yaml"
    shutil.copy(repo / "config" / "authz" / "demo.yaml", config)
    ensure_pki(tmp_path / ".dev" / "pki")
    ensure_pepper(tmp_path / ".dev")
    _load(config)


def test_an_issuer_of_type_introspection_is_the_introspection_issuer(tmp_path: Path) -> None:
    import yaml

    from authz_service.settings import load_settings

    opaque = {
        "type": "introspection",
        "issuer": "http://127.0.0.1:9999",
        "introspection_endpoint": "http://127.0.0.1:9999/introspect",
        "client_id": "sidecar",
        "client_secret_env": "NOT_READ_AT_LOAD",
        "audiences": ["api"],
    }
    jwt_issuer = {
        "issuer": "https://idp.example",
        "audiences": ["api"],
        "algorithms": ["RS256"],
        "jwks_url": "https://idp.example/jwks",
    }
    route = {"name": "r", "methods": ["GET"], "path": "/r"}
    config = tmp_path / "authz.yaml"
    config.write_text(yaml.safe_dump({"issuers": [jwt_issuer, opaque], "routes": [route]}))
    settings = load_settings(config)
    assert [i.issuer for i in settings.issuers] == ["https://idp.example"]
    assert settings.introspection is not None
    assert settings.introspection.introspection_endpoint.endswith("/introspect")
    config.write_text(yaml.safe_dump({"issuers": [opaque, opaque], "routes": [route]}))
    with pytest.raises(ConfigError, match="at most one issuer of type introspection"):
        load_settings(config)
