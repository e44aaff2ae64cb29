"""Mirror of ``trace.rs``: the trace ring of state transitions."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ketapump.reference.f64 import TRACE_CAPACITY


@dataclass(frozen=True)
class TraceEvent:
    """One recorded state-machine event."""

    seq: int
    t_s: float
    from_state: str
    to_state: str
    #: ``Cause::as_str``: an operator command, ``take_up_done``, ``dose_complete`` or an alarm name.
    cause: str
    delivered_ml: float


class TraceRing:
    """Fixed-size ring: when full, the oldest event is overwritten and counted in ``dropped``."""

    def __init__(self) -> None:
        self.events: deque[TraceEvent] = deque()
        self.next_seq = 0
        self.dropped = 0

    def push(self, t_s: float, from_state: str, to_state: str, cause: str, delivered_ml: float) -> None:
        event = TraceEvent(self.next_seq, t_s, from_state, to_state, cause, delivered_ml)
        self.next_seq += 1
        if len(self.events) == TRACE_CAPACITY:
            self.events.popleft()
            self.dropped += 1
        self.events.append(event)

    def pop(self) -> TraceEvent | None:
        return self.events.popleft() if self.events else None
