"""`make bench` / `python -m bench [--smoke]`: the benchmark harness (issue 16).

Sections, in one run (every ratio is taken within it):
  edge      the whole edge side by side in alternating rounds: Envoy alone, Envoy's
            built-ins, the product's default profile on each sidecar stack, and its
            `stage0: global` profile; then each at half of its saturation rate
            (bench.edge_section)
  exact     global limits with two rate-limit replicas and one key (bench.exact)
  sidecars  each sidecar alone per stack, in alternating rounds (bench.sidecars)
  body      µs per body validation for each candidate validator, and a route with a body
            schema against one without through the edge, in alternating rounds
            (bench.body_section)
  credentials
            the same route with a cached JWT and with an API key through the edge, in
            alternating rounds (bench.credentials_section)
  footprint Redis commands and bytes per bucket, each sidecar's peak RSS (bench.footprint)

Bounded: a time budget (default 585 s) is checked before every step; a step that would
overrun it is skipped or shortened, and the notes say so. Loopback only; fixed durations
and counts. Every process the harness starts is stopped when it ends, on an exception,
on Ctrl-C and on SIGTERM.

A full run writes bench/results/latest.json and the tables in docs/benchmarks.md.
`--smoke` runs every path of the full run with tiny counts and writes only into its work
directory; so does `--sections` (a development loop: only the sections named).
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
    body_section,
    credentials_section,
    edge_section,
    exact,
    footprint,
    machine,
    report,
    sidecars,
    targets,
)
from bench.context import SMOKE, Ctx, Timing, stage
from bench.procs import REPO, Procs, wait_quiet
from devstack.idp_keys import ensure_idp_keys

RESULTS = REPO / "bench" / "results" / "latest.json"
DOC = REPO / "docs" / "benchmarks.md"
DEFAULT_BUDGET_S = 585.0
SECTIONS = ("edge", "exact", "sidecars", "body", "credentials", "footprint")


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every `finally` runs."""


def _on_term(_sig: int, _frame: FrameType | None) -> None:
    raise Interrupted


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts; proves the harness")
    parser.add_argument("--work", type=Path, help="work directory (logs, configs, h2load logs)")
    parser.add_argument("--results", type=Path, help=f"JSON (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--doc", type=Path, help=f"Markdown (default {DOC.relative_to(REPO)})")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument(
        "--sections",
        metavar="NAME,...",
        help=f"development loop: only these of {','.join(SECTIONS)}; writes only into the"
        " work directory",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: judge a stored result again and rewrite the Markdown from it",
    )
    return parser


def render(source: Path, doc: Path) -> int:
    """Targets, commands and Markdown again from a stored result (no measurement)."""
    result = json.loads(source.read_text())
    if result.get("schema") == report.SCHEMA:
        result["targets"] = targets.evaluate(result)
        result["commands"] = report.collect_commands(result)
        report.write_json(source, result)
    report.write_markdown(doc, result)
    print(f"[bench] rendered {doc} from {source}", file=sys.stderr)
    return 0


def _chosen(spec: str | None) -> tuple[str, ...]:
    if spec is None:
        return SECTIONS
    chosen = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {', '.join(sorted(unknown))}")
    return chosen


def measure(ctx: Ctx, chosen: tuple[str, ...], sections: dict[str, Any]) -> None:
    """The sections in order; the footprint last (its 100,000-subject drives stop at the
    time budget, see bench.footprint)."""
    with stage(ctx, "setup: Redis, tokens, request bodies"):
        ctx.start_redis()
        material = sidecars.prepare(ctx) if "sidecars" in chosen else None
    if "edge" in chosen:
        sections["edge"] = edge_section.run_section(ctx)
    if "exact" in chosen:
        sections["exact"] = exact.run_section(ctx)
    if material is not None:
        sections["sidecars"] = sidecars.run_section(ctx, material)
    if "body" in chosen:
        sections["body"] = body_section.run_section(ctx)
    if "credentials" in chosen:
        sections["credentials"] = credentials_section.run_section(ctx)
    if "footprint" in chosen:
        sections["redis"], sections["memory"] = footprint.run_sections(ctx)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render is not None:
        return render(args.render, args.doc or DOC)
    chosen = _chosen(args.sections)
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = (args.work or REPO / ".dev" / "bench" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    scratch = args.smoke or args.sections is not None
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
        "schema": report.SCHEMA,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke" if args.smoke else ("sections" if scratch else "full"),
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
        deadline=started + args.budget,
    )
    status = 0
    try:
        waited, foreign = (0.0, 0.0)
        if not args.smoke and not args.no_wait:
            waited, foreign = wait_quiet(max_wait=30, log=ctx.log)
        result["quiet"] = {"waited_s": round(waited, 1), "foreign_cores": round(foreign, 2)}
        measure(ctx, chosen, result["sections"])
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
        result["targets"] = targets.evaluate(result)
        result["commands"] = report.collect_commands(result)
        report.write_json(results, result)
        report.write_markdown(doc, result)
        ctx.log(f"[bench] wrote {results} and {doc} in {result['duration_s']:.0f} s")
        for target in result["targets"]:
            said = report.verdict(target, holds="holds", fails="DOES NOT HOLD")
            ctx.log(f"[bench] {target['target']}: {target['measured']} -> {said}")
    return status


if __name__ == "__main__":
    sys.exit(main())
