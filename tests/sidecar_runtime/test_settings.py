"""The shared `server:` section: the stack, its threads and its queue bound, validated with
the file, key and reason of any mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError
from sidecar_runtime.settings import ServerSettings

CONFIG = Path("/etc/sidecar/server.yaml")


def test_defaults_take_uvloop_and_size_the_threaded_server() -> None:
    settings = ServerSettings()
    assert settings.stack == "uvloop"
    assert settings.threads == 4
    assert settings.max_concurrent_rpcs == 256


@pytest.mark.parametrize("stack", ["aio", "uvloop", "sync"])
def test_each_stack_is_accepted(stack: str) -> None:
    settings = validate_model(ServerSettings, {"stack": stack, "threads": 8}, CONFIG)
    assert (settings.stack, settings.threads) == (stack, 8)


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ({"stack": "trio"}, "stack", "'aio', 'uvloop' or 'sync'"),
        ({"stack": "SYNC"}, "stack", "'aio', 'uvloop' or 'sync'"),
        ({"threads": 0}, "threads", "greater than or equal to 1"),
        ({"threads": 1000}, "threads", "less than or equal to 256"),
        ({"threads": "four"}, "threads", "valid integer"),
        ({"max_concurrent_rpcs": 0}, "max_concurrent_rpcs", "greater than or equal to 1"),
        (
            {"threads": 16, "max_concurrent_rpcs": 8},
            "max_concurrent_rpcs",
            "below threads (16)",
        ),
        ({"stack": "sync", "thread": 4}, "thread", "unknown key"),
        ({"health_listen": "9101"}, "health_listen", "'9101' must be HOST:PORT"),
        ({"health_listen": "0.0.0.0:http"}, "health_listen", "must be HOST:PORT"),
        (
            {"listen": "127.0.0.1:9001", "health_listen": "0.0.0.0:9001"},
            "health_listen",
            "must not share listen's port",
        ),
    ],
)
def test_bad_values_name_file_key_and_reason(
    data: dict[str, object], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as err:
        validate_model(ServerSettings, data, CONFIG)
    assert err.value.file == str(CONFIG)
    assert err.value.key == key
    assert reason in err.value.reason


def test_health_listen_is_off_by_default_and_takes_host_port() -> None:
    assert ServerSettings().health_listen is None
    data = {"listen": "127.0.0.1:9002", "health_listen": "0.0.0.0:9102"}
    assert validate_model(ServerSettings, data, CONFIG).health_listen == "0.0.0.0:9102"
    # Port 0 (a test's "any free port") on both is no collision.
    both_any = {"listen": "127.0.0.1:0", "health_listen": "127.0.0.1:0"}
    assert validate_model(ServerSettings, both_any, CONFIG).health_listen == "127.0.0.1:0"
