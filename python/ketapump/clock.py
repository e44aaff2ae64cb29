"""Injected time. The kernel, the simulator and the control loop read time only through a clock, so
any scenario runs faster than real time and reproducibly.

- :class:`ScaledClock`: real monotonic time × ``time_scale`` (1.0 for real hardware).
- :class:`VirtualClock`: time that only moves when the loop sleeps; an in-process run with the
  simulated pump then goes as fast as the CPU allows.

``sleep_until`` takes an absolute deadline: a periodic loop scheduled by deadlines does not drift,
and the kernel is always handed the measured time, never the assumed one.

asyncio's own sleeps wake up to about a millisecond late (the event loop's poll timeout is rounded up
to whole milliseconds), which is noise at a 100 ms control period and a whole period at 1 kHz. So a
:class:`ScaledClock` wait of at most :data:`PRECISE_WAIT_S` of real time is timed by one shared
thread (:class:`DeadlineWaker`) that sleeps until the absolute deadline and then wakes the event loop
through its self-pipe; longer waits stay plain asyncio sleeps.

A loop also stands still while the garbage collector walks the heap: :func:`settled_heap` keeps the
objects a process starts with out of those walks while a real-time loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Protocol

#: Real-time waits up to this long (a control period of 10 ms or less) are timed by the waker thread.
PRECISE_WAIT_S = 0.010


class _OpenBlocks:
    """How many :func:`settled_heap` blocks are open (the heap stays frozen while any is), and whether
    the process had frozen objects of its own before the first opened."""

    def __init__(self) -> None:
        self.count = 0
        self.host_froze = False
        # Reentrant: the collection runs finalizers, which may close a block of this same thread.
        self.lock = threading.RLock()


_SETTLED = _OpenBlocks()


@contextlib.contextmanager
def settled_heap() -> Iterator[None]:
    """Runs the block with the objects that exist when the outermost block opens left out of the cyclic
    garbage collector's walks.

    A full collection walks every tracked object, and the event loop stands still meanwhile: with the
    bridge and pymodbus imported that is ~75 000 objects and ~20 ms on the project's machine, two whole
    periods at 100 Hz (``docs/benchmarks.md``: 64 pumps × 100 Hz went from 94 % of cycles on time to
    1 498–1 500 of 1 500). What exists before a real-time loop starts (modules, classes, settings)
    lives as long as the loop, so it is collected once here and frozen (``gc.freeze``); what the loop
    makes is still collected. On leaving the outermost block the frozen objects are handed back
    (``gc.unfreeze``), so a process that goes on (the test suite, a notebook) leaks nothing — unless
    it had frozen objects of its own before (say, before forking workers): those are not thawed, and
    what the block froze stays frozen with them. Blocks may nest and overlap across threads; an inner
    one freezes nothing more.
    """
    with _SETTLED.lock:
        if _SETTLED.count == 0:
            _SETTLED.host_froze = gc.get_freeze_count() > 0
            gc.collect()
            gc.freeze()
        _SETTLED.count += 1
    try:
        yield
    finally:
        with _SETTLED.lock:
            _SETTLED.count -= 1
            if _SETTLED.count == 0 and not _SETTLED.host_froze:
                gc.unfreeze()


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock started."""
        ...

    async def sleep_until(self, t_s: float) -> None:
        """Returns at or after time ``t_s`` (immediately if it has passed)."""
        ...


class DeadlineWaker:
    """One daemon thread that resolves asyncio futures at absolute ``time.monotonic()`` deadlines.

    The thread waits on a condition with a timeout (a monotonic-clock wait in CPython), which wakes
    within tens of microseconds where an event loop's poll rounds up to the next millisecond. A due
    future is completed on its own loop with ``call_soon_threadsafe``, which writes to the loop's
    self-pipe and so ends its poll at once. A cancelled waiter is simply skipped when due; a waiter
    whose loop has closed is dropped. The thread starts with the first waiter.
    """

    def __init__(self) -> None:
        self._due: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties in deadline wake in arrival order
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    async def sleep_until(self, deadline: float) -> None:
        """Returns at or after ``time.monotonic()`` = ``deadline``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._changed:
            heapq.heappush(self._due, (deadline, next(self._order), loop, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ketapump-deadlines", daemon=True)
                self._thread.start()
            self._changed.notify()
        await future

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due:
                    self._changed.wait()
                deadline, _, loop, future = self._due[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)  # a new, earlier deadline also ends the wait
                    continue
                heapq.heappop(self._due)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled sleeper is gone
        future.set_result(None)


#: The process's waker, shared by every clock.
DEADLINES = DeadlineWaker()


async def sleep_until_monotonic(deadline: float) -> None:
    """Returns at or after ``time.monotonic()`` = ``deadline``: through :data:`DEADLINES` when the wait
    is at most :data:`PRECISE_WAIT_S`, else an asyncio sleep."""
    delay = deadline - time.monotonic()
    if delay > PRECISE_WAIT_S:
        await asyncio.sleep(delay)
    elif delay > 0:
        await DEADLINES.sleep_until(deadline)


class ScaledClock:
    """Real monotonic time multiplied by ``time_scale``. Waits of at most :data:`PRECISE_WAIT_S` real
    seconds are timed by :data:`DEADLINES`; longer ones are asyncio sleeps."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, not {time_scale}")
        self.time_scale = time_scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    async def sleep_until(self, t_s: float) -> None:
        await sleep_until_monotonic(self._t0 + t_s / self.time_scale)


class VirtualClock:
    """Time that advances only when someone sleeps: as fast as the work between sleeps allows.

    Made for one sleeper, the control loop: a second task sleeping on it concurrently would move time
    to its own deadline at once, whatever the loop's next tick. Something that must happen at a pump
    time during a run is driven from the loop's tick (``on_tick``), as the occlusion test's line is.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._t = start_s

    def now(self) -> float:
        return self._t

    async def sleep_until(self, t_s: float) -> None:
        self._t = max(self._t, t_s)
        await asyncio.sleep(0)
