"""A smoke run of the body-validation micro-benchmark with tiny counts."""

from __future__ import annotations

import pytest

from bench import body_validation


def test_measure_gives_a_row_per_validator_and_schema() -> None:
    rows = body_validation.measure(rounds=2)
    assert {(row["validator"], row["schema"]) for row in rows} == {
        (validator, schema)
        for validator in (
            "jsonschema-rs 2020-12",
            "jsonschema-rs draft-07",
            "jsonschema 2020-12",
            "fastjsonschema draft-07",
        )
        for schema in ("demo", "profile")
    }
    assert all(row["valid_us"] > 0 and row["invalid_us"] > 0 for row in rows)


def test_main_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    body_validation.main(["1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["validator", "schema"]
    assert len(lines) == 11


def test_the_draft7_equivalent_closes_every_object() -> None:
    closed = body_validation.draft7_closed(body_validation.PROFILE)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["address"]["additionalProperties"] is False
    assert closed["properties"]["phones"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in body_validation.PROFILE


def test_measure_check_times_the_sidecars_whole_check_per_schema() -> None:
    rows = body_validation.measure_check(rounds=2)
    assert [row["schema"] for row in rows] == ["demo", "profile"]
    for row in rows:
        assert row["validator"] == body_validation.CHECK_NAME
        assert row["valid_us"] > 0
        assert row["invalid_us"] > 0
        assert row["valid_bytes"] > 0
        assert row["invalid_bytes"] > 0


def test_the_compiled_demo_schema_refuses_mass_assignment() -> None:
    body = body_validation.compiled(body_validation.DEMO)
    ok = body.check(b'{"display_name":"Ada","email":"ada@example.com"}', "application/json")
    assert ok.ok
    refused = body.check(
        b'{"display_name":"Ada","email":"ada@example.com","roles":["admin"]}',
        "application/json",
    )
    assert [v.pointer for v in refused.violations] == ["/roles"]
