"""Rule files in envoyproxy/ratelimit's dialect resolve as the reference resolves them.

Each expectation is what the reference's GetLimit returns for the descriptor (limit,
name, shadow_mode, quota_mode, unlimited, replaces) and the key it counts the hit under
(its FullKey, sanitized as its stats manager names counters). The fixtures are our own
files; the reference's own files are checked too where its checkout is at /tmp/rlref.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ratelimit_service.limits.config import load_rule_file, load_rules
from ratelimit_service.limits.rules import Domain, Match
from sidecar_runtime.errors import ConfigError

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "reference_dialect"
REFERENCE = Path("/tmp/rlref")

Entries = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Resolved:
    requests_per_unit: int
    unit: str | None  # None when unlimited (the reference's UNKNOWN unit)
    stat_key: str
    name: str = ""
    shadow: bool = False
    quota: bool = False
    unlimited: bool = False
    replaces: frozenset[str] = frozenset()


def resolve(domain: Domain, entries: Entries) -> Resolved | None:
    match = domain.match(entries)
    if match is None:
        return None
    (limit,) = match.node.limits  # the reference has one limit per descriptor
    return Resolved(
        requests_per_unit=limit.requests_per_unit,
        unit=None if limit.unlimited else limit.unit,
        stat_key=match.stat_key,
        name=limit.name,
        shadow=limit.shadow,
        quota=limit.quota,
        unlimited=limit.unlimited,
        replaces=limit.replaces,
    )


def matched(domain: Domain, *entries: tuple[str, str]) -> Match:
    match = domain.match(entries)
    assert match is not None
    return match


STOREFRONT: list[tuple[Entries, Resolved | None]] = [
    (
        (("plan", "partner"),),
        Resolved(
            600,
            "hour",
            "storefront.plan_partner",
            replaces=frozenset({"per-user-search", "checkout-daily"}),
        ),
    ),
    ((("plan", "gold"),), None),  # no key-only `plan`
    ((("gateway", "public"),), None),  # no limit at that level
    (
        (("gateway", "public"), ("backend", "search")),
        Resolved(
            25,
            "second",
            "storefront.gateway_public.backend_search",
            replaces=frozenset({"per-user-search"}),
        ),
    ),
    (
        (("gateway", "public"), ("backend", "checkout")),
        Resolved(1000, "day", "storefront.gateway_public.backend_checkout", name="checkout-daily"),
    ),
    ((("gateway", "public"), ("backend", "other")), None),
    ((("tenant", "acme"),), Resolved(300, "minute", "storefront.tenant")),
    ((("tenant", "acme"), ("user", "alice")), Resolved(60, "minute", "storefront.tenant.user")),
    (
        (("tenant", "acme"), ("user", "search-bot")),
        Resolved(10, "minute", "storefront.tenant.user_search-bot", name="per-user-search"),
    ),
    (
        (("tenant", "acme"), ("user", "abuser")),
        Resolved(0, "hour", "storefront.tenant.user_abuser", name="blocked-user"),
    ),
    ((("tenant", "acme"), ("action", "list")), Resolved(2, "second", "storefront.tenant.action")),
    (
        (("tenant", "acme"), ("action", "export")),
        Resolved(4, "hour", "storefront.tenant.action_export"),
    ),
    (
        (("tenant", "acme"), ("action", "bulk-delete")),
        Resolved(1, "hour", "storefront.tenant.action_bulk-delete", shadow=True),
    ),
    (
        (("tenant", "acme"), ("health", "x")),
        Resolved(0, None, "storefront.tenant.health", unlimited=True),
    ),
    ((("tenant", "acme"), ("user", "alice"), ("extra", "x")), None),  # deeper than the config
    (
        (("client_ip", "192.0.2.10"),),
        Resolved(15, "second", "storefront.client_ip_192_0_2_10"),  # detailed, sanitized
    ),
    ((("client_ip", "2001:db8::1"),), Resolved(15, "second", "storefront.client_ip_2001_db8__1")),
    ((("internal", "anything"),), Resolved(0, None, "storefront.internal", unlimited=True)),
    ((("quota", "images"),), Resolved(100, "day", "storefront.quota_images", quota=True)),
    ((("quota", "videos"),), Resolved(20, "day", "storefront.quota_videos", quota=True)),
    ((("quota", "music"),), None),
]


@pytest.mark.parametrize(("entries", "expected"), STOREFRONT, ids=[str(e) for e, _ in STOREFRONT])
def test_the_example_like_file_resolves_as_the_reference(
    entries: Entries, expected: Resolved | None
) -> None:
    assert resolve(load_rule_file(HERE / "storefront.yaml"), entries) == expected


def test_quota_descriptors_carry_their_metadata() -> None:
    domain = load_rule_file(HERE / "storefront.yaml")
    videos = matched(domain, ("quota", "videos")).node.metadata
    assert videos == {"quota_bucket": {"name": "videos", "tags": ["large", "paid"]}}


# (entries, limit, stat_key, stat_base_key)
STAT_KEYS: list[tuple[Entries, int, str, str]] = [
    # a wildcard keeps its pattern; an exact value beats it wherever it is in the file
    ((("asset", "img/logo.png"),), 100, "metrics.asset_img/*", "metrics.asset_img/*"),
    ((("asset", "img/special.png"),), 1, "metrics.asset_img/special.png", "=base"),
    # value_to_metric on a wildcard: the request's value
    ((("report", "daily-sales"),), 10, "metrics.report_daily-sales", "metrics.report_daily-*"),
    ((("order_path", "/v2/orders"),), 20, "metrics.order_path_/v*/orders", "=base"),
    # value_to_metric on keys alone, nested; an empty value adds no `_`
    (
        (("route", "checkout"), ("method", "POST"), ("caller", "c-1")),
        30,
        "metrics.route_checkout.method_POST.caller",
        "metrics.route.method.caller",
    ),
    (
        (("route", ""), ("method", "POST"), ("caller", "c-1")),
        30,
        "metrics.route.method_POST.caller",
        "metrics.route.method.caller",
    ),
    (
        (("route", "checkout"), ("method", "HEAD"), ("caller", "c-1")),
        300,
        "metrics.route_checkout.method_HEAD.caller",
        "metrics.route.method_HEAD.caller",
    ),
    # detailed_metric on the leaf: every entry with its value, `_` even before an empty one
    ((("org", "acme"), ("member", "bob")), 40, "metrics.org_acme.member_bob", "metrics.org.member"),
    ((("org", "acme"), ("member", "")), 40, "metrics.org_acme.member_", "metrics.org.member"),
    ((("lane", "fast"),), 50, "metrics.lane_fast", "=base"),
    # share_threshold: the pattern, also over value_to_metric and detailed_metric
    ((("team", "team-red"),), 60, "metrics.team_team-*", "=base"),
    ((("zone", "eu-west"),), 70, "metrics.zone_eu-*", "=base"),
    (
        (("project", "p-1"), ("job", "build")),
        80,
        "metrics.project_p-*.job_build",
        "metrics.project_p-*.job",
    ),
    ((("project", "p-1"), ("job", "")), 80, "metrics.project_p-*.job", "=base"),
    ((("project", "p-1"), ("stage", "qa")), 90, "metrics.project_p-*.stage", "=base"),
    # sanitized: `:` and `|` to `_`, and the dots of an IPv4 address
    ((("peer", "10.1.2.3:8080|x"),), 5, "metrics.peer_10_1_2_3_8080_x", "metrics.peer"),
    ((("host", "192.168.0.1"),), 6, "metrics.host_192_168_0_1", "=base"),
]


@pytest.mark.parametrize(
    ("entries", "limit", "stat_key", "base"), STAT_KEYS, ids=[str(e) for e, *_ in STAT_KEYS]
)
def test_stat_keys_are_the_references(
    entries: Entries, limit: int, stat_key: str, base: str
) -> None:
    match = matched(load_rule_file(HERE / "stat_keys.yaml"), *entries)
    assert match.node.limits[0].requests_per_unit == limit
    assert match.stat_key == stat_key
    assert match.stat_base_key == (stat_key if base == "=base" else base)


def test_share_threshold_shares_the_bucket_too() -> None:
    domain = load_rule_file(HERE / "stat_keys.yaml")
    job = matched(domain, ("project", "p-1"), ("job", "build"))
    assert job.bucket_entries == (("project", "p-*"), ("job", "build"))
    report = matched(domain, ("report", "daily-sales"))
    assert report.bucket_entries == (("report", "daily-sales"),)


ACCEPTED: list[tuple[Entries, Resolved]] = [
    ((("no_rate", "x"),), Resolved(0, "minute", "accepted.no_rate")),
    (
        (("unlimited_with_rate", "x"),),
        Resolved(50, None, "accepted.unlimited_with_rate", unlimited=True),
    ),
    (
        (("unlimited_with_unknown_unit", "x"),),
        Resolved(0, None, "accepted.unlimited_with_unknown_unit", unlimited=True),
    ),
    ((("shouting", "x"),), Resolved(7, "hour", "accepted.shouting")),
    ((("code", "404"),), Resolved(1, "second", "accepted.code_404")),
    # the reference looks `user` + `id` up as "user_id": the key-only `user_id` matches
    ((("user", "id"),), Resolved(9, "second", "accepted.user_id")),
    ((("user_id", "other"),), Resolved(9, "second", "accepted.user_id")),
    # `tier*` matches the composite "tiered_gold"; the trimmed pattern is kept whole
    ((("tiered", "gold"),), Resolved(11, "minute", "accepted.tiered_tier*")),
]


@pytest.mark.parametrize(("entries", "expected"), ACCEPTED, ids=[str(e) for e, _ in ACCEPTED])
def test_forms_the_reference_accepts_load(entries: Entries, expected: Resolved) -> None:
    assert resolve(load_rule_file(HERE / "accepted_forms.yaml"), entries) == expected


def test_zero_per_unit_blocks_every_request() -> None:
    domain = load_rule_file(HERE / "accepted_forms.yaml")
    assert matched(domain, ("no_rate", "x")).node.limits[0].blocks_all


def test_a_wildcard_key_shares_its_bucket() -> None:
    tiered = matched(load_rule_file(HERE / "accepted_forms.yaml"), ("tiered", "gold"))
    assert tiered.kinds == ("wildcard",)
    assert tiered.bucket_entries == (("tiered", "tier*"),)


def test_merged_domains_take_every_files_descriptors() -> None:
    rules = load_rules(HERE / "merge", merge_domains=True)
    domain = rules.domains["merged"]
    assert resolve(domain, (("key1", "value1"),)) == Resolved(10, "minute", "merged.key1_value1")
    assert resolve(domain, (("key2", "value2"),)) == Resolved(20, "minute", "merged.key2_value2")
    # wildcards are tried in load order: the first file's `a*` before the second's `ab*`
    assert resolve(domain, (("w", "abc"),)) == Resolved(1, "minute", "merged.w_a*")
    assert domain.source == f"{HERE / 'merge' / 'first.yaml'}, {HERE / 'merge' / 'second.yaml'}"


def test_without_merging_a_domain_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        load_rules(HERE / "merge")
    assert err.value.file == str(HERE / "merge" / "second.yaml")
    assert err.value.key == "domain"
    assert err.value.reason.startswith("duplicate domain 'merged', also in ")


def test_merging_refuses_a_composite_key_defined_in_two_files() -> None:
    with pytest.raises(ConfigError) as err:
        load_rules(HERE / "merge_duplicate", merge_domains=True)
    assert err.value.file == str(HERE / "merge_duplicate" / "second.yaml")
    assert err.value.key == "descriptors[1]"
    assert err.value.reason == (
        "duplicate descriptor composite key 'merged.key1_value1'"
        f" (also in {HERE / 'merge_duplicate' / 'first.yaml'})"
    )


REFUSED = [
    ("composite_duplicate.yaml", "descriptors[1]", "duplicate descriptor composite key 'd.a_b'"),
    ("empty_rate_limit.yaml", "descriptors[0].rate_limit", "unit is required"),
    ("non_string_key.yaml", "descriptors[0].0.5", "Keys should be strings"),
    ("unit_on_the_descriptor.yaml", "descriptors[0].unit", "unknown key"),
    (
        "unknown_unit_not_unlimited.yaml",
        "descriptors[0].rate_limit.unit",
        "invalid rate limit unit 'unknown'",
    ),
]


@pytest.mark.parametrize(("name", "key", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_files_name_the_place(name: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_rule_file(HERE / "refused" / name)
    assert (err.value.key, reason in err.value.reason) == (key, True)


def test_every_refused_fixture_is_listed() -> None:
    listed = sorted(name for name, _, _ in REFUSED)
    assert sorted(p.name for p in (HERE / "refused").iterdir()) == listed


# The reference's own files, where its checkout is present: what its tests load, loads;
# what they refuse, is refused; and the keys its tests pin are ours.
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="the envoyproxy/ratelimit checkout is not at /tmp/rlref"
)
REFERENCE_GOOD = [
    "examples/ratelimit/config/example.yaml",
    "examples/ratelimit/config/config.yaml",
    "test/config/basic_config.yaml",
    "test/config/metadata.yaml",
    "test/config/shadowmode_config.yaml",
    "test/config/share_threshold.yaml",
    "test/config/wildcard.yaml",
]
REFERENCE_BAD = [
    "bad_limit_unit",
    "bad_yaml",
    "duplicate_key",
    "empty_domain",
    "empty_key",
    "misspelled_key",
    "misspelled_key2",
    "non_map_list",
    "non_string_key",
    "replaces_empty",
    "replaces_self",
    "unlimited_with_unit",
]


@needs_reference
@pytest.mark.parametrize("name", REFERENCE_GOOD)
def test_the_references_good_files_load(name: str) -> None:
    load_rule_file(REFERENCE / name)


@needs_reference
@pytest.mark.parametrize("name", REFERENCE_BAD)
def test_the_references_bad_files_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        load_rule_file(REFERENCE / "test" / "config" / f"{name}.yaml")


@needs_reference
def test_the_references_pinned_keys() -> None:
    folder = REFERENCE / "test" / "config"
    basic = load_rule_file(folder / "basic_config.yaml")
    assert matched(basic, ("key1", "value1"), ("subkey1", "x")).stat_key == (
        "test-domain.key1_value1.subkey1"
    )
    assert matched(basic, ("key7", "unspecified_value")).stat_key == (
        "test-domain.key7_unspecified_value"
    )
    shared = load_rule_file(folder / "share_threshold.yaml")
    assert matched(shared, ("service", "svc/user"), ("endpoint", "get")).stat_key == (
        "test-domain.service_svc/*.endpoint_get"
    )
    user = matched(shared, ("user", "user/alice"), ("resource", "res/file1"), ("action", "read"))
    assert user.stat_key == "test-domain.user_user/*.resource_res/*.action"
    wild = load_rule_file(folder / "wildcard.yaml")
    assert matched(wild, ("nestedWild", "val1"), ("wild", "goo2")).stat_key == (
        "test-domain.nestedWild_val1.wild_goo*"
    )


@needs_reference
def test_the_references_merge_cases() -> None:
    folder = REFERENCE / "test" / "config"
    merged = load_rules(
        [folder / "merge_domain_key1.yaml", folder / "merge_domain_key2.yaml"], merge_domains=True
    )
    assert matched(merged.domains["test-domain"], ("key2", "value2")).node.limits
    with pytest.raises(ConfigError, match="duplicate descriptor composite key"):
        load_rules([folder / "merge_domain_key1.yaml"] * 2, merge_domains=True)
    with pytest.raises(ConfigError, match="duplicate domain 'test-domain'"):
        load_rules([folder / "basic_config.yaml", folder / "duplicate_domain.yaml"])
