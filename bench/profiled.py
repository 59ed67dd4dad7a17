"""Run a module under cProfile, profiling only between SIGUSR1 and SIGUSR2.

    python -m bench.profiled --out FILE.prof -m authz_service serve --config F

SIGUSR1 starts profiling the main thread (where the grpc.aio event loop runs), SIGUSR2
stops and writes FILE.prof (pstats format), so start-up and shut-down are not in the
profile. The sidecars handle only SIGTERM/SIGINT/SIGHUP themselves; the two user signals
are free. cProfile adds a cost to every Python call, so the profiled process is slower
than the measured one: the profile shows where the time goes, the load runs how much.
"""

from __future__ import annotations

import argparse
import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiled")
    parser.add_argument("--out", required=True)
    parser.add_argument("-m", dest="module", required=True)
    args, rest = parser.parse_known_args()
    profiler = cProfile.Profile()
    state = {"on": False}

    def start(_sig: int, _frame: FrameType | None) -> None:
        if not state["on"]:
            state["on"] = True
            profiler.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        if state["on"]:
            profiler.disable()
            state["on"] = False
            profiler.dump_stats(args.out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [args.module, *rest]
    try:
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    finally:
        stop(signal.SIGUSR2, None)


if __name__ == "__main__":
    main()
