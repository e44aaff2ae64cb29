"""The deadline waker behind ScaledClock's short waits: never early, in deadline order, cancellable,
shared by several event loops, and harmless when a loop closes with a sleeper still waiting. (How
late it wakes is measured in benches/test_precise_loop_bench.py, never asserted here.)"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ketapump.clock import DEADLINES, PRECISE_WAIT_S, DeadlineWaker, ScaledClock


def test_a_scaled_clock_never_wakes_before_its_deadline() -> None:
    async def run() -> list[tuple[float, float]]:
        clock = ScaledClock(1.0)
        seen = []
        deadline = clock.now()
        for _ in range(50):
            deadline += 0.001
            await clock.sleep_until(deadline)
            seen.append((deadline, clock.now()))
        # A wait longer than the waker's takes asyncio's path, and is not early either.
        deadline = clock.now() + 3 * PRECISE_WAIT_S
        await clock.sleep_until(deadline)
        seen.append((deadline, clock.now()))
        return seen

    for deadline, woke in asyncio.run(run()):
        assert woke >= deadline


def test_sleepers_wake_in_deadline_order_whatever_order_they_came_in() -> None:
    """The order holds among sleepers that all came before the earliest deadline (one that comes after
    its deadline has passed wakes at once, as it should). On a busy machine registering five sleepers can
    take longer than a few milliseconds, so a trial where they did not all come in time is run again
    with a wider margin, never judged."""
    waker = DeadlineWaker()
    offsets = [0.004, 0.001, 0.003, 0.0, 0.002]

    async def run(margin_s: float) -> tuple[list[int], bool]:
        woke: list[int] = []
        base = time.monotonic() + margin_s

        async def sleeper(i: int, offset_s: float) -> None:
            await waker.sleep_until(base + offset_s)
            assert time.monotonic() >= base + offset_s
            woke.append(i)

        sleepers = [asyncio.ensure_future(sleeper(i, off)) for i, off in enumerate(offsets)]
        await asyncio.sleep(0)  # every sleeper has run up to its wait: all registered
        in_time = time.monotonic() < base
        await asyncio.gather(*sleepers)
        return woke, in_time

    for margin_s in (0.005, 0.02, 0.08, 0.32, 1.28):
        woke, in_time = asyncio.run(run(margin_s))
        if in_time:
            assert woke == [3, 1, 4, 2, 0]
            return
    pytest.fail("five sleepers never registered within 1.28 s of starting")


def test_a_cancelled_sleeper_is_skipped_and_the_others_still_wake() -> None:
    waker = DeadlineWaker()

    async def run() -> bool:
        first = asyncio.ensure_future(waker.sleep_until(time.monotonic() + 0.002))
        second = asyncio.ensure_future(waker.sleep_until(time.monotonic() + 0.004))
        await asyncio.sleep(0)
        first.cancel()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first
        return second.done() and not second.cancelled()

    assert asyncio.run(run())


def test_several_event_loops_share_the_waker_and_a_closed_loop_harms_nothing() -> None:
    results: dict[str, float] = {}

    def in_thread(name: str, wait_s: float) -> None:
        async def run() -> None:
            deadline = time.monotonic() + wait_s
            await DEADLINES.sleep_until(deadline)
            results[name] = time.monotonic() - deadline

        asyncio.run(run())

    threads = [threading.Thread(target=in_thread, args=(f"loop{i}", 0.002 * (i + 1))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(results) == ["loop0", "loop1", "loop2", "loop3"]
    assert all(late >= 0 for late in results.values())

    # A loop that closes while its sleeper waits: the waker drops it and serves the next loop.
    orphan = asyncio.new_event_loop()
    task = orphan.create_task(DEADLINES.sleep_until(time.monotonic() + 0.003))
    orphan.run_until_complete(asyncio.sleep(0))
    task.cancel()
    orphan.run_until_complete(asyncio.sleep(0))
    orphan.close()
    in_thread("after", 0.005)
    assert results["after"] >= 0
