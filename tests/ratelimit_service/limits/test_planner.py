"""The Planner's plan cache: same plans as planning afresh, bounded, one per rule set."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratelimit_service.limits.bucket import CallMode
from ratelimit_service.limits.config import load_rule_file
from ratelimit_service.limits.planner import (
    MAX_CACHED_CHARS,
    MAX_CACHED_DESCRIPTORS,
    DescriptorRequest,
    Planner,
    Request,
    plan,
)
from ratelimit_service.limits.rules import RuleSet
from tests.ratelimit_service.test_service import RULES as SERVICE_RULES

RULES = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {name: per-address, unit: second, requests_per_unit: 20, burst: 40}
  - key: subject
    rate_limit: {name: per-subject, unit: second, requests_per_unit: 10}
"""


def rules(tmp_path: Path, text: str = RULES) -> RuleSet:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return RuleSet({"edge": load_rule_file(path)})


def ask(*entries: tuple[str, str], hits: int = 0) -> Request:
    return Request("edge", tuple(DescriptorRequest((e,)) for e in entries), hits)


@pytest.fixture
def planner(tmp_path: Path) -> Planner:
    return Planner(rules(tmp_path), prefix="rl:", hash_tags=False, max_plans=4)


def test_a_repeated_request_gets_the_identical_plan(planner: Planner) -> None:
    first = planner.plan(ask(("remote_address", "192.0.2.1"), ("subject", "alice")))
    again = planner.plan(ask(("remote_address", "192.0.2.1"), ("subject", "alice")))
    assert first is not None
    assert again is first
    domain = planner.rules.domain("edge")
    assert domain is not None
    fresh = plan(
        domain,
        ask(("remote_address", "192.0.2.1"), ("subject", "alice")),
        prefix="rl:",
        hash_tags=False,
    )
    assert first == fresh


def test_hits_addend_is_part_of_the_key(planner: Planner) -> None:
    one = planner.plan(ask(("subject", "alice")))
    five = planner.plan(ask(("subject", "alice"), hits=5))
    assert one is not None
    assert five is not None
    assert [c.cost for c in one.checks] == [1]
    assert [c.cost for c in five.checks] == [5]


def test_the_cache_is_bounded_least_recently_used_first(planner: Planner) -> None:
    kept = ask(("subject", "kept"))
    planner.plan(kept)
    for i in range(50):  # client-chosen values: new keys every call
        planner.plan(ask(("remote_address", f"198.51.100.{i}")))
        planner.plan(kept)  # in use: stays
    assert len(planner) == 4
    assert planner.plan(kept) is planner.plan(kept)


def test_large_requests_are_planned_but_not_cached(planner: Planner) -> None:
    long_value = ask(("subject", "x" * MAX_CACHED_CHARS))
    many = ask(*[("remote_address", f"a{i}") for i in range(MAX_CACHED_DESCRIPTORS + 1)])
    for request in (long_value, many):
        the_plan = planner.plan(request)
        assert the_plan is not None
        assert the_plan.checks
    assert len(planner) == 0


def test_unknown_domains_have_no_plan(planner: Planner) -> None:
    assert planner.plan(Request("other", (DescriptorRequest((("k", "v"),)),))) is None
    assert len(planner) == 0


def test_a_new_rule_set_starts_with_an_empty_cache(tmp_path: Path, planner: Planner) -> None:
    request = ask(("remote_address", "192.0.2.1"))
    old = planner.plan(request)
    assert old is not None
    reloaded = Planner(
        rules(tmp_path, RULES.replace("burst: 40", "burst: 45")), prefix="rl:", hash_tags=False
    )
    new = reloaded.plan(request)
    assert new is not None
    assert (old.checks[0].limit.burst, new.checks[0].limit.burst) == (40, 45)


def test_a_plan_carries_the_store_calls_of_all_its_checks(tmp_path: Path) -> None:
    planned = Planner(rules(tmp_path, SERVICE_RULES), prefix="rl:", hash_tags=False).plan(
        ask(("subject", "alice"), ("internal", "x"), ("trial", "t"))
    )
    assert planned is not None
    assert planned.store_ready
    keys = [check.key for check in planned.checks]  # subject-rate, subject-daily, trial
    assert planned.keys == tuple(keys)
    calls = [(c.key, c.cost, c.mode) for c in planned.calls]
    assert calls == [
        (keys[0], 1, CallMode.ENFORCE),
        (keys[1], 1, CallMode.ENFORCE),
        (keys[2], 1, CallMode.SHADOW),  # a shadow limit's denial vetoes nothing
    ]
    assert [c.spec for c in planned.calls] == [check.limit.spec for check in planned.checks]
    assert planned.call_of == (0, 1, 2)


def test_the_same_bucket_twice_is_one_call_with_the_costs_added(tmp_path: Path) -> None:
    planned = Planner(rules(tmp_path, SERVICE_RULES), prefix="rl:", hash_tags=False).plan(
        Request(
            "edge",
            (
                DescriptorRequest((("remote_address", "192.0.2.1"),), hits_addend=3),
                DescriptorRequest((("remote_address", "192.0.2.1"),), hits_addend=4),
            ),
        )
    )
    assert planned is not None
    [call] = planned.calls
    assert call.cost == 7
    assert planned.call_of == (0, 0)


@pytest.mark.parametrize(
    "request_",
    [
        ask(("subject", "alice"), ("blocked", "b")),  # refused without asking the store
        ask(("remote_address", "192.0.2.1"), hits=41),  # a cost above the burst
    ],
    ids=["blocks-all", "over-burst"],
)
def test_plans_with_a_check_answered_locally_carry_no_calls(
    tmp_path: Path, request_: Request
) -> None:
    planned = Planner(rules(tmp_path, SERVICE_RULES), prefix="rl:", hash_tags=False).plan(request_)
    assert planned is not None
    assert not planned.store_ready
    assert planned.calls == ()
    assert any(check.answered_locally for check in planned.checks)


QUOTA_RULES = """
domain: edge
descriptors:
  - key: service
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: trial
    quota_mode: true
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: subject
    rate_limit: {unit: minute, requests_per_unit: 2}
"""


@pytest.mark.parametrize(
    ("all_quota", "modes"),
    [
        (False, [CallMode.QUOTA, CallMode.SHADOW, CallMode.ENFORCE]),
        (True, [CallMode.QUOTA, CallMode.SHADOW, CallMode.QUOTA]),
    ],
    ids=["per-descriptor", "global-quota-mode"],
)
def test_quota_mode_reaches_the_calls_and_shadow_mode_wins(
    tmp_path: Path, all_quota: bool, modes: list[CallMode]
) -> None:
    planner = Planner(
        rules(tmp_path, QUOTA_RULES), prefix="rl:", hash_tags=False, all_quota=all_quota
    )
    planned = planner.plan(ask(("service", "s1"), ("trial", "t"), ("subject", "alice")))
    assert planned is not None
    assert [check.mode for check in planned.checks] == modes
    assert [call.mode for call in planned.calls] == modes
