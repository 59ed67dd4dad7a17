"""The decision log: rate-limited lines and pseudonymous descriptor values."""

from __future__ import annotations

import logging

import pytest

from ratelimit_service.decision_log import DecisionLog
from sidecar_runtime.clock import ManualClock


def test_decision_log_is_rate_limited_and_hashes_values(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    log = DecisionLog(lines_per_second=2, clock=clock, hash_key=b"key")
    with caplog.at_level(logging.INFO, logger="ratelimit_service.decisions"):
        for _ in range(50):
            log.over_limit(
                domain="edge",
                entries=[("remote_address", "192.0.2.1")],
                rule="per-client-address",
                shadow=False,
                cost=1,
                retry_after_s=1,
            )
        clock.advance(1.0)
        log.store_failure(store="redis", error="timeout", failure_mode="fail_open")
    records = [r for r in caplog.records if r.name == "ratelimit_service.decisions"]
    assert len(records) == 3  # a burst of 2, then one more after a second
    assert log.written == 3
    fields = [r.fields for r in records]  # type: ignore[attr-defined]
    assert fields[0]["descriptor"] == {"remote_address": log.pseudonym("192.0.2.1")}
    assert "192.0.2.1" not in str(fields)
    assert fields[2]["event"] == "store_failure"
    assert fields[2]["suppressed"] == 48


def test_pseudonyms_are_stable_per_key_and_differ_across_keys() -> None:
    clock = ManualClock()
    a = DecisionLog(lines_per_second=1, clock=clock, hash_key=b"one")
    b = DecisionLog(lines_per_second=1, clock=clock, hash_key=b"two")
    assert a.pseudonym("alice") == a.pseudonym("alice")
    assert a.pseudonym("alice") != a.pseudonym("bob")
    assert a.pseudonym("alice") != b.pseudonym("alice")
