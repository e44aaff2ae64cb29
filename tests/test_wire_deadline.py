"""The transports' attempt deadline (``AttemptDeadline``): one timer re-used from attempt to attempt
instead of an ``asyncio.timeout`` per attempt, with asyncio.timeout's behaviour.

Each case would fail on a plausible mistake of a re-used timer: cancelling an attempt when the timer
armed for an earlier one fires, never firing for an attempt on a later event loop (the timer was left on
a closed one), timing only one of two overlapping attempts, or turning another party's cancellation into
a timeout. Margins are hundreds of milliseconds (a loaded machine wakes an asyncio loop within tens).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ketapump.errors import PumpTimeoutError
from ketapump.wire import CommandTransport
from ketapump.wire.transports.base import AttemptDeadline

NEVER_S = 30.0


async def _bounded(deadline: AttemptDeadline, timeout_s: float, work_s: float) -> str:
    with deadline.bound(timeout_s):
        await asyncio.sleep(work_s)
    return "done"


def test_an_attempt_past_its_deadline_raises_timeout_error_at_that_deadline() -> None:
    async def body() -> float:
        deadline = AttemptDeadline()
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await _bounded(deadline, 0.1, NEVER_S)
        return time.monotonic() - start

    assert 0.1 <= asyncio.run(body()) < 5.0


def test_the_timer_armed_for_an_earlier_attempt_does_not_cut_a_later_one_short() -> None:
    async def body() -> str:
        deadline = AttemptDeadline()
        assert await _bounded(deadline, 1.0, 0.0) == "done"  # the timer is armed for t0 + 1.0
        await asyncio.sleep(0.6)
        # Due at t0 + 1.6: the timer fires at t0 + 1.0, in the middle of this attempt, and must re-arm.
        return await _bounded(deadline, 1.0, 0.6)

    assert asyncio.run(body()) == "done"


def test_a_deadline_still_fires_on_a_later_event_loop() -> None:
    deadline = AttemptDeadline()
    assert asyncio.run(_bounded(deadline, 0.5, 0.0)) == "done"  # leaves a timer on a closed loop

    async def late() -> float:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await _bounded(deadline, 0.1, NEVER_S)
        return time.monotonic() - start

    assert asyncio.run(late()) < 5.0


def test_overlapping_attempts_are_each_bounded_by_their_own_deadline() -> None:
    async def body() -> list[object]:
        deadline = AttemptDeadline()
        stuck = asyncio.create_task(_bounded(deadline, 0.1, NEVER_S))
        await asyncio.sleep(0)  # the stuck attempt holds the shared timer
        quick = asyncio.create_task(_bounded(deadline, 2.0, 0.3))  # outlives the stuck one's deadline
        return await asyncio.gather(stuck, quick, return_exceptions=True)

    stuck, quick = asyncio.run(body())
    assert isinstance(stuck, TimeoutError) and quick == "done"


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def body() -> None:
        deadline = AttemptDeadline()
        task = asyncio.create_task(_bounded(deadline, NEVER_S, NEVER_S))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The deadline is free again and still times the next attempt.
        with pytest.raises(TimeoutError):
            await _bounded(deadline, 0.1, NEVER_S)

    asyncio.run(body())


def test_a_deadline_needs_a_task() -> None:
    with pytest.raises(RuntimeError):
        AttemptDeadline().bound(1.0)


class _SilentLink(CommandTransport):
    """A link that connects and then never answers (the pump is switched off)."""

    async def _connect(self) -> None:
        return None

    async def _close(self) -> None:
        return None

    async def _command(self, text: str) -> str:
        await asyncio.sleep(NEVER_S)
        return ""


def test_a_request_that_is_never_answered_ends_in_a_timeout_after_every_retry() -> None:
    async def body() -> tuple[float, PumpTimeoutError]:
        link = _SilentLink("silent://pump", timeout_s=0.1, retries=2)
        await link.connect()
        start = time.monotonic()
        with pytest.raises(PumpTimeoutError) as e:
            await link.command("RAT")
        return time.monotonic() - start, e.value

    elapsed, error = asyncio.run(body())
    assert 0.3 <= elapsed < 5.0
    assert "silent://pump" in str(error) and "no answer within 0.1 s after 3 attempts" in str(error)
