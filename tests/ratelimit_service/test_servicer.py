"""The servicer's own byte paths: requests remembered by their bytes, answers written
without a message, each checked against the protobuf path it stands in for."""

from __future__ import annotations

import random

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimit_service.errors import InvalidRequestError
from ratelimit_service.limits.planner import MAX_UINT32
from ratelimit_service.limits.rules import UNIT_SECONDS, make_limit
from ratelimit_service.service import NO_LIMIT, UNLIMITED, Code, Decision, Status
from ratelimit_service.servicer import (
    RequestReader,
    ResponseWriter,
    _varint,
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


def test_written_ok_answers_are_the_bytes_protobuf_serializes() -> None:
    rng = random.Random(7)
    writer = ResponseWriter()
    for _ in range(3000):
        statuses = tuple(_random_status(rng) for _ in range(rng.randint(1, 4)))
        decision = Decision(Code.OK, statuses)
        expected = to_response(decision, "edge").SerializeToString()
        assert writer.write(decision, "edge") == expected, decision


def test_answers_with_a_reason_or_metadata_go_through_the_message() -> None:
    writer = ResponseWriter()
    denied = Decision(
        Code.OVER_LIMIT,
        (Status(Code.OVER_LIMIT, LIMITS[0], 0, 2_000_000),),
        retry_after_s=1,
        rule="per-address",
        reason="over_limit",
    )
    shadow = Decision(Code.OK, (NO_LIMIT,), rule="trial", reason="shadow_over_limit")
    tagged = Decision(Code.OK, (NO_LIMIT,), metadata={"tier": "gold"})
    for decision in (denied, shadow, tagged):
        wire = writer.write(decision, "edge", "id-1")
        assert wire == to_response(decision, "edge", "id-1").SerializeToString()
    parsed = rls_pb2.RateLimitResponse.FromString(writer.write(denied, "edge", "id-1"))
    assert parsed.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert dict(parsed.dynamic_metadata)["decision_id"] == "id-1"
    assert [(h.key, h.value) for h in parsed.response_headers_to_add] == [("retry-after", "1")]


def test_every_unit_is_written_as_protobuf_does() -> None:
    writer = ResponseWriter()
    for unit in UNIT_SECONDS:
        limit = make_limit(rule_id="r", requests_per_unit=5, unit=unit)
        decision = Decision(Code.OK, (Status(Code.OK, limit, 4, 1_500_000),))
        assert writer.write(decision, "edge") == to_response(decision, "edge").SerializeToString()


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


def test_varints_are_protobuf_s_at_every_length() -> None:
    # Every boundary of 1 to 5 bytes, through a uint32 field protobuf serializes itself.
    edges = [(1 << (7 * n)) + d for n in range(5) for d in (-1, 0, 1)]
    for value in [0, 1, 300, *edges, MAX_UINT32]:
        value = min(max(value, 0), MAX_UINT32)
        status = rls_pb2.RateLimitResponse.DescriptorStatus(limit_remaining=value)
        expected = status.SerializeToString()
        assert (b"\x18" + _varint(value) if value else b"") == expected, value
