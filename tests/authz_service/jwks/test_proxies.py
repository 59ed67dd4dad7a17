from __future__ import annotations

import pytest

from authz_service.jwks.proxies import Proxy, ProxyConfig

PROXY = "http://proxy.corp:3128"


def test_no_variables_means_no_proxy() -> None:
    config = ProxyConfig.from_env({})
    assert config.for_target("https", "idp.example") is None
    assert config.for_target("http", "idp.example") is None


def test_each_scheme_has_its_own_variable() -> None:
    config = ProxyConfig.from_env({"HTTPS_PROXY": PROXY})
    assert config.for_target("https", "idp.example") == Proxy("proxy.corp", 3128)
    assert config.for_target("http", "idp.example") is None
    config = ProxyConfig.from_env({"http_proxy": "proxy.corp:8080"})  # scheme-less is http
    assert config.for_target("http", "idp.example") == Proxy("proxy.corp", 8080)
    assert config.for_target("https", "idp.example") is None


def test_lowercase_wins_and_blank_counts_as_unset() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}
    assert ProxyConfig.from_env(env).https == Proxy("lower", 1)
    env = {"https_proxy": "  ", "HTTPS_PROXY": "http://upper:2"}
    assert ProxyConfig.from_env(env).https == Proxy("upper", 2)


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.10.0.3", "::1", "[::1]"]
)
def test_loopback_always_goes_direct(host: str) -> None:
    config = ProxyConfig.from_env({"HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY})
    assert config.for_target("https", host) is None
    assert config.for_target("http", host) is None


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypassed"),
    [
        ("*", "anything.example", True),
        ("idp.example", "idp.example", True),
        ("idp.example", "IDP.EXAMPLE.", True),
        ("example", "idp.example", True),  # a name matches its subdomains
        (".example", "idp.example", True),
        ("*.example", "idp.example", True),
        ("example", "notexample", False),  # ... but not a longer label
        ("idp.example:443", "idp.example", True),  # the port is ignored
        ("other, idp.example", "idp.example", True),
        ("other idp.example", "idp.example", True),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("10.0.0.0/8", "idp.example", False),
        ("2001:db8::/32", "2001:db8::1", True),
        ("[2001:db8::1]", "2001:db8::1", True),
        ("", "idp.example", False),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, bypassed: bool) -> None:
    config = ProxyConfig.from_env({"HTTPS_PROXY": PROXY, "NO_PROXY": no_proxy})
    assert config.bypasses(host) is bypassed
    assert (config.for_target("https", host) is None) is bypassed


def test_credentials_become_basic_proxy_authorization_and_are_never_shown() -> None:
    proxy = ProxyConfig.from_env({"HTTPS_PROXY": "http://user%20x:p%40ss@proxy:3128"}).https
    assert proxy is not None
    assert proxy.authorization == "Basic dXNlciB4OnBAc3M="  # "user x:p@ss"
    assert "p@ss" not in repr(proxy)
    assert "cEBzcw" not in repr(proxy)


@pytest.mark.parametrize("value", ["https://proxy:3128", "socks5://proxy:1080", "http://:3128"])
def test_unsupported_proxy_urls_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="HTTPS_PROXY: only http://host:port"):
        ProxyConfig.from_env({"https_proxy": value})


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match="HTTP_PROXY: not a valid proxy URL"):
        ProxyConfig.from_env({"HTTP_PROXY": "http://proxy:99999"})
