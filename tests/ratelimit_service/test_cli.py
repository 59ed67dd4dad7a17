"""`ratelimit-service check-config | explain` in-process, and the console script itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.pki import Pki
from ratelimit_service.cli import main

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "ratelimit"


def test_check_config_accepts_good_rules(
    fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(fixtures / "good"), str(DEMO / "rules")]) == 0
    out = capsys.readouterr().out
    for domain in ("reference", "extended", "nothing", "edge"):
        assert f"ok: domain {domain!r}" in out


def test_check_config_names_file_key_and_reason(
    fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = fixtures / "bad" / "bad_unit.yaml"
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: descriptors[0].rate_limit.unit: invalid rate limit unit")


def test_check_config_validates_the_demo_settings_file(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo settings point at the dev PKI in .dev/pki at the repository root.
    shutil.copytree(DEMO, tmp_path / "config" / "ratelimit")
    shutil.copytree(pki.root, tmp_path / ".dev" / "pki")
    settings = tmp_path / "config" / "ratelimit" / "service.yaml"
    assert main(["check-config", str(settings)]) == 0
    out = capsys.readouterr().out
    assert "ok: settings" in out
    assert "store redis" in out
    assert "ok: domain 'edge'" in out


def test_check_config_refuses_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "service.yaml"
    settings.write_text("rules: rules.yaml\nstore: {type: redis}\n")
    assert main(["check-config", str(settings)]) == 2
    assert (
        "store: type redis needs exactly one of url, sentinel, cluster" in capsys.readouterr().err
    )


def test_explain_shows_matches_limits_and_buckets(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "explain",
            "--config",
            str(DEMO / "rules"),
            "--domain",
            "edge",
            "--descriptor",
            "remote_address=192.0.2.1",
            "--descriptor",
            "subject=alice,role=admin",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "descriptor 1: remote_address=192.0.2.1 (cost 1)" in out
    assert "matches remote_address (remote_address by key)" in out
    assert "per-client-address: 20 per second, burst 40 (one token every 0.05s), enforced" in out
    assert "bucket rl:4:edge14:remote_address9:192.0.2.1" in out
    assert "descriptor 2: subject=alice, role=admin" in out
    assert "no rule matches: not limited" in out


def test_explain_unknown_domain(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["explain", "--config", str(DEMO / "rules"), "--domain", "nope", "--descriptor", "a=b"]
    assert main(args) == 0
    assert "not configured" in capsys.readouterr().out


def test_explain_shadow_unlimited_replaced(
    fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = str(fixtures / "good" / "reference_forms.yaml")
    main(
        [
            "explain",
            "--config",
            rules,
            "--domain",
            "reference",
            "--descriptor",
            "client=c,method=DELETE",
        ]
    )
    assert "shadow mode (logged, not enforced)" in capsys.readouterr().out
    main(["explain", "--config", rules, "--domain", "reference", "--descriptor", "internal=x"])
    assert "unlimited" in capsys.readouterr().out
    main(
        [
            "explain",
            "--config",
            rules,
            "--domain",
            "reference",
            "--descriptor",
            "plan=gold",
            "--descriptor",
            "plan=silver",
        ]
    )
    assert "replaced (not applied): default-plan" in capsys.readouterr().out


def test_console_script_and_module_entry_points(fixtures: Path) -> None:
    script = Path(sys.executable).with_name("ratelimit-service")
    for cmd in ([str(script)], [sys.executable, "-m", "ratelimit_service"]):
        done = subprocess.run(
            [*cmd, "check-config", str(fixtures / "good" / "extensions.yaml")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "ok: domain 'extended'" in done.stdout


MERGE = REPO / "tests" / "ratelimit_service" / "fixtures" / "reference_dialect" / "merge"


def test_check_config_merges_domains_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(MERGE)]) == 2
    assert "duplicate domain 'merged'" in capsys.readouterr().err
    assert main(["check-config", "--merge-domains", str(MERGE)]) == 0
    assert "ok: domain 'merged' from " in capsys.readouterr().out


def test_a_settings_files_merge_domains_is_honoured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "service.yaml"
    settings.write_text(f"rules: {MERGE}\nstore: {{type: memory}}\nmerge_domains: true\n")
    assert main(["check-config", str(settings)]) == 0
    assert "ok: domain 'merged'" in capsys.readouterr().out
    args = ["explain", "--config", str(settings), "--domain", "merged", "--descriptor", "w=abc"]
    assert main(args) == 0
    assert "stats merged.w_a*" in capsys.readouterr().out


def test_explain_shows_quota_mode_and_the_stats_key(
    fixtures: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = str(fixtures / "reference_dialect" / "storefront.yaml")
    base = ["explain", "--config", rules, "--domain", "storefront"]
    assert main([*base, "--descriptor", "quota=images"]) == 0
    out = capsys.readouterr().out
    assert "quota mode (denies only when every quota descriptor of the request is over)" in out
    assert "stats storefront.quota_images" in out
    assert main([*base, "--descriptor", "client_ip=192.0.2.10"]) == 0
    assert "stats storefront.client_ip_192_0_2_10" in capsys.readouterr().out
