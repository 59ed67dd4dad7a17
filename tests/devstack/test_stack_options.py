"""The stack's profile choice: `python -m devstack run --stage0 global` down to Envoy's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devstack.__main__ import _parser, _stage0_note
from devstack.pki import Pki
from devstack.stack import Stack, StackOptions, env_options


def test_run_defaults_to_the_local_stage0() -> None:
    args = _parser().parse_args(["run"])
    assert args.stage0 == "local"
    assert env_options().stage0 == "local"
    assert StackOptions().stage0 == "local"


def test_run_takes_the_global_stage0() -> None:
    args = _parser().parse_args(["run", "--stage0", "global"])
    assert args.stage0 == "global"
    assert env_options(stage0="global").stage0 == "global"


def test_run_refuses_an_unknown_stage0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--stage0", "remote"])
    assert "--stage0" in capsys.readouterr().err


def _envoy_filters(tmp_path: Path, pki: Pki, stage0: str) -> list[str]:
    stack = Stack(env_options(dev_dir=tmp_path, stage0=stage0))  # type: ignore[arg-type]
    stack.pki = pki
    stack.config_dir.mkdir(parents=True)
    stack._envoy_command()
    config = yaml.safe_load((stack.config_dir / "envoy.yaml").read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return [f["name"] for f in hcm["typed_config"]["http_filters"]]


@pytest.mark.parametrize(
    ("stage0", "calls_before_authz"),
    [
        ("local", ["envoy.filters.http.local_ratelimit.stage0"]),
        ("global", ["envoy.filters.http.ratelimit.stage0"]),
    ],
)
def test_the_stack_renders_envoy_for_its_stage0(
    tmp_path: Path, pki: Pki, stage0: str, calls_before_authz: list[str]
) -> None:
    names = _envoy_filters(tmp_path, pki, stage0)
    before = names[: names.index("envoy.filters.http.ext_authz")]
    after = names[names.index("envoy.filters.http.ext_authz") :]
    assert [n for n in before if "ratelimit" in n] == calls_before_authz
    assert [n for n in after if "ratelimit" in n] == ["envoy.filters.http.ratelimit.stage1"]


def test_the_banner_says_how_many_calls() -> None:
    assert "2 sidecar calls" in _stage0_note("local")
    assert "3 calls" in _stage0_note("global")
