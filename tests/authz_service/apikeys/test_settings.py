from __future__ import annotations

from pathlib import Path

import pytest

from authz_service.apikeys.settings import load_api_key_settings, load_peppers
from sidecar_runtime.errors import ConfigError
from tests.authz_service.apikeys.conftest import PEPPER_1, write_config


def test_only_the_api_keys_section_is_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, "rediss://redis.internal:6380/0", extra="cache_seconds: 5\n")
    settings = load_api_key_settings(path)
    assert settings.cache_seconds == 5
    assert settings.key_prefix == "eg_live"
    assert settings.header == "authorization"
    assert settings.peppers[0].file == tmp_path / "pepper"  # relative to the config file
    ring = load_peppers(settings, path)
    assert ring.current.secret == PEPPER_1.secret  # the trailing newline is not part of it


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("key_prefix: EG\n", "api_keys.key_prefix", "product_environment"),
        ("header: Bad Header\n", "api_keys.header", "header name"),
        ("surprise: 1\n", "api_keys.surprise", "unknown key"),
        ("default_ttl_days: 400\n", "api_keys", "max_ttl_days"),
        ("channel: 'a b'\n", "api_keys.channel", "whitespace"),
    ],
)
def test_errors_name_the_key_inside_the_section(
    tmp_path: Path, extra: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_api_key_settings(write_config(tmp_path, "redis://127.0.0.1:6390/0", extra=extra))
    assert error.value.key == key
    assert reason in error.value.reason


def test_a_bad_redis_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="redis_url: must start with"):
        load_api_key_settings(write_config(tmp_path, "http://127.0.0.1:6390"))


def test_unusable_peppers_are_named_without_their_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, "redis://127.0.0.1:6390/0")
    (tmp_path / "pepper").write_bytes(b"too short")
    settings = load_api_key_settings(path)
    with pytest.raises(ConfigError) as error:
        load_peppers(settings, path)
    assert error.value.key == "api_keys.peppers[0]"
    assert "too short" not in str(error.value)
    monkeypatch.delenv("NO_SUCH_PEPPER", raising=False)
    env_path = tmp_path / "env.yaml"
    env_path.write_text(
        "api_keys:\n  redis_url: redis://x:1/0\n  peppers: [{id: e, env: NO_SUCH_PEPPER}]\n"
    )
    with pytest.raises(ConfigError, match="NO_SUCH_PEPPER is not set"):
        load_peppers(load_api_key_settings(env_path), env_path)
