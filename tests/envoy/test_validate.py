"""Every Envoy config in the repo, and fresh renders, pass `envoy --mode validate`.

Validation loads the certificate files, so each config is validated with its `filename`s
pointed at a PKI made for the test (same file names, throwaway keys).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.envoy_config import PROFILES, render
from devstack.pki import Pki
from tests.envoy.envoy_process import validate

REPO = Path(__file__).resolve().parents[2]
REPO_CONFIGS = sorted((REPO / "envoy").glob("*.yaml"))


def _with_pki(node: Any, pki: Pki) -> Any:
    """A copy of the config with every `filename` moved into `pki.root`, same base name."""
    if isinstance(node, dict):
        return {
            key: str(pki.root / Path(value).name) if key == "filename" else _with_pki(value, pki)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_with_pki(item, pki) for item in node]
    return node


def _assert_valid(config: Path) -> None:
    result = validate(config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"envoy --mode validate -c {config} failed:\n{output}"
    assert "OK" in output


def test_the_repo_has_both_profiles() -> None:
    assert {p.name for p in REPO_CONFIGS} >= {"envoy.local.yaml", "envoy.compose.yaml"}


@pytest.mark.parametrize("source", REPO_CONFIGS, ids=lambda p: p.name)
def test_repo_config_validates(source: Path, pki: Pki, tmp_path: Path) -> None:
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    target = tmp_path / source.name
    target.write_text(yaml.safe_dump(_with_pki(config, pki)), encoding="utf-8")
    _assert_valid(target)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("collector", [None, "127.0.0.1:4317"])
def test_fresh_render_validates(
    profile: str, collector: str | None, pki: Pki, tmp_path: Path
) -> None:
    params = PROFILES[profile](pki_dir=str(pki.root))
    params = dataclasses.replace(params, otlp_collector=collector)
    target = tmp_path / "envoy.yaml"
    target.write_text(render(params), encoding="utf-8")
    _assert_valid(target)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_global_stage0_render_validates(profile: str, pki: Pki, tmp_path: Path) -> None:
    params = dataclasses.replace(PROFILES[profile](pki_dir=str(pki.root)), stage0="global")
    target = tmp_path / "envoy.yaml"
    target.write_text(render(params), encoding="utf-8")
    _assert_valid(target)


def test_validate_rejects_a_broken_config(pki: Pki, tmp_path: Path) -> None:
    """The check has teeth: an unknown field and a missing file both fail, with the reason."""
    params = PROFILES["local"](pki_dir=str(pki.root))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(render(params).replace("merge_slashes:", "merge_slashes_typo:"))
    result = validate(unknown)
    assert result.returncode != 0
    assert "merge_slashes_typo" in result.stdout + result.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(render(dataclasses.replace(params, sidecar_ca="/nonexistent/ca.pem")))
    result = validate(missing)
    assert result.returncode != 0
    assert "/nonexistent/ca.pem" in result.stdout + result.stderr
