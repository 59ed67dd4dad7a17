"""Config errors found while validating the `routes:` section: each names the key."""

from __future__ import annotations

from typing import Any

import pytest

from authz_service.policy import PolicySettings
from sidecar_runtime.config import validate_model
from sidecar_runtime.errors import ConfigError
from tests.authz_service.policy.helpers import SOURCE, route


def config_error(routes: list[Any]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        validate_model(PolicySettings, {"routes": routes}, SOURCE)
    assert err.value.file == SOURCE
    return err.value


def test_valid_rule_is_normalised() -> None:
    settings = validate_model(
        PolicySettings,
        {"routes": [route("r", "/a", hosts=["API.Example.com", "*.Example.org."])]},
        SOURCE,
    )
    assert settings.routes[0].hosts == ("api.example.com", "*.example.org")
    assert settings.routes[0].public is False


def test_empty_section_is_an_empty_allow_list() -> None:
    assert validate_model(PolicySettings, None, SOURCE).routes == []


@pytest.mark.parametrize(
    ("rule", "key", "reason"),
    [
        (
            route("r", "/a/{x}/{x}"),
            "routes[1].path",
            "invalid path template '/a/{x}/{x}': duplicate parameter name 'x'",
        ),
        (
            route("r", "/a//b"),
            "routes[1].path",
            "invalid path template '/a//b': segment 2 is empty ('//')",
        ),
        (
            route("r", "/a/{}"),
            "routes[1].path",
            "invalid path template '/a/{}': segment 2 has an empty parameter name",
        ),
        (
            route("r", "/a/{p...}/b"),
            "routes[1].path",
            "invalid path template '/a/{p...}/b': rest parameter {p...} must be the last segment",
        ),
        (
            route("r", "/a", methods=()),
            "routes[1].methods",
            'list at least one method, or "*" for any',
        ),
        (
            route("r", "/a", methods=("get",)),
            "routes[1].methods[0]",
            "method 'get' must be uppercase (methods are case-sensitive, RFC 9110 §9.1)",
        ),
        (
            route("r", "/a", methods=("GET", "G T")),
            "routes[1].methods[1]",
            "method 'G T' is not an HTTP method name",
        ),
        (
            route("r", "/a", methods=("GET", "*")),
            "routes[1].methods",
            '"*" already matches every method; list it alone',
        ),
        (
            route("r", "/a", methods=("GET", "GET")),
            "routes[1].methods",
            "method 'GET' is listed twice",
        ),
        (
            route("r", "/a", hosts=["api.example.com:8443"]),
            "routes[1].hosts[0]",
            "host 'api.example.com:8443' must not include a port (ports are ignored)",
        ),
        (
            route("r", "/a", hosts=["api.*.com"]),
            "routes[1].hosts[0]",
            "host 'api.*.com' must be a host name, a bracketed IPv6 address or '*.' followed "
            "by a domain (omit `hosts` to match any host)",
        ),
        (
            route("r", "/a", hosts=[]),
            "routes[1].hosts",
            "hosts must not be empty (omit it to match any host)",
        ),
        (
            route("r", "/a", hosts=["a.example", "A.example"]),
            "routes[1].hosts",
            "host 'a.example' is listed twice",
        ),
        (
            route("r", "/a", public=True, scopes=["s"]),
            "routes[1].scopes",
            "a public rule cannot require scopes",
        ),
        (
            route("r", "/a", public=True, roles=["admin"]),
            "routes[1].roles",
            "a public rule cannot require roles",
        ),
        (
            route("r", "/a", public="yes"),
            "routes[1].public",
            "Input should be a valid boolean",
        ),
        (
            route("r", "/a", scopes=["users read"]),
            "routes[1].scopes[0]",
            "scope 'users read' must be a non-empty scope token without spaces",
        ),
        (
            route("r", "/a", scopes="users:read"),
            "routes[1].scopes",
            "Input should be a valid tuple",
        ),
        (route("r", "/a", roles=[""]), "routes[1].roles[0]", "role must not be empty"),
        (route("r", "/a", roles=["x", "x"]), "routes[1].roles", "role 'x' is listed twice"),
        (
            route("r", "/a", conditions=["  "]),
            "routes[1].conditions[0]",
            "condition must not be empty",
        ),
        (route("r", "/a", match="x"), "routes[1].match", "unknown key"),
        (
            route("bad name", "/a"),
            "routes[1].name",
            "rule name must be 1-128 characters of letters, digits and ._:- starting with "
            "a letter or digit",
        ),
        ({"methods": ["GET"], "path": "/a"}, "routes[1].name", "Field required"),
    ],
)
def test_rule_errors_are_located(rule: dict[str, Any], key: str, reason: str) -> None:
    err = config_error([route("ok", "/ok"), rule])
    assert (err.key, err.reason) == (key, reason)


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError) as err:
        validate_model(PolicySettings, {"routes": [], "rules": []}, SOURCE)
    assert (err.value.key, err.value.reason) == ("rules", "unknown key")
