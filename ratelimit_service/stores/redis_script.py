"""gcra.lua as Redis commands: the script, its SHA, the EVALSHA arguments, the reply.

Shared by both Redis clients (the pipelined one for a standalone server, redis-py for
Sentinel and Cluster), so they send the same bytes and read the same answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ratelimit_service.errors import StoreError
from ratelimit_service.limits.bucket import Outcome
from ratelimit_service.store import BucketCall

SCRIPT = (
    resources.files("ratelimit_service.stores").joinpath("gcra.lua").read_text(encoding="utf-8")
)
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()


def evalsha_args(mode: str, calls: Sequence[BucketCall], *, keys_in_argv: bool) -> list[Any]:
    """The EVALSHA command for gcra.lua (see its header for the argument layout)."""
    keys = [call.key for call in calls]
    args: list[Any] = [mode, len(calls)]
    for call in calls:
        args += [call.spec.interval_us, call.spec.capacity, call.cost, 1 if call.enforce else 0]
    if keys_in_argv:
        return ["EVALSHA", SCRIPT_SHA, 0, *args, *keys]
    return ["EVALSHA", SCRIPT_SHA, len(keys), *keys, *args]


def parse_reply(reply: Sequence[int], count: int) -> tuple[bool, list[Outcome]]:
    """(committed, one Outcome per bucket) from the script's `take` answer."""
    if not isinstance(reply, list) or len(reply) != 1 + 3 * count:
        size = len(reply) if isinstance(reply, list) else type(reply).__name__
        raise StoreError(f"unexpected script reply ({size}) for {count} keys")
    outcomes = [
        Outcome(reply[i] == 1, int(reply[i + 1]), int(reply[i + 2]))
        for i in range(1, len(reply), 3)
    ]
    return reply[0] == 1, outcomes


def check_loaded_sha(sha: object) -> None:
    """SCRIPT LOAD must answer with the SHA the EVALSHA calls use."""
    text = sha.decode() if isinstance(sha, bytes) else str(sha)
    if text != SCRIPT_SHA:
        raise StoreError(f"server returned script SHA {text}, expected {SCRIPT_SHA}")
