"""kernel.coalesce: callers share one read that started after they called."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from kernel.coalesce import CoalescedRead


def test_many_callers_cost_at_most_two_reads_at_a_time() -> None:
    running = 0
    peak = 0
    lock = threading.Lock()

    def read() -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return 1

    reads = CoalescedRead(read)

    async def main() -> list[int]:
        return await asyncio.gather(*(reads.get() for _ in range(500)))
    assert asyncio.run(main()) == [1] * 500
    assert peak == 1 and reads.reads <= 2


def test_every_answer_holds_what_was_committed_before_the_call() -> None:
    """A caller arriving while a read runs waits for the next read, never the running one."""
    committed = 0
    seen_at_start: list[int] = []

    def read() -> int:
        value = committed
        seen_at_start.append(value)
        time.sleep(0.05)
        return value

    reads = CoalescedRead(read)

    async def main() -> tuple[int, int]:
        nonlocal committed
        first = asyncio.create_task(reads.get())
        await asyncio.sleep(0.01)          # the first read is running now
        committed = 1                       # a commit after it started
        second = await reads.get()
        return await first, second
    assert asyncio.run(main()) == (0, 1)
    assert seen_at_start == [0, 1]


def test_a_failed_read_fails_its_callers_and_the_next_read_is_fresh() -> None:
    calls = 0

    def read() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database down")
        return calls

    reads = CoalescedRead(read)

    async def main() -> int:
        with pytest.raises(OSError):
            await reads.get()
        return await reads.get()
    assert asyncio.run(main()) == 2
