"""The service settings file: defaults, topologies, overrides, located errors."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from devstack.pki import Pki
from ratelimit_service.settings import load_settings
from sidecar_runtime.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "rules: rules\n"))
    assert settings.server.listen == "127.0.0.1:9002"
    assert settings.rules == tmp_path / "rules"  # relative to the settings file
    assert settings.store.type == "memory"
    assert settings.failure_mode == "fail_open"
    assert settings.store.timeouts.call_ms < 20  # under Envoy's filter timeout
    assert settings.empty_bucket_cache.enabled


def test_server_section_keeps_the_ratelimit_port(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "rules: r\nserver: {reflection: false}\n"))
    assert settings.server.listen == "127.0.0.1:9002"
    assert not settings.server.reflection


@pytest.mark.parametrize(
    "store",
    [
        "{type: redis, url: 'redis://127.0.0.1:6390/0'}",
        "{type: redis, sentinel: {master_name: m, addresses: ['10.0.0.1:26379']}}",
        "{type: redis, cluster: {addresses: ['10.0.0.1:7000', '10.0.0.2:7000']}}",
    ],
)
def test_redis_topologies(tmp_path: Path, store: str) -> None:
    assert load_settings(write(tmp_path, f"rules: r\nstore: {store}\n")).store.type == "redis"


def test_overrides_replace_the_store(tmp_path: Path) -> None:
    path = write(tmp_path, "rules: r\nstore: {type: redis, cluster: {addresses: ['h:1']}}\n")
    override = {"store": {"type": "redis", "url": "redis://127.0.0.1:1/0", "cluster": None}}
    settings = load_settings(path, override)
    assert settings.store.url == "redis://127.0.0.1:1/0"
    assert settings.store.cluster is None


BAD = [
    ("rules: r\nstore: {type: redis}\n", "store", "exactly one of url, sentinel, cluster"),
    ("rules: r\nstore: {url: 'redis://x:1'}\n", "store", "only for type: redis"),
    ("rules: r\nstore: {type: redis, url: 'http://x'}\n", "store", "must start with redis://"),
    ("rules: r\nfailure_mode: maybe\n", "failure_mode", "fail_open"),
    ("rules: r\nkey_prefix: '{tag}'\n", "key_prefix", "should match pattern"),
    (
        "rules: r\nstore: {type: redis, cluster: {addresses: [nope]}}\n",
        "store.cluster",
        "HOST:PORT",
    ),
    ("rules: r\nstore: {timeouts: {call_ms: 0}}\n", "store.timeouts.call_ms", "greater than 0"),
    ("rules: r\nstroe: {}\n", "stroe", "unknown key"),
    ("server: {}\n", "rules", "Field required"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_settings_are_located(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert reason in err.value.reason


def test_redis_tls_files_are_relative_to_the_settings_file(tmp_path: Path, pki: Pki) -> None:
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        (tmp_path / name).write_bytes((pki.root / name).read_bytes())
    tls = "{ca_file: ca.pem, cert_file: client.pem, key_file: client-key.pem}"
    text = f"rules: r\nstore: {{type: redis, url: 'rediss://h:6380/0', tls: {tls}}}\n"
    settings = load_settings(write(tmp_path, text))
    assert settings.store.tls is not None
    assert settings.store.tls.ca_file == tmp_path / "ca.pem"
    assert settings.store.tls.context().verify_mode == ssl.CERT_REQUIRED
    assert settings.store.tls.context().check_hostname


BAD_TLS = [
    ("url: 'redis://h:1/0', tls: {}", "store", "tls is for a rediss:// url"),
    ("cluster: {addresses: ['h:1']}, tls: {}", "store", "tls is for a rediss:// url"),
    ("url: 'rediss://h:1/0', tls: {ca_file: nope.pem}", "store.tls", "does not exist"),
    ("url: 'rediss://h:1/0', tls: {cert_file: service.yaml}", "store.tls", "go together"),
    ("url: 'rediss://h:1/0', tls: {ca_file: service.yaml}", "store.tls", "unusable TLS files"),
    ("url: 'rediss://h:1/0', tls: {verify: false}", "store.tls.verify", "unknown key"),
]


@pytest.mark.parametrize(("store", "key", "reason"), BAD_TLS)
def test_bad_redis_tls_settings_are_located(
    tmp_path: Path, store: str, key: str, reason: str
) -> None:
    path = write(tmp_path, f"rules: r\nstore: {{type: redis, {store}}}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert (err.value.key, err.value.file) == (key, str(path))
    assert reason in err.value.reason


@pytest.mark.parametrize("listen", ["0.0.0.0:6070", "localhost:6070", "10.0.0.1:6070"])
def test_the_debug_listener_is_refused_off_loopback(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        load_settings(write(tmp_path, f"rules: r\ndebug: {{listen: '{listen}'}}\n"))


def test_reference_modes_and_stats_have_the_reference_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "rules: r\n"))
    modes = (settings.merge_domains, settings.global_shadow_mode, settings.global_quota_mode)
    assert modes == (False, False, False)
    assert (settings.stats.enabled, settings.stats.near_limit_ratio) == (True, 0.8)
    assert settings.debug.listen is None
