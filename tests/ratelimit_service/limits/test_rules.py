"""Descriptor matching as envoyproxy/ratelimit does it, and the planner around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratelimit_service.limits.config import load_rule_file
from ratelimit_service.limits.planner import DescriptorRequest, Override, Request, cost_of, plan
from ratelimit_service.limits.rules import Domain, Pattern, override_stat_key, sanitize_stat_name

RULES = """
domain: d
descriptors:
  - key: path
    value: /api/*
    rate_limit: {unit: second, requests_per_unit: 1, name: api-prefix}
  - key: path
    value: /api/exact
    rate_limit: {unit: second, requests_per_unit: 2, name: api-exact}
  - key: path
    rate_limit: {unit: second, requests_per_unit: 3, name: any-path}
  - key: path
    value: /v*/users/*/photo
    rate_limit: {unit: second, requests_per_unit: 4, name: photos}
  - key: tenant
    value: acme-*
    share_threshold: true
    rate_limit: {unit: second, requests_per_unit: 5, name: acme}
  - key: org
    value: example
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 6, name: per-user}
        descriptors:
          - key: action
            value: delete
            rate_limit: {unit: minute, requests_per_unit: 7, name: user-delete}
  - key: plan
    value: gold
    rate_limit: {unit: second, requests_per_unit: 100, name: gold, replaces: [{name: per-client}]}
  - key: client
    rate_limit: {unit: second, requests_per_unit: 8, name: per-client}
  - key: open
    rate_limit: {unlimited: true}
"""


@pytest.fixture
def domain(tmp_path: Path) -> Domain:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return load_rule_file(path)


def rule(domain: Domain, *entries: tuple[str, str]) -> str | None:
    found = domain.match(entries)
    return found.node.limits[0].rule_id if found is not None else None


def test_exact_beats_wildcard_beats_key_only(domain: Domain) -> None:
    assert rule(domain, ("path", "/api/exact")) == "api-exact"
    assert rule(domain, ("path", "/api/other")) == "api-prefix"
    assert rule(domain, ("path", "/elsewhere")) == "any-path"


def test_wildcard_in_the_middle(domain: Domain) -> None:
    assert rule(domain, ("path", "/v2/users/42/photo")) == "photos"
    assert rule(domain, ("path", "/v2/users/42/photos")) == "any-path"


def test_the_walk_must_end_on_the_last_entry(domain: Domain) -> None:
    assert rule(domain, ("org", "example")) is None  # no limit at that level
    assert rule(domain, ("org", "example"), ("user", "alice")) == "per-user"
    assert (
        rule(domain, ("org", "example"), ("user", "alice"), ("action", "delete")) == "user-delete"
    )
    # more entries than the config is deep: no limit (the reference's rule)
    assert rule(domain, ("client", "a"), ("extra", "b")) is None
    assert rule(domain, ("org", "other"), ("user", "alice")) is None


def test_key_only_and_wildcards_keep_a_bucket_per_value(domain: Domain) -> None:
    a = domain.match((("path", "/api/a"),))
    b = domain.match((("path", "/api/b"),))
    assert a is not None
    assert b is not None
    assert a.bucket_entries != b.bucket_entries
    assert a.kinds == ("wildcard",)


def test_share_threshold_shares_one_bucket(domain: Domain) -> None:
    a = domain.match((("tenant", "acme-1"),))
    b = domain.match((("tenant", "acme-2"),))
    assert a is not None
    assert b is not None
    assert a.bucket_entries == b.bucket_entries == (("tenant", "acme-*"),)


def test_patterns() -> None:
    assert Pattern("foo*").matches("foo")
    assert Pattern("foo*").matches("foobar")
    assert not Pattern("foo*").matches("fo")
    assert Pattern("*").matches("")
    assert Pattern("a*b*c").matches("a-b-c")
    assert not Pattern("a*b*c").matches("a-b-c-")
    assert Pattern("a.b*").matches("a.bx")
    assert not Pattern("a.b*").matches("axb")  # regex characters are literal


def request(*descriptors: DescriptorRequest, hits: int = 0) -> Request:
    return Request("d", descriptors, hits)


def test_replaces_switches_off_a_named_limit_for_the_request(domain: Domain) -> None:
    both = request(DescriptorRequest((("plan", "gold"),)), DescriptorRequest((("client", "c"),)))
    the_plan = plan(domain, both, prefix="rl:", hash_tags=False)
    assert [c.limit.rule_id for c in the_plan.checks] == ["gold"]
    assert [limit.rule_id for limit in the_plan.replaced] == ["per-client"]
    alone = plan(
        domain, request(DescriptorRequest((("client", "c"),))), prefix="rl:", hash_tags=False
    )
    assert [c.limit.rule_id for c in alone.checks] == ["per-client"]


def test_unlimited_descriptors_have_no_checks(domain: Domain) -> None:
    the_plan = plan(
        domain, request(DescriptorRequest((("open", "x"),))), prefix="rl:", hash_tags=False
    )
    assert the_plan.checks == ()
    assert the_plan.unlimited == (True,)


def test_hits_addend_rules() -> None:
    plain = DescriptorRequest((("k", "v"),))
    explicit_zero = DescriptorRequest((("k", "v"),), hits_addend=0)
    explicit_five = DescriptorRequest((("k", "v"),), hits_addend=5)
    assert cost_of(request(plain), plain) == 1  # 0 (proto default) means 1
    assert cost_of(request(plain, hits=3), plain) == 3
    assert cost_of(request(explicit_zero, hits=3), explicit_zero) == 0  # check only
    assert cost_of(request(explicit_five, hits=3), explicit_five) == 5


def test_a_request_override_limit_is_used(domain: Domain) -> None:
    override = DescriptorRequest((("anything", "x"),), override=Override(42, "minute"))
    the_plan = plan(domain, request(override), prefix="rl:", hash_tags=False)
    (check,) = the_plan.checks
    assert (check.limit.requests_per_unit, check.limit.unit) == (42, "minute")
    unknown = DescriptorRequest((("anything", "x"),), override=Override(42, ""))
    assert plan(domain, request(unknown), prefix="rl:", hash_tags=False).checks == ()


def test_a_limit_sent_by_envoy_is_counted_under_its_entries() -> None:
    # The reference's descriptorKey: `key_value`, or `key` alone for an empty value.
    assert override_stat_key("d", (("a", "1"), ("b", ""))) == "d.a_1.b"
    assert override_stat_key("d", (("remote_address", "198.51.100.7"),)) == (
        "d.remote_address_198_51_100_7"
    )
    assert override_stat_key("d", ()) == "d."


def test_stat_names_are_sanitized_as_the_reference_does() -> None:
    assert sanitize_stat_name("d.k_a:b|c") == "d.k_a_b_c"
    assert sanitize_stat_name("d.ip_10.0.0.1.port") == "d.ip_10_0_0_1.port"
    # four dot-separated runs of 1-3 digits anywhere, even inside a longer number (234.5.6.7)
    assert sanitize_stat_name("d.v_1234.5.6.7") == "d.v_1234_5_6_7"
    assert sanitize_stat_name("d.v_1.2.3") == "d.v_1.2.3"
    arabic_indic = "\u0661.\u0662.\u0663.\u0664"  # not digits to Go's `\d`, nor to ours
    assert sanitize_stat_name(f"d.v_{arabic_indic}") == f"d.v_{arabic_indic}"


def test_stat_keys_of_plain_and_nested_matches(domain: Domain) -> None:
    exact = domain.match((("path", "/api/exact"),))
    assert exact is not None
    assert (exact.stat_key, exact.stat_base_key) == ("d.path_/api/exact", "d.path_/api/exact")
    nested = domain.match((("org", "example"), ("user", "alice"), ("action", "delete")))
    assert nested is not None
    assert nested.stat_key == nested.stat_base_key == "d.org_example.user.action_delete"
    middle = domain.match((("path", "/v2/users/42/photo"),))
    assert middle is not None
    assert middle.stat_key == "d.path_/v*/users/*/photo"


def test_a_wildcard_matches_the_composite_key_as_the_reference_does(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "domain: q\ndescriptors:\n"
        "  - {key: svc, value: '*', rate_limit: {unit: second, requests_per_unit: 1}}\n"
    )
    # "svc_extra_x" matches "svc_*": the reference's quirk for keys that contain `_`.
    found = load_rule_file(path).match((("svc_extra", "x"),))
    assert found is not None
    assert found.kinds == ("wildcard",)
    # GetLimit trims "svc_extra_" off "svc_*", which it does not start with.
    assert found.stat_key == "q.svc_extra_svc_*"
    assert found.stat_base_key == "q.svc_*"
