"""The servicer's own byte paths: requests remembered by their bytes, answers written
without a message, each checked against the protobuf path it stands in for."""

from __future__ import annotations

import random

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimit_service.decision import NO_LIMIT, UNLIMITED, Code, Decision, Status
from ratelimit_service.errors import InvalidRequestError
from ratelimit_service.limits.planner import MAX_UINT32
from ratelimit_service.limits.rules import UNIT_SECONDS, make_limit
from ratelimit_service.servicer import (
    ENUM_BY_UNIT,
    RequestReader,
    to_request,
    to_response,
)
from tests.ratelimit_service.request_bodies import AT_THE_CAPS, MALFORMED
from tests.ratelimit_service.test_grpc import rl_request

LIMITS = (
    make_limit(rule_id="per-address", name="per-address", requests_per_unit=20, unit="second"),
    make_limit(rule_id="edge.subject", requests_per_unit=10, unit="minute", burst=25),
    make_limit(rule_id="daily", name="daily", requests_per_unit=100_000, unit="day"),
    make_limit(rule_id="edge.override", requests_per_unit=3, unit="year", tag="override:3/year"),
)


def _random_status(rng: random.Random) -> Status:
    shape = rng.random()
    if shape < 0.1:
        return NO_LIMIT
    if shape < 0.2:
        return UNLIMITED
    remaining = rng.choice([0, 1, 127, 128, 16_383, 16_384, 99_999, MAX_UINT32, 2**40])
    reset_us = rng.choice(
        [0, 1, 999, 1_000, 999_999, 1_000_000, 1_000_001, 86_400_000_000, rng.randrange(10**12)]
    )
    return Status(Code.OK, rng.choice(LIMITS), remaining, reset_us)


def test_ok_answers_carry_each_status_s_numbers() -> None:
    rng = random.Random(7)
    for _ in range(500):
        statuses = tuple(_random_status(rng) for _ in range(rng.randint(1, 4)))
        parsed = rls_pb2.RateLimitResponse.FromString(
            to_response(Decision(Code.OK, statuses), "edge").SerializeToString()
        )
        assert parsed.overall_code == rls_pb2.RateLimitResponse.OK
        for status, out in zip(statuses, parsed.statuses, strict=True):
            assert out.limit_remaining == min(status.remaining, MAX_UINT32)
            reset = out.duration_until_reset
            assert reset.seconds * 1_000_000 + reset.nanos // 1000 == status.reset_us
            if status.limit is None:
                assert not out.HasField("current_limit")
            else:
                assert out.current_limit.requests_per_unit == status.limit.requests_per_unit


def test_answers_with_a_reason_carry_it_and_the_decision_id() -> None:
    denied = Decision(
        Code.OVER_LIMIT,
        (Status(Code.OVER_LIMIT, LIMITS[0], 0, 2_000_000),),
        retry_after_s=1,
        rule="per-address",
        reason="over_limit",
    )
    parsed = rls_pb2.RateLimitResponse.FromString(
        to_response(denied, "edge", "id-1").SerializeToString()
    )
    assert parsed.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert dict(parsed.dynamic_metadata)["decision_id"] == "id-1"
    assert dict(parsed.dynamic_metadata)["decision"] == "over_limit"
    assert [(h.key, h.value) for h in parsed.response_headers_to_add] == [("retry-after", "1")]
    tagged = to_response(Decision(Code.OK, (NO_LIMIT,), metadata={"tier": "gold"}), "edge")
    assert dict(tagged.dynamic_metadata)["metadata"] == {"tier": "gold"}


def test_every_unit_is_written() -> None:
    for unit in UNIT_SECONDS:
        limit = make_limit(rule_id="r", requests_per_unit=5, unit=unit)
        response = to_response(Decision(Code.OK, (Status(Code.OK, limit, 4, 1_500_000),)), "e")
        assert response.statuses[0].current_limit.unit == ENUM_BY_UNIT[unit]


def test_a_repeated_body_is_parsed_once() -> None:
    reader = RequestReader()
    body = rl_request(remote_address="192.0.2.1", subject="alice").SerializeToString()
    first = reader.read(body)
    assert first == to_request(rls_pb2.RateLimitRequest.FromString(body))
    assert reader.read(bytes(body)) is first  # equal bytes, another object: remembered
    other = rl_request(remote_address="192.0.2.2").SerializeToString()
    assert reader.read(other) != first
    assert len(reader) == 2


def test_the_memory_is_bounded_oldest_first_and_large_bodies_are_not_kept() -> None:
    reader = RequestReader(max_entries=3, max_body_bytes=200)
    bodies = [rl_request(subject=f"user-{i}").SerializeToString() for i in range(5)]
    plains = [reader.read(body) for body in bodies]
    assert len(reader) == 3
    assert reader.read(bodies[4]) is plains[4]  # still known
    assert reader.read(bodies[0]) is not plains[0]  # evicted, parsed again
    large = rl_request(subject="x" * 300).SerializeToString()
    reader.read(large)
    assert reader.read(large) is not reader.read(large)
    assert len(reader) == 3


@pytest.mark.parametrize("body", AT_THE_CAPS.values(), ids=AT_THE_CAPS.keys())
def test_requests_at_the_caps_are_read(body: bytes) -> None:
    reader = RequestReader(max_body_bytes=len(body))
    assert reader.read(body) == to_request(rls_pb2.RateLimitRequest.FromString(body))
    assert len(reader) == 1


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_bad_bodies_are_refused_every_time_and_never_remembered(body: bytes) -> None:
    # Room for any body: only its being malformed may keep it out of the memory.
    reader = RequestReader(max_body_bytes=len(body) + 1)
    for _ in range(2):
        with pytest.raises(InvalidRequestError) as refused:
            reader.read(body)
        assert refused.value.grpc_status == grpc.StatusCode.INVALID_ARGUMENT
        assert "alice" not in str(refused.value)  # the rule broken, never a value sent
    assert len(reader) == 0
