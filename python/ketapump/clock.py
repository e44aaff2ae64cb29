"""Injected time. The kernel, the simulator and the control loop read time only through a clock, so
any scenario runs faster than real time and reproducibly.

- :class:`ScaledClock`: real monotonic time × ``time_scale`` (1.0 for real hardware).
- :class:`VirtualClock`: time that only moves when the loop sleeps; an in-process run with the
  simulated pump then goes as fast as the CPU allows.

``sleep_until`` takes an absolute deadline: a periodic loop scheduled by deadlines does not drift,
and the kernel is always handed the measured time, never the assumed one (asyncio sleeps are
quantised to about a millisecond).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the clock started."""
        ...

    async def sleep_until(self, t_s: float) -> None:
        """Returns at or after time ``t_s`` (immediately if it has passed)."""
        ...


class ScaledClock:
    """Real monotonic time multiplied by ``time_scale``."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, not {time_scale}")
        self.time_scale = time_scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.time_scale

    async def sleep_until(self, t_s: float) -> None:
        delay = (t_s - self.now()) / self.time_scale
        if delay > 0:
            await asyncio.sleep(delay)


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
