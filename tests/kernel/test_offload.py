"""kernel.offload: a request's blocking work runs off the event loop, in the caller's context,
its exception reaches the route, and a cancelled wait never cuts the work short."""

from __future__ import annotations

import asyncio
import threading
from contextvars import ContextVar

import pytest

from kernel.offload import EXECUTOR, MAX_THREADS, in_thread
from kernel.requestid import REQUEST_ID

LABEL: ContextVar[str] = ContextVar("label", default="unset")


def test_the_work_runs_in_another_thread_than_the_event_loop() -> None:
    async def main() -> tuple[int, int]:
        return threading.get_ident(), await in_thread(threading.get_ident)

    loop_thread, work_thread = asyncio.run(main())
    assert work_thread != loop_thread


def test_the_work_sees_the_callers_context_variables_and_cannot_change_them() -> None:
    def read_and_set() -> tuple[str, str | None]:
        seen = (LABEL.get(), REQUEST_ID.get())
        LABEL.set("changed in the thread")
        return seen

    async def main() -> tuple[tuple[str, str | None], str]:
        LABEL.set("route")
        REQUEST_ID.set("rid-1")
        seen = await in_thread(read_and_set)
        return seen, LABEL.get()

    seen, after = asyncio.run(main())
    assert seen == ("route", "rid-1")  # the request id of log lines written in the thread
    assert after == "route"             # a copy: the thread's changes stay there


def test_arguments_pass_and_the_exception_reaches_the_caller_unchanged() -> None:
    class Refused(Exception):
        pass

    def refuse(check: str, *, status: int) -> None:
        raise Refused(check, status)

    async def main() -> None:
        assert await in_thread(divmod, 7, 2) == (3, 1)
        await in_thread(refuse, "nonce.replayed", status=403)

    with pytest.raises(Refused) as info:
        asyncio.run(main())
    assert info.value.args == ("nonce.replayed", 403)


def test_stop_iteration_reaches_the_caller_as_a_runtime_error_instead_of_hanging() -> None:
    """An asyncio future cannot carry StopIteration: passed on as it is, the route would
    wait forever and its client would get no answer."""
    async def main() -> None:
        await asyncio.wait_for(in_thread(next, iter(())), timeout=5)

    with pytest.raises(RuntimeError, match="StopIteration") as info:
        asyncio.run(main())
    assert isinstance(info.value.__cause__, StopIteration)


def test_a_cancelled_wait_lets_the_started_work_finish() -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        release.wait(5)
        finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(in_thread(work))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not finished.is_set()
        release.set()

    asyncio.run(main())
    assert finished.wait(5)  # committed or rolled back whole, never cut in the middle


def test_a_queued_call_whose_wait_is_cancelled_never_runs() -> None:
    """A call still waiting for a free thread is dropped when its task is cancelled (one that
    has started runs to its end)."""
    release = threading.Event()
    ran: list[str] = []

    async def main() -> None:
        busy = [asyncio.ensure_future(in_thread(release.wait, 5)) for _ in range(MAX_THREADS)]
        queued = asyncio.ensure_future(in_thread(ran.append, "queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        assert await asyncio.gather(*busy) == [True] * MAX_THREADS
        await in_thread(ran.append, "after")

    asyncio.run(main())
    assert ran == ["after"]


def test_the_pool_has_anyios_default_size() -> None:
    assert MAX_THREADS == 40
    assert EXECUTOR._max_workers == MAX_THREADS
