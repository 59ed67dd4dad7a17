"""The process's event loop per stack, and the bridge from worker threads onto it."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import uvloop

from sidecar_runtime.loops import LoopBridge, LoopUnavailableError, loop_factory, run

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


async def _loop_kind() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_uvloop_stack_runs_on_uvloop_s_loop_and_the_others_on_asyncio_s() -> None:
    assert issubclass(run(_loop_kind(), stack="uvloop"), uvloop.Loop)
    for stack in ("aio", "sync"):
        kind = run(_loop_kind(), stack=stack)  # type: ignore[arg-type]
        assert not issubclass(kind, uvloop.Loop)
    assert loop_factory("aio") is asyncio.new_event_loop


async def _where(value: int) -> tuple[int, str, str]:
    await asyncio.sleep(0)
    return value * 2, threading.current_thread().name, CALLER.get()


@pytest.mark.asyncio(loop_factories=["asyncio", "uvloop"])
async def test_a_thread_runs_a_coroutine_on_the_loop_with_its_context() -> None:
    bridge = LoopBridge(asyncio.get_running_loop())

    def worker() -> tuple[int, str, str]:
        CALLER.set("worker-call")
        return bridge.submit(_where(21)).result(timeout=5)

    value, thread, caller = await asyncio.to_thread(worker)
    assert value == 42
    assert thread == threading.current_thread().name  # the loop's thread
    assert caller == "worker-call"  # the handler's context variables came along


def test_no_loop_or_a_closed_one_is_refused_at_once() -> None:
    with pytest.raises(LoopUnavailableError):
        LoopBridge().submit(_where(1))
    loop = asyncio.new_event_loop()
    loop.close()
    bridge = LoopBridge()
    bridge.bind(loop)
    with pytest.raises(LoopUnavailableError):
        bridge.submit(_where(1))
