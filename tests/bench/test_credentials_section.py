"""The credentials section's pure parts: the bench policy and the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from authz_service.settings import load_settings
from bench import credentials_section
from bench.credentials_section import API_KEY, JWT, ROLE, RULE, SCOPE
from devstack import configs
from devstack.pki import ensure_pki


def test_the_policy_takes_both_credentials_and_the_ceiling_allows_the_minted_key(
    tmp_path: Path,
) -> None:
    policy = credentials_section.write_policy(tmp_path / "policy.yaml")
    pepper = tmp_path / "pepper"
    pepper.write_text("p" * 64)
    data = configs.authz_config(
        listen="127.0.0.1:1", pki_dir=str(ensure_pki(tmp_path / "pki").root),
        issuer="http://127.0.0.1:8082", source=policy, redis_url="redis://127.0.0.1:1/0",
        pepper_file=str(pepper),
    )  # fmt: skip
    (tmp_path / "authz.yaml").write_text(configs.dump(data, policy))
    settings = load_settings(tmp_path / "authz.yaml")
    rule = next(r for r in settings.routes if r.name == RULE)
    assert rule.credentials == (JWT, API_KEY)
    assert rule.path == credentials_section.path("{id}")
    assert rule.scopes == (SCOPE,)
    assert settings.api_keys is not None
    assert settings.api_keys.ceiling.max_scopes == {SCOPE}
    assert settings.api_keys.ceiling.max_roles == {ROLE}


def _load(rate: float, **cores: float) -> dict[str, Any]:
    return {"rate_rps": rate, "cpu": {"cores": cores}, "statuses": {"200": 1}}


def test_the_summary_takes_the_api_key_minus_the_jwt_per_round_and_their_medians() -> None:
    loads = {
        JWT: [_load(1000, envoy=0.4, authz=0.3), _load(500, envoy=0.2, authz=0.15)],
        API_KEY: [_load(800, envoy=0.32, authz=0.32), _load(500, envoy=0.2, authz=0.2)],
    }
    summary = credentials_section.summarize(loads, verified={})
    difference = summary["difference"]
    assert [d["rate_ratio"] for d in difference["per_round"]] == [0.8, 1.0]
    assert difference["rate_ratio"] == 0.9
    us = difference["us_by_process"]
    # authz: 400 - 300 and 400 - 300 µs; envoy the same in both rounds; the servers' sum.
    assert round(us["authz"]) == 100
    assert round(us["envoy"]) == 0
    assert round(us["servers"]) == 100
    assert summary["credentials"][API_KEY]["sent"] == "Authorization: ApiKey ..."
    assert summary["credentials"][JWT]["saturation"]["from_rounds"] == [1000, 500]
    assert "introspected_difference" not in summary  # no opaque token was loaded
