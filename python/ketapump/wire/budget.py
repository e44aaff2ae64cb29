"""A token bucket for log events a peer can cause at will: a link or a client flooding garbage gets a
burst of events and then a steady trickle, never a full disk, and the events left out are counted."""

from __future__ import annotations

import time
from collections.abc import Callable


class LogBudget:
    """At most ``burst`` events at once, then ``per_s`` a second; :attr:`suppressed` counts the rest
    until :meth:`take_suppressed` hands the count to the next event that is logged."""

    def __init__(self, burst: int, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.per_s = per_s
        self._clock = clock
        self._tokens = self.burst
        self._refilled = clock()
        self.suppressed = 0

    def allow(self) -> bool:
        """Whether one more event may be logged now; if not, it is counted as suppressed."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.per_s)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def admit(self, left_out_text: str) -> str | None:
        """None when the event is not to be logged (it is counted as left out); else what to append
        to it: nothing, or how many were left out before it (`` (N <left_out_text>)``)."""
        if not self.allow():
            return None
        left_out = self.take_suppressed()
        return f" ({left_out} {left_out_text})" if left_out else ""

    def left_out(self, count: int) -> None:
        """Counts events left out before they could ask (a codec that kept only its first rejects)."""
        self.suppressed += count

    def take_suppressed(self) -> int:
        """The events left out since the last call (for the event being logged to report)."""
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed
