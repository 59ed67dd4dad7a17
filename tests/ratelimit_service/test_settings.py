"""The service settings file: defaults, topologies, overrides, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

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
