"""Rule files: every reference form loads; one bad file per error class, located."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratelimit_service.limits.config import load_rule_file, load_rules, rule_files
from ratelimit_service.limits.rules import Limit, RuleSet
from sidecar_runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def limits(rules: RuleSet, domain: str, *entries: tuple[str, str]) -> tuple[Limit, ...]:
    found = rules.domains[domain].match(entries)
    return found.node.limits if found is not None else ()


def test_every_reference_form_loads(fixtures: Path) -> None:
    rules = load_rules(fixtures / "good" / "reference_forms.yaml")
    (nested,) = limits(
        rules, "reference", ("source_cluster", "proxy"), ("destination_cluster", "mock")
    )
    assert (nested.requests_per_unit, nested.unit, nested.burst) == (1, "minute", 1)
    (client,) = limits(rules, "reference", ("client", "anyone"))
    assert client.unit == "minute"  # "Minute" in the file
    (banned,) = limits(rules, "reference", ("client", "x"), ("route", "banned"))
    assert banned.blocks_all
    (health,) = limits(rules, "reference", ("client", "x"), ("health", "y"))
    assert health.unlimited
    (shadow,) = limits(rules, "reference", ("client", "x"), ("method", "DELETE"))
    assert shadow.shadow
    assert limits(rules, "reference", ("client", "trusted")) == ()
    (gold,) = limits(rules, "reference", ("plan", "gold"))
    assert (gold.name, gold.unit, gold.replaces) == ("gold", "year", frozenset({"default-plan"}))
    (default_plan,) = limits(rules, "reference", ("plan", "silver"))
    assert (default_plan.unit_multiplier, default_plan.window_seconds) == (5, 300)
    (numbers,) = limits(rules, "reference", ("numbers", "200"))
    assert numbers.requests_per_unit == 2**32 - 1


def test_extensions_burst_and_several_limits(fixtures: Path) -> None:
    rules = load_rules(fixtures / "good" / "extensions.yaml")
    (address,) = limits(rules, "extended", ("remote_address", "10.0.0.1"))
    assert (address.requests_per_unit, address.burst) == (20, 40)
    rate, daily, extra = limits(rules, "extended", ("subject", "alice"))
    assert (rate.rule_id, rate.burst, rate.unit) == ("subject-rate", 20, "second")
    assert (daily.rule_id, daily.burst, daily.unit) == ("subject-daily", 10000, "day")
    assert extra.rule_id == "extended.subject[2]"
    assert len({rate.tag, daily.tag, extra.tag}) == 3  # three distinct buckets


def test_the_demo_config_loads() -> None:
    rules = load_rules(REPO / "config" / "ratelimit" / "rules")
    (address,) = limits(rules, "edge", ("remote_address", "192.0.2.1"))
    (subject,) = limits(rules, "edge", ("subject", "alice"))
    assert (address.requests_per_unit, address.burst, address.unit) == (20, 40, "second")
    assert (subject.requests_per_unit, subject.burst, subject.unit) == (10, 20, "second")


def test_a_directory_loads_every_yaml_file(fixtures: Path) -> None:
    rules = load_rules(fixtures / "good")
    assert sorted(rules.domains) == ["extended", "nothing", "quota", "reference"]
    assert all(source.endswith((".yaml", ".yml")) for source in rules.sources)


def test_a_domain_in_two_files_is_refused(fixtures: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_rules(fixtures / "dup_domain")
    assert err.value.file.endswith("two.yml")
    assert err.value.key == "domain"
    assert "one.yaml" in err.value.reason


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".hidden.yaml").write_text("domain: x\n")
    with pytest.raises(ConfigError, match=r"no \.yaml or \.yml rule files"):
        rule_files(tmp_path)


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_rules(tmp_path / "absent.yaml")


BAD = [
    ("unknown_key.yaml", "descriptors[0].rate_limit.requests_per_uint", "unknown key"),
    ("unknown_top_level_key.yaml", "descripters", "unknown key"),
    ("duplicate_descriptor.yaml", "descriptors[1]", "duplicate descriptor composite key 'd.a_x'"),
    (
        "duplicate_nested_descriptor.yaml",
        "descriptors[0].descriptors[1]",
        "duplicate descriptor composite key 'd.a.b'",
    ),
    ("bad_unit.yaml", "descriptors[0].rate_limit.unit", "invalid rate limit unit 'fortnight'"),
    ("missing_unit.yaml", "descriptors[0].rate_limit", "unit is required"),
    (
        "unlimited_with_unit.yaml",
        "descriptors[0].rate_limit.unit",
        "should not specify rate limit unit when unlimited",
    ),
    ("empty_domain.yaml", "domain", "at least 1 character"),
    ("missing_domain.yaml", "domain", "Field required"),
    ("empty_key.yaml", "descriptors[0].key", "at least 1 character"),
    ("replaces_self.yaml", "descriptors[0].rate_limit", "own name"),
    ("replaces_empty.yaml", "descriptors[0].rate_limit.replaces[0].name", "at least 1 character"),
    ("non_map_list.yaml", "descriptors[0].descriptors[0]", "valid dictionary"),
    ("duplicate_yaml_key.yaml", "line 4, column 5", "duplicate key 'key'"),
    (
        "string_requests_per_unit.yaml",
        "descriptors[0].rate_limit.requests_per_unit",
        "valid integer",
    ),
    (
        "negative_requests_per_unit.yaml",
        "descriptors[0].rate_limit.requests_per_unit",
        "greater than",
    ),
    ("zero_unit_multiplier.yaml", "descriptors[0].rate_limit.unit_multiplier", "greater than"),
    ("zero_burst.yaml", "descriptors[0].rate_limit.burst", "greater than"),
    ("burst_without_rate.yaml", "descriptors[0].rate_limit", "burst needs requests_per_unit"),
    ("rate_limit_and_rate_limits.yaml", "descriptors[0]", "either rate_limit or rate_limits"),
    ("unlimited_in_list.yaml", "descriptors[0]", "unlimited belongs in rate_limit"),
    ("share_threshold_without_wildcard.yaml", "descriptors[0]", "wildcard value"),
    ("invalid_yaml.yaml", "line 4, column 16", "invalid YAML"),
    ("not_a_mapping.yaml", "<root>", "valid dictionary"),
    ("float_value.yaml", "descriptors[0].value", "valid string"),
]


# Once refused, now accepted as the reference accepts it (the fixture stays where it was).
def test_every_bad_fixture_is_listed(fixtures: Path) -> None:
    assert sorted(p.name for p in (fixtures / "bad").iterdir()) == sorted(
        [name for name, _, _ in BAD]
    )


def test_quota_mode_is_carried_on_the_limit(fixtures: Path) -> None:
    domain = load_rule_file(fixtures / "good" / "quota_mode.yaml")
    found = domain.match((("a", "x"),))
    assert found is not None
    assert [limit.quota for limit in found.node.limits] == [True]


@pytest.mark.parametrize(("name", "key", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_file_names_file_key_and_reason(
    fixtures: Path, name: str, key: str, reason: str
) -> None:
    path = fixtures / "bad" / name
    with pytest.raises(ConfigError) as err:
        load_rule_file(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{path}: {key}: ")
