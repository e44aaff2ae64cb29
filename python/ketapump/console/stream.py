"""One event-stream client (a browser tab, ``ketapump console``, an API consumer): what it has not been
sent yet, as Server-Sent Events.

The engine must never wait for a client, and a client must never lose what matters, so
:meth:`Subscription.offer` (called on the session's event loop, for every event of every chair the client
follows) only files the event and returns:

- a ``tick`` replaces the chair's previous unsent tick: each client gets a chair's newest telemetry at
  most every ``tick_interval_s`` (5 Hz by default, ≥ 2 Hz as the console promises), however fast the
  engine ticks and however slowly the client reads;
- every other event (phase, finding, question, answer, action, alarm, record, end) is queued in
  order (a vitals reading is not sent on its own: every tick carries the newest readings). A client
  so far behind that ``max_pending`` of them wait is closed (its browser reconnects and starts again
  from fresh cards) rather than buffered without bound.

A ``tick`` carries ``emitted_at``, the wall-clock time (s) the engine emitted it, so a client on the
same machine can measure the telemetry's latency. After a batch of events a client also gets the
chair's card (``chair``: :meth:`ChairView.snapshot`), so a view can draw from the cards alone. A
disconnected client's subscription is dropped by the server (:meth:`Subscription.close`); the chair's
session never notices.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from ketapump.clinical import SessionEvent, Tick, VitalsRead

#: Seconds between two ticks of one chair sent to one client (5 Hz).
TICK_INTERVAL_S = 0.2
#: Non-tick events a client may have waiting before it is closed.
MAX_PENDING = 5_000
#: A comment line this often keeps proxies from closing an idle stream (and finds dead clients).
KEEPALIVE_S = 15.0


def sse(kind: str, data: Mapping[str, Any]) -> str:
    """One Server-Sent Event: its type and its JSON (non-finite numbers as ``null``)."""
    return f"event: {kind}\ndata: {json.dumps(jsonable(data), separators=(',', ':'))}\n\n"


def jsonable(value: Any) -> Any:
    """``value`` with non-finite numbers as ``None`` (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class Subscription:
    """See the module docstring. ``snapshot(chair)`` gives a chair's card when it is due."""

    def __init__(
        self,
        snapshot: Callable[[str], Mapping[str, Any]],
        *,
        tick_interval_s: float = TICK_INTERVAL_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._snapshot = snapshot
        self._interval = tick_interval_s
        self._max_pending = max_pending
        self._events: deque[tuple[str, SessionEvent]] = deque()
        #: Each chair's newest unsent tick, and when the engine emitted it (wall clock, s).
        self._ticks: dict[str, tuple[Tick, float]] = {}
        self._touched: set[str] = set()
        self._sent_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self.closed = False
        #: Why the server closed this client, if it did.
        self.reason = ""

    def offer(self, chair: str, event: SessionEvent) -> None:
        """Files one event of ``chair`` (never blocks, never raises for the caller's sake)."""
        if self.closed:
            return
        if isinstance(event, VitalsRead):
            return  # every tick carries the newest readings
        if isinstance(event, Tick):
            self._ticks[chair] = (event, time.time())
        elif len(self._events) >= self._max_pending:
            self.close("the client fell too far behind")
            return
        else:
            self._events.append((chair, event))
        self._wake.set()

    def touch(self, chair: str) -> None:
        """The chair's card changed without an event (a session was begun, its report written)."""
        self._touched.add(chair)
        self._wake.set()

    def close(self, reason: str = "") -> None:
        self.closed = True
        self.reason = reason
        self._wake.set()

    async def messages(self, first: list[str]) -> AsyncIterator[str]:
        """The stream's text: ``first`` (the cards at connection), then batches as events come."""
        loop = asyncio.get_running_loop()
        yield "".join(sse("chair", self._snapshot(chair)) for chair in first)
        while not self.closed:
            batch, wait_s = self._batch(loop.time())
            if batch:
                yield batch
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(
                    self._wake.wait(), timeout=wait_s if wait_s is not None else KEEPALIVE_S
                )
            except TimeoutError:
                if wait_s is None:
                    yield ": keepalive\n\n"
        if self.reason:
            yield sse("closed", {"reason": self.reason})

    def _batch(self, now: float) -> tuple[str, float | None]:
        """What is due now, and how long until the next tick falls due (``None``: none waits)."""
        parts: list[str] = []
        touched, self._touched = self._touched, set()
        while self._events:
            chair, event = self._events.popleft()
            parts.append(sse(event.kind, {"chair": chair, **event.as_dict()}))
            touched.add(chair)
        wait_s: float | None = None
        for chair, (tick, emitted_at) in list(self._ticks.items()):
            due = self._sent_at.get(chair, -math.inf) + self._interval
            if now >= due:
                parts.append(sse("tick", {"chair": chair, "emitted_at": emitted_at, **tick.as_dict()}))
                del self._ticks[chair]
                self._sent_at[chair] = now
                touched.add(chair)
            else:
                wait_s = due - now if wait_s is None else min(wait_s, due - now)
        parts += [sse("chair", self._snapshot(chair)) for chair in sorted(touched)]
        return "".join(parts), wait_s


__all__ = ["KEEPALIVE_S", "TICK_INTERVAL_S", "Subscription", "jsonable", "sse"]
