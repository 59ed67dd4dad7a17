"""The "Credentials" table, from a stored result."""

from __future__ import annotations

from typing import Any

from bench import credentials_report, credentials_section
from bench.credentials_section import API_KEY, JWT


def _load(rate: float, **cores: float) -> dict[str, Any]:
    return {
        "rate_rps": rate,
        "cpu": {"cores": cores},
        "statuses": {"200": 1},
        "latency": {"p50_ms": 20.0, "p99_ms": 45.0},
    }


def _result() -> dict[str, Any]:
    loads = {
        JWT: [_load(1000, envoy=0.45, authz=0.35, ratelimit=0.3, redis=0.05)],
        API_KEY: [_load(1000, envoy=0.45, authz=0.4, ratelimit=0.3, redis=0.05)],
    }
    return {
        "machine": {"nproc_available": 2},
        "timing": {"edge_saturation_s": 3.0},
        "sections": {"credentials": credentials_section.summarize(loads, verified={})},
    }


def test_markdown_has_the_credentials_and_their_differences() -> None:
    lines = credentials_report.markdown(_result())
    assert "### Credentials" in lines
    jwt = "| cached JWT | `Authorization: Bearer ...` | **1000** (1000) | 450 | 350 | 300 | 50 |"
    assert any(line.startswith(jwt) for line in lines)
    key = "| API key (cached record) | `Authorization: ApiKey ...` | **1000** (1000) | 450 | 400 |"
    assert any(line.startswith(key) for line in lines)
    assert (
        "| **API key - JWT** | - | API key ÷ JWT: 1.00 | +0 | +50 | +0 | +0 | **+50** | - |"
        in lines
    )
    # Without the provider, the opaque token's row says it was not measured.
    missing = [line for line in lines if line.startswith("| introspected opaque token")]
    assert len(missing) == 1
    assert "not measured" in missing[0]
    assert missing[0].count("|") == lines[-4].count("|")


def test_an_introspected_token_gets_its_row_and_its_difference() -> None:
    result = _result()
    section = result["sections"]["credentials"]
    section["credentials"][credentials_section.OPAQUE] = {
        **section["credentials"][credentials_section.JWT],
        "sent": "Authorization: Bearer ...",
    }
    section["introspected_difference"] = section["difference"]
    lines = credentials_report.markdown(result)
    assert any(line.startswith("| introspected opaque token (cached answer) |") for line in lines)
    assert any(line.startswith("| **opaque - JWT** |") for line in lines)


def test_markdown_without_the_section_or_after_a_failure_is_empty() -> None:
    assert credentials_report.markdown({"sections": {}}) == []
    assert credentials_report.markdown({"sections": {"credentials": {"failed": "x"}}}) == []
