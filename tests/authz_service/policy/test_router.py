"""The precedence contract of authz_service.policy.router, asserted through match()."""

from __future__ import annotations

import random
from typing import Any

import pytest

from authz_service.policy import BadRequestPath, explain_match
from tests.authz_service.policy.helpers import (
    compile_routes,
    facts,
    matched_name,
    must_match,
    route,
)

SPECIFICITY_ROUTES = [
    route("literal", "/a/b/c"),
    route("param-middle", "/a/{x}/c"),
    route("param-last", "/a/b/{y}"),
    route("rest", "/a/{tail...}"),
    route("any-method", "/a/b/c", methods=("*",)),
    route("post-only", "/a/{x}/d", methods=("POST",)),
    route("root", "/"),
    route("wild-host", "/a/b/c", hosts=["*.example.com"]),
    route("deep-wild-host", "/a/b/c", hosts=["*.eu.example.com"]),
    route("exact-host", "/a/{x}/{y}", hosts=["api.example.com"]),
]

# (method, path, host, expected winner)
SPECIFICITY_CASES = [
    # Exact host beats wildcard beats any host, even with a less specific path.
    ("GET", "/a/b/c", "api.example.com", "exact-host"),
    ("GET", "/a/b/c", "www.example.com", "wild-host"),
    ("GET", "/a/b/c", "x.eu.example.com", "deep-wild-host"),  # longest suffix first
    ("GET", "/a/b/c", "other.test", "literal"),
    # Falling back to a less specific host group when the specific one has no match.
    ("GET", "/a/b", "api.example.com", "rest"),
    ("GET", "/a/b/c", "example.com", "literal"),  # *.example.com does not match the apex
    # Literal beats param beats rest; backtracking: /a/b/{y} wins /a/b/z before /a/{x}/c.
    ("GET", "/a/b/z", "other.test", "param-last"),
    ("GET", "/a/q/c", "other.test", "param-middle"),
    ("GET", "/a/q/z", "other.test", "rest"),
    ("GET", "/a/q/z/w", "other.test", "rest"),
    # Explicit method beats "*"; a method miss backtracks to the next branch.
    ("PUT", "/a/b/c", "other.test", "any-method"),
    ("POST", "/a/q/d", "other.test", "post-only"),
    ("GET", "/a/q/d", "other.test", "rest"),
    ("GET", "/", "other.test", "root"),
]


@pytest.mark.parametrize(("method", "path", "host", "winner"), SPECIFICITY_CASES)
def test_most_specific_rule_wins(method: str, path: str, host: str, winner: str) -> None:
    policy = compile_routes(SPECIFICITY_ROUTES)
    assert matched_name(policy, path, method, host=host) == winner


def test_backtracking_case_from_the_docs() -> None:
    # /a/{x}/c vs /a/b/{y} on /a/b/c: segment 2 is decided first, literal "b" wins.
    policy = compile_routes([route("x-c", "/a/{x}/c"), route("b-y", "/a/b/{y}")])
    assert matched_name(policy, "/a/b/c") == "b-y"
    # ...and when the literal branch dead-ends, the param branch is tried.
    policy = compile_routes([route("x-c", "/a/{x}/c"), route("b-y-z", "/a/b/{y}/z")])
    assert matched_name(policy, "/a/b/c") == "x-c"


def test_rule_order_in_the_file_does_not_matter() -> None:
    rng = random.Random(1234)
    for _ in range(20):
        shuffled = list(SPECIFICITY_ROUTES)
        rng.shuffle(shuffled)
        policy = compile_routes(shuffled)
        for method, path, host, winner in SPECIFICITY_CASES:
            assert matched_name(policy, path, method, host=host) == winner


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/a"),  # rest needs at least one segment
        ("GET", "/nothing"),
        ("HEAD", "/x"),  # HEAD is not GET
        ("get", "/x"),  # methods are case-sensitive
        ("GET", "/x/"),  # trailing slash is another resource
        ("GET", "/X"),  # literals are case-sensitive
    ],
)
def test_unmatched_is_none(method: str, path: str) -> None:
    policy = compile_routes([route("x", "/x"), route("rest", "/a/{p...}")])
    assert matched_name(policy, path, method) is None


def test_trailing_slash_does_not_match_rest_either() -> None:
    policy = compile_routes([route("rest", "/a/{p...}")])
    assert matched_name(policy, "/a/b/") is None
    assert matched_name(policy, "/a/b") == "rest"


def test_params_are_decoded_and_rest_is_joined() -> None:
    policy = compile_routes([route("files", "/u/{user}/files/{path...}")])
    match = must_match(policy, facts("/u/j%C3%B6rg/files/dir/a%20b.txt?v=1"))
    assert match.params == {"user": "jörg", "path": "dir/a b.txt"}
    assert match.path == "/u/jörg/files/dir/a b.txt"
    assert match.query == {"v": ("1",)}
    assert match.host == "api.example.com"


def test_literal_compares_with_the_decoded_segment() -> None:
    policy = compile_routes([route("ping", "/ping")])
    assert matched_name(policy, "/p%69ng") == "ping"


def test_host_port_and_case_are_ignored() -> None:
    policy = compile_routes([route("h", "/a", hosts=["api.example.com"])])
    assert matched_name(policy, "/a", host="API.example.com:8443") == "h"
    assert matched_name(policy, "/a", host="api.example.com.") == "h"
    assert matched_name(policy, "/a", host="api.example.org") is None


def test_bad_path_raises_before_matching() -> None:
    policy = compile_routes([route("any", "/{p...}")])
    with pytest.raises(BadRequestPath) as err:
        policy.match(facts("/a/%2e%2e/admin"))
    assert err.value.reason == "dot_segment"


def test_empty_policy_matches_nothing() -> None:
    assert compile_routes([]).match(facts("/")) is None


@pytest.mark.parametrize(("method", "path", "host", "winner"), SPECIFICITY_CASES)
def test_explain_lists_candidates_and_marks_the_match_winner(
    method: str, path: str, host: str, winner: str
) -> None:
    policy = compile_routes(SPECIFICITY_ROUTES)
    candidates = explain_match(policy, facts(path, method, host=host))
    selected = [c.rule.name for c in candidates if c.selected]
    assert selected == [winner]
    assert candidates[0].method_matches or not candidates[0].selected


def test_explain_shows_why_rules_lost() -> None:
    policy = compile_routes(SPECIFICITY_ROUTES)
    candidates = explain_match(policy, facts("/a/b/c", host="api.example.com"))
    summary: list[Any] = [(c.rule.name, c.host_group, c.method_matches) for c in candidates]
    assert summary == [
        ("exact-host", "api.example.com", True),
        ("wild-host", "*.example.com", True),
        ("literal", "any host", True),
        ("any-method", "any host", True),
        ("param-last", "any host", True),
        ("param-middle", "any host", True),
        ("rest", "any host", True),
    ]
