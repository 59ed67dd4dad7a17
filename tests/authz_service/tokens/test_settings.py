from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from authz_service.tokens.settings import IssuerSettings, JwksSettings, TokenLimits
from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError

BASE: dict[str, Any] = {
    "issuer": "https://idp.example.test",
    "audiences": ["api://demo"],
    "algorithms": ["RS256"],
}


def make(**kw: Any) -> IssuerSettings:
    return IssuerSettings.model_validate({**BASE, **kw})


def test_defaults() -> None:
    s = make(jwks_url="https://idp.example.test/jwks")
    assert s.leeway_seconds == 30
    assert s.max_token_age_seconds is None
    assert s.roles_claim == "roles"
    assert s.client_id_claims == ("client_id", "azp")
    assert s.jwks == JwksSettings()
    assert s.jwks.ttl_seconds == 300
    assert (s.jwks.min_ttl_seconds, s.jwks.max_ttl_seconds) == (60, 86400)
    assert s.jwks.unknown_kid_cooldown_seconds == 2
    assert s.jwks.unknown_kid_refetches_per_minute == 12
    assert s.jwks.unknown_kid_refetch_burst == 4
    assert s.jwks.unknown_kid_absent_seconds == 30
    assert (s.jwks.fetch_timeout_seconds, s.jwks.max_bytes, s.jwks.retry_seconds) == (3, 262144, 10)
    assert s.jwks.check_wait_seconds == 0.15
    assert (s.ca_file, s.allow_insecure_http) == (None, False)
    limits = TokenLimits()
    assert (limits.max_token_bytes, limits.max_header_bytes) == (8192, 2048)
    assert (limits.max_payload_bytes, limits.max_signature_bytes) == (6144, 1024)


@pytest.mark.parametrize(
    "sources",
    [
        {},
        {"jwks_file": "jwks.json", "jwks_url": "https://idp.example.test/jwks"},
        {"jwks_url": "https://idp.example.test/jwks", "discovery": True},
        {"jwks_file": "jwks.json", "discovery": True},
    ],
)
def test_exactly_one_key_source(sources: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of jwks_file, jwks_url, discovery"):
        make(**sources)


def test_each_key_source_alone_is_accepted() -> None:
    assert make(jwks_file="keys/jwks.json").jwks_file == Path("keys/jwks.json")
    assert make(jwks_url="http://127.0.0.1:8082/jwks").jwks_url
    assert make(discovery=True).discovery


@pytest.mark.parametrize("url", ["file:///etc/jwks.json", "ftp://idp/jwks", "idp/jwks", "https://"])
def test_jwks_url_must_be_http(url: str) -> None:
    with pytest.raises(ValidationError, match="jwks_url must be an absolute http"):
        make(jwks_url=url)


def test_discovery_needs_a_url_issuer() -> None:
    with pytest.raises(ValidationError, match="issuer"):
        IssuerSettings.model_validate({**BASE, "issuer": "my-idp", "discovery": True})


@pytest.mark.parametrize("alg", ["none", "HS256", "HS384", "HS512", "ES256K", "RSA-OAEP", "rs256"])
def test_only_asymmetric_algorithms(alg: str) -> None:
    with pytest.raises(ValidationError):
        make(jwks_url="https://idp.example.test/jwks", algorithms=[alg])


def test_lists_must_not_be_empty() -> None:
    with pytest.raises(ValidationError):
        make(jwks_url="https://x.test/j", algorithms=[])
    with pytest.raises(ValidationError):
        make(jwks_url="https://x.test/j", audiences=[])
    with pytest.raises(ValidationError, match="non-empty"):
        make(jwks_url="https://x.test/j", audiences=[""])


@pytest.mark.parametrize("leeway", [-1, 301])
def test_leeway_bounds(leeway: int) -> None:
    with pytest.raises(ValidationError):
        make(jwks_url="https://x.test/j", leeway_seconds=leeway)


@pytest.mark.parametrize("path", ["", ".roles", "realm_access.", "a..b"])
def test_roles_claim_is_a_dot_path(path: str) -> None:
    with pytest.raises(ValidationError, match="dot path"):
        make(jwks_url="https://x.test/j", roles_claim=path)


def test_jwks_ttl_bounds_are_ordered() -> None:
    with pytest.raises(ValidationError, match="min_ttl_seconds must not exceed"):
        JwksSettings(min_ttl_seconds=10, max_ttl_seconds=5, ttl_seconds=7)
    with pytest.raises(ValidationError, match="ttl_seconds must lie between"):
        JwksSettings(ttl_seconds=5)


def test_unknown_keys_are_refused_with_a_located_error() -> None:
    data = {**BASE, "jwks_url": "https://x.test/j", "jwks": {"ttl": 5}}
    with pytest.raises(ConfigError) as err:
        validate_model(IssuerSettings, data, "authz.yaml")
    assert err.value.key == "jwks.ttl"
    assert err.value.reason == "unknown key"


def test_config_error_names_the_rule() -> None:
    with pytest.raises(ConfigError) as err:
        validate_model(IssuerSettings, dict(BASE), "authz.yaml")
    assert err.value.reason == "exactly one of jwks_file, jwks_url, discovery is required"


def test_settings_are_frozen() -> None:
    s = make(jwks_url="https://x.test/j")
    with pytest.raises(ValidationError):
        s.issuer = "other"


# -- plain http only on loopback -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8082/jwks",
        "http://127.9.9.9/jwks",
        "http://localhost:8082/jwks",
        "http://LOCALHOST/jwks",
        "http://[::1]:8082/jwks",
        "https://idp.example.test/jwks",
    ],
)
def test_https_and_loopback_http_jwks_urls_are_accepted(url: str) -> None:
    assert make(jwks_url=url).jwks_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example.test/jwks",
        "http://10.0.0.5/jwks",
        "http://128.0.0.1/jwks",
        "http://localhost.example.test/jwks",
        "http://[::ffff:10.0.0.1]/jwks",
    ],
)
def test_plain_http_jwks_url_off_loopback_is_refused(url: str) -> None:
    data = {**BASE, "jwks_url": url}
    with pytest.raises(ConfigError) as err:
        validate_model(IssuerSettings, data, "authz.yaml")
    assert err.value.key == "jwks_url"
    assert "plain http:// to a host that is not loopback" in err.value.reason
    assert "allow_insecure_http: true" in err.value.reason
    assert make(jwks_url=url, allow_insecure_http=True).jwks_url == url


def test_plain_http_issuer_off_loopback_is_refused() -> None:
    for sources in ({"discovery": True}, {"jwks_url": "https://idp.example.test/jwks"}):
        data = {**BASE, "issuer": "http://idp.example.test", **sources}
        with pytest.raises(ConfigError) as err:
            validate_model(IssuerSettings, data, "authz.yaml")
        assert (err.value.key, err.value.reason.split(" ")[0]) == ("issuer", "issuer")
    allowed = make(issuer="http://idp.example.test", discovery=True, allow_insecure_http=True)
    assert allowed.allow_insecure_http
    assert make(issuer="http://127.0.0.1:8082", discovery=True).discovery  # the dev stack
    assert make(issuer="my-idp", jwks_file="jwks.json").issuer == "my-idp"  # not a URL


# -- a private CA for the IdP's TLS ------------------------------------------------------------


def test_ca_file_is_resolved_against_the_config_and_must_hold_a_ca(tmp_path: Path) -> None:
    from tests.authz_service.jwks.network import PrivateCa

    PrivateCa(tmp_path / "pki")
    data = {**BASE, "discovery": True, "ca_file": "pki/ca.pem"}
    settings = validate_model(IssuerSettings, data, tmp_path / "authz.yaml")
    assert settings.ca_file == tmp_path / "pki" / "ca.pem"


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "No such file"), ("not a certificate", "no certificate"), ("", "cannot use")],
)
def test_unusable_ca_file_is_a_located_config_error(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    if content is not None:
        (tmp_path / "ca.pem").write_text(content)
    data = {**BASE, "discovery": True, "ca_file": "ca.pem"}
    with pytest.raises(ConfigError) as err:
        validate_model(IssuerSettings, data, tmp_path / "authz.yaml")
    assert err.value.key == "ca_file"
    assert reason in err.value.reason


@pytest.mark.parametrize(
    "jwks",
    [
        {"unknown_kid_cooldown_seconds": -1},
        {"unknown_kid_refetches_per_minute": 0},
        {"unknown_kid_refetch_burst": 0},
        {"unknown_kid_absent_seconds": -1},
        {"check_wait_seconds": 0},
        {"fetch_timeout_seconds": 0},
    ],
)
def test_refetch_and_deadline_bounds(jwks: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JwksSettings(**jwks)
