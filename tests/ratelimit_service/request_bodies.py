"""Serialized RateLimitRequests at and over the servicer's bounds, for the reader's tests
and the real gRPC server's: Envoy's proto rules (validate.rules) and the caps."""

from __future__ import annotations

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from ratelimit_service.servicer import MAX_DESCRIPTORS, MAX_ENTRIES, MAX_TEXT_CHARS


def _descriptor(*entries: tuple[str, str]) -> ratelimit_pb2.RateLimitDescriptor:
    return ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )


def _body(*descriptors: ratelimit_pb2.RateLimitDescriptor, domain: str = "edge") -> bytes:
    message = rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors)
    body: bytes = message.SerializeToString()
    return body


ONE = ("subject", "alice")
AT_THE_CAPS = {
    "descriptors": _body(*[_descriptor(("n", str(i))) for i in range(MAX_DESCRIPTORS)]),
    "entries": _body(_descriptor(*[(f"k{i}", "v") for i in range(MAX_ENTRIES)])),
    "key": _body(_descriptor(("k" * MAX_TEXT_CHARS, "v"))),
    "value": _body(_descriptor(("k", "v" * MAX_TEXT_CHARS))),
    "empty-value": _body(_descriptor(("k", ""))),  # Envoy's proto allows it (min_len 0)
}
MALFORMED = {
    "garbage": b"\xff\xff\xff",  # not protobuf
    "no-domain": _body(_descriptor(ONE), domain=""),
    "no-descriptors": _body(),
    "descriptor-without-entries": _body(_descriptor()),
    "one-of-two-descriptors-without-entries": _body(_descriptor(ONE), _descriptor()),
    "empty-key": _body(_descriptor(("", "x"))),
    "empty-key-after-a-good-entry": _body(_descriptor(ONE, ("", "x"))),
    "descriptors-over-the-cap": _body(
        *[_descriptor(("n", str(i))) for i in range(MAX_DESCRIPTORS + 1)]
    ),
    "entries-over-the-cap": _body(_descriptor(*[(f"k{i}", "v") for i in range(MAX_ENTRIES + 1)])),
    "key-over-the-cap": _body(_descriptor(("k" * (MAX_TEXT_CHARS + 1), "v"))),
    "value-over-the-cap": _body(_descriptor(("k", "v" * (MAX_TEXT_CHARS + 1)))),
}
