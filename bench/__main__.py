"""`make bench` / `python -m bench [--smoke]`: the benchmark harness (issue 6).

Sections, in one run (ratios are taken within it):
  1. sidecar ceilings next to a floor server      (bench.sidecars)
     the targets' ratios in alternating rounds     (bench.rounds)
     and telemetry off/on in alternating rounds    (bench.telemetry_cost)
  2. the whole edge through Envoy, three ways     (bench.edge)
  3. Redis commands and memory per bucket          (bench.footprint)
  4. each sidecar's peak RSS                       (bench.footprint)
  and profiles of the sidecars under load          (bench.profiling, bench.hotpath)

Bounded: a time budget (default 585 s) is checked before every step; a step that would
overrun it is skipped and said so. Loopback only; fixed durations and counts. Every
process the harness starts is stopped by its pid when it ends, on an exception, on Ctrl-C
and on SIGTERM.

A full run writes bench/results/latest.json and the tables in docs/benchmarks.md.
`--smoke` runs every code path with tiny counts and writes only into its work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    edge,
    footprint,
    hotpath,
    machine,
    profiling,
    report,
    rounds,
    sidecars,
    telemetry_cost,
)
from bench.context import SMOKE, Ctx, Timing, stage
from bench.procs import REPO, Procs, wait_quiet
from devstack.idp_keys import ensure_idp_keys

RESULTS = REPO / "bench" / "results" / "latest.json"
DOC = REPO / "docs" / "benchmarks.md"
DEFAULT_BUDGET_S = 585.0


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every `finally` runs."""


def _on_term(_sig: int, _frame: FrameType | None) -> None:
    raise Interrupted


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny counts; proves the harness works"
    )
    parser.add_argument("--work", type=Path, help="work directory (logs, configs, raw h2load logs)")
    parser.add_argument(
        "--results", type=Path, help=f"JSON result (default: {RESULTS.relative_to(REPO)})"
    )
    parser.add_argument(
        "--doc", type=Path, help=f"Markdown file (default: {DOC.relative_to(REPO)})"
    )
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument(
        "--rows",
        metavar="W:ROW,...",
        help="development loop: section 1 only, these rows (e.g. 1:floor,1:check-pool-rs256);"
        " writes only into the work directory",
    )
    parser.add_argument(
        "--telemetry-cost",
        action="store_true",
        help="development loop: the telemetry cost rounds (with --rows: after those rows);"
        " writes only into the work directory",
    )
    parser.add_argument(
        "--rounds",
        action="store_true",
        help="development loop: the targets' ratios in alternating rounds (after --rows);"
        " writes only into the work directory",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: re-evaluate the targets of a stored result and rewrite the"
        " Markdown (and the JSON's targets) from it",
    )
    return parser


def render(source: Path, doc: Path) -> int:
    """Targets, commands and Markdown again from a stored result (no measurement)."""
    result = json.loads(source.read_text())
    result["targets"] = report.evaluate_targets(result)
    result["commands"] = report.collect_commands(result)
    report.write_json(source, result)
    report.write_markdown(doc, result)
    print(f"[bench] rendered {doc} from {source}", file=sys.stderr)
    return 0


def _row_plan(spec: str) -> dict[int, list[str]]:
    plan: dict[int, list[str]] = {}
    for item in spec.split(","):
        workers, _, name = item.strip().rpartition(":")
        plan.setdefault(int(workers or 1), []).append(name)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render is not None:
        return render(args.render, args.doc or DOC)
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = (args.work or REPO / ".dev" / "bench" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    scratch = args.smoke or args.rows is not None or args.telemetry_cost or args.rounds
    results = args.results or (work / "latest.json" if scratch else RESULTS)
    doc = args.doc or (work / "benchmarks.md" if scratch else DOC)
    # The sidecars' telemetry stays at its default (off): an OTEL_* variable in the caller's
    # environment must not change what is measured.
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]
    previous = signal.signal(signal.SIGTERM, _on_term)
    procs = Procs(work / "logs")
    timing = SMOKE if args.smoke else Timing()
    result: dict[str, Any] = {
        "schema": 1,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke" if args.smoke else ("rows" if scratch else "full"),
        **machine.describe(),
        "timing": {k: getattr(timing, k) for k in timing.__dataclass_fields__},
        "harness_command": shlex.join([sys.executable, "-m", "bench", *(argv or sys.argv[1:])]),
        "work_dir": str(work),
        "sections": {},
    }
    ctx = Ctx(
        work=work,
        procs=procs,
        keys=ensure_idp_keys(work / "idp"),
        timing=timing,
        smoke=args.smoke,
        deadline=started + args.budget,
    )
    status = 0
    try:
        waited, foreign = (0.0, 0.0)
        if not args.smoke and not args.no_wait:
            waited, foreign = wait_quiet(max_wait=30, log=ctx.log)
        result["quiet"] = {"waited_s": round(waited, 1), "foreign_cores": round(foreign, 2)}
        with stage(ctx, "setup: Redis, tokens, request bodies"):
            ctx.start_redis()
            material = sidecars.prepare(ctx)
        sections = result["sections"]
        plan = sidecars.SMOKE_PLAN if args.smoke else sidecars.FULL_PLAN
        cost_groups = telemetry_cost.SMOKE_GROUPS if args.smoke else telemetry_cost.FULL_GROUPS
        target_groups = rounds.SMOKE_TARGET_GROUPS if args.smoke else rounds.TARGET_GROUPS
        if args.rows is not None or args.telemetry_cost or args.rounds:
            if args.rows:
                sections["sidecars"] = sidecars.run_section(ctx, material, _row_plan(args.rows))
            if args.rounds:
                sections["rounds"] = rounds.run_section(ctx, material, target_groups)
            if args.telemetry_cost:
                sections["telemetry_cost"] = rounds.run_section(ctx, material, cost_groups)
            return status
        sections["sidecars"] = sidecars.run_section(
            ctx, material, plan, saturation_elsewhere=rounds.judged_rows(target_groups)
        )
        sections["rounds"] = rounds.run_section(ctx, material, target_groups)
        rounds.fill_saturation(sections["sidecars"], sections["rounds"])
        sections["telemetry_cost"] = rounds.run_section(ctx, material, cost_groups)
        sections["edge"] = edge.run_section(ctx)
        sections["profiles"] = profiling.run_section(ctx, material)
        sections["hotpath"] = hotpath.run_section(ctx, material)
        # Last: their 100,000-subject drives stop at the time budget (see bench.footprint).
        sections["redis"], sections["memory"] = footprint.run_sections(ctx, material)
    except (KeyboardInterrupt, Interrupted):
        ctx.notes.append("interrupted: results are partial")
        status = 130
    except Exception as exc:
        ctx.notes.append(f"harness error: {type(exc).__name__}: {exc}")
        status = 1
        raise
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        result["notes"] = ctx.notes
        result["duration_s"] = round(time.monotonic() - started, 1)
        result.setdefault("quiet", {"waited_s": 0.0, "foreign_cores": 0.0})
        result["targets"] = report.evaluate_targets(result)
        result["commands"] = report.collect_commands(result)
        report.write_json(results, result)
        report.write_markdown(doc, result)
        ctx.log(f"[bench] wrote {results} and {doc} in {result['duration_s']:.0f} s")
        for target in result["targets"]:
            mark = {True: "holds", False: "DOES NOT HOLD", None: "not decided by this run"}[
                target["holds"]
            ]
            if target["measured"] is None:
                mark = "not measured"
            ctx.log(f"[bench] {target['target']}: {target['measured']} -> {mark}")
    return status


if __name__ == "__main__":
    sys.exit(main())
