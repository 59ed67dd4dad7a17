from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from authz_service.introspection import IntrospectionIssuerSettings


def _make(**changes: Any) -> IntrospectionIssuerSettings:
    values: dict[str, Any] = {
        "issuer": "https://idp.example",
        "introspection_endpoint": "https://idp.example/introspect",
        "client_id": "authz",
        "client_secret_env": "INTROSPECTION_SECRET",
        "audiences": ["api"],
    }
    values.update(changes)
    return IntrospectionIssuerSettings.model_validate(values)


def test_defaults() -> None:
    s = _make()
    assert (s.type, s.timeout_seconds, s.max_cache_seconds) == ("introspection", 1.0, 60)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/i", "http://localhost/i", "http://[::1]/i"])
def test_plain_http_only_on_loopback(url: str) -> None:
    assert _make(introspection_endpoint=url).introspection_endpoint == url


@pytest.mark.parametrize(
    "url", ["http://idp.example/i", "ftp://idp.example/i", "https://u:p@idp.example/i", "/i"]
)
def test_refused_endpoints(url: str) -> None:
    with pytest.raises(ValidationError):
        _make(introspection_endpoint=url)


@pytest.mark.parametrize(
    "changes",
    [
        {"client_secret_env": None},
        {"client_secret_file": "s.txt"},  # both sources
        {"audiences": []},
        {"roles_claim": "a..b"},
        {"unknown": 1},
    ],
)
def test_refused_settings(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _make(**changes)


def test_the_secret_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    assert _make(client_secret_env=None, client_secret_file=secret).read_client_secret() == "s3cret"
    monkeypatch.setenv("INTROSPECTION_SECRET", "from-env")
    assert _make().read_client_secret() == "from-env"
    monkeypatch.delenv("INTROSPECTION_SECRET")
    with pytest.raises(ValueError, match="INTROSPECTION_SECRET"):
        _make().read_client_secret()
