"""Config errors found by CompiledPolicy.compile: cross-rule checks and CEL."""

from __future__ import annotations

from typing import Any

import pytest

from authz_service.policy import CompiledPolicy, PolicySettings, RouteSettings
from sidecar_runtime.errors import ConfigError
from tests.authz_service.policy.helpers import SOURCE, compile_routes, route


def compile_error(routes: list[dict[str, Any]]) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        compile_routes(routes)
    assert err.value.file == SOURCE
    return err.value


def test_duplicate_rule_name() -> None:
    err = compile_error([route("a", "/a"), route("b", "/b"), route("a", "/c")])
    assert err.key == "routes[2].name"
    assert err.reason == "duplicate rule name 'a' (first used by routes[0])"


@pytest.mark.parametrize(
    ("first", "second", "where"),
    [
        (route("a", "/u/{id}"), route("b", "/u/{user}"), "GET /u/{} on any host"),
        (
            route("a", "/u/{p...}", methods=("GET", "PUT")),
            route("b", "/u/{q...}", methods=("PUT",)),
            "PUT /u/{...} on any host",
        ),
        (
            route("a", "/x", methods=("*",)),
            route("b", "/x", methods=("*",)),
            "* /x on any host",
        ),
        (
            route("a", "/x", hosts=["a.example", "b.example"]),
            route("b", "/x", hosts=["b.example"]),
            "GET /x on b.example",
        ),
        (
            route("a", "/x", hosts=["*.example.com"]),
            route("b", "/x", hosts=["*.example.com"]),
            "GET /x on *.example.com",
        ),
    ],
)
def test_identical_match_keys_are_an_error(
    first: dict[str, Any], second: dict[str, Any], where: str
) -> None:
    err = compile_error([first, second])
    assert err.key == "routes[1]"
    assert err.reason == f"same match key as routes[0] ('a'): {where}"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (route("a", "/x", methods=("GET",)), route("b", "/x", methods=("*",))),
        (route("a", "/x", methods=("GET",)), route("b", "/x", methods=("POST",))),
        (route("a", "/x"), route("b", "/x", hosts=["api.example.com"])),
        (route("a", "/x", hosts=["*.example.com"]), route("b", "/x", hosts=["api.example.com"])),
        (route("a", "/u/{id}"), route("b", "/u/{id...}")),
        (route("a", "/u/{id}"), route("b", "/u/me")),
    ],
)
def test_overlapping_but_ordered_rules_are_fine(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    assert len(compile_routes([first, second]).rules) == 2


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        (
            "params.id ==",
            "CEL does not compile: <input>:1:13: Syntax error: mismatched input '<EOF>' "
            "expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, "
            "NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}",
        ),
        (
            "user.id == 'x'",
            "CEL does not compile: <input>:1:5: undeclared reference to 'user.id' "
            "(in container '')",
        ),
        (
            "params.id == 1",
            "CEL does not compile: <input>:1:11: found no matching overload for '_==_' "
            "applied to '(string, int)'",
        ),
        ("params.id", "condition must evaluate to bool, but its type is string"),
        ("size(params)", "condition must evaluate to bool, but its type is int"),
        (
            "token.admin",
            "condition must evaluate to bool, but its type is dyn "
            "(compare explicitly, e.g. `token.flag == true`)",
        ),
        (
            "params.user_id == token.sub",
            "params.user_id is not a parameter of the path template (parameters: id)",
        ),
        (
            "params['uid'] == token.sub",
            "params.uid is not a parameter of the path template (parameters: id)",
        ),
    ],
)
def test_condition_errors_name_the_condition(condition: str, reason: str) -> None:
    err = compile_error(
        [
            route("ok", "/ok"),
            route("r", "/u/{id}", conditions=["true", condition]),
        ]
    )
    assert err.key == "routes[1].conditions[1]"
    assert err.reason == reason


def test_public_rule_condition_cannot_read_the_token() -> None:
    err = compile_error(
        [route("p", "/p", public=True, conditions=["request.method == 'GET'", "has(token.sub)"])]
    )
    assert err.key == "routes[0].conditions[1]"
    assert err.reason == (
        "a public rule's condition cannot read `token` (public rules ignore credentials)"
    )


def test_key_prefix_locates_a_nested_routes_section() -> None:
    settings = PolicySettings(
        routes=[RouteSettings(name="r", methods=("GET",), path="/a", conditions=("1",))]
    )
    with pytest.raises(ConfigError) as err:
        CompiledPolicy.compile(settings, source="authz.yaml", key_prefix="policy.")
    assert str(err.value) == (
        "authz.yaml: policy.routes[0].conditions[0]: "
        "condition must evaluate to bool, but its type is int"
    )


def test_compiled_rule_carries_what_evaluate_needs() -> None:
    policy = compile_routes(
        [
            route(
                "r",
                "/u/{id}",
                methods=("GET", "PUT"),
                scopes=["b", "a"],
                roles=["admin"],
                conditions=["params.id == token.sub"],
            )
        ]
    )
    rule = policy.rules[0]
    assert (rule.name, rule.public, rule.scopes, rule.roles) == (
        "r",
        False,
        ("b", "a"),
        frozenset({"admin"}),
    )
    assert rule.methods == frozenset({"GET", "PUT"})
    assert rule.reads_token
    assert not rule.reads_request
    assert rule.describe() == "GET,PUT /u/{id} on any host"


# --- the match memo -----------------------------------------------------------------------


def test_repeated_requests_reuse_one_match_and_a_query_is_part_of_it() -> None:
    from tests.authz_service.policy.helpers import facts

    policy = compile_routes([route("user", "/u/{id}")])
    first = policy.match(facts("/u/alice"))
    assert first is not None
    assert first.params == {"id": "alice"}
    assert policy.match(facts("/u/alice")) is first
    other = policy.match(facts("/u/alice?x=1"))
    assert other is not None
    assert other is not first
    assert other.query == {"x": ("1",)}
    assert policy.match(facts("/u/alice", "PUT")) is None
    elsewhere = policy.match(facts("/u/alice", host="other.example"))
    assert elsewhere is not None
    assert elsewhere.host == "other.example"


def test_match_memo_is_bounded_and_skips_long_paths() -> None:
    from authz_service.policy import policy as policy_module
    from tests.authz_service.policy.helpers import facts

    policy = compile_routes([route("user", "/u/{id}")])
    for i in range(policy_module._MATCH_MEMO_SIZE + 10):
        assert policy.match(facts(f"/u/{i}")) is not None
    assert len(policy._matches) == policy_module._MATCH_MEMO_SIZE
    long = "/u/" + "x" * policy_module._MAX_MEMO_PATH
    assert policy.match(facts(long)) is not None
    assert all(key[2] != long for key in policy._matches)


def test_bad_paths_are_refused_every_time_not_remembered() -> None:
    from authz_service.policy import BadRequestPath
    from tests.authz_service.policy.helpers import facts

    policy = compile_routes([route("user", "/u/{id}")])
    for _ in range(2):
        with pytest.raises(BadRequestPath):
            policy.match(facts("/u/a%2Fb"))
    assert not policy._matches
