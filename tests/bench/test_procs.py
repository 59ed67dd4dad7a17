"""bench.procs' CPU and run-queue accounting, on this test's own processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import CpuMeter, RunQueueWait, _schedstat, threads


def _schedstat_line(pid: int, tid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()


def test_schedstat_sums_every_thread_of_a_process() -> None:
    # A child with two threads, both asleep once it says so: their counts stand still,
    # so the sum can be checked exactly against each thread's own line.
    code = (
        "import sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        tids = threads(proc.pid)
        for _ in range(100):  # until the main thread is asleep too: the same lines twice
            lines = [_schedstat_line(proc.pid, t) for t in tids]
            waited, slices = _schedstat(proc.pid)
            if lines == [_schedstat_line(proc.pid, t) for t in tids]:
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.communicate()
    assert len(tids) == 2
    assert slices > 0  # the child has run, so its threads have had timeslices
    assert waited >= 0
    assert slices == sum(int(line[2]) for line in lines)
    assert waited == sum(int(line[1]) for line in lines)
    assert all(int(line[2]) > 0 for line in lines)  # both threads are in the sum


def test_schedstat_of_a_process_that_is_gone_is_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert _schedstat(proc.pid) == (0, 0)


def test_the_meter_reports_cores_and_the_wait_of_each_named_tree() -> None:
    # Two spinners on one CPU: each must sit runnable while the other runs, so the
    # tree's wait cannot be zero, however busy the machine is.
    spin = "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        for proc in procs:
            os.sched_setaffinity(proc.pid, {min(os.sched_getaffinity(0))})
        meter = CpuMeter({"spinners": [p.pid for p in procs], "idle": [procs[0].pid + 10**7]})
        meter.start()
        time.sleep(0.3)
        window = meter.stop()
    finally:
        for proc in procs:
            proc.wait()
    assert window.cores["spinners"] > 0.1
    wait = window.waits["spinners"]
    assert wait.ms_per_s > 0
    assert wait.us_per_slice > 0
    assert window.waits["idle"] == RunQueueWait(0.0, 0.0)  # no such process: nothing
    assert "harness" not in window.waits  # the bench's own process is not judged
    assert window.as_dict()["run_queue_wait"] == {
        "spinners": wait.as_dict(),
        "idle": {"ms_per_s": 0.0, "us_per_slice": 0.0},
    }


def test_a_wait_rounds_for_the_json() -> None:
    assert RunQueueWait(12.3456, 1613.64).as_dict() == {"ms_per_s": 12.35, "us_per_slice": 1613.6}
