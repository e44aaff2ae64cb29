"""What a running session tells its faces: typed events, and the stream that carries them.

The session engine (:class:`ketapump.clinical.session.Session`) emits one of these for everything a
face shows or records: the phase, each control tick's telemetry, every finding, question, answer,
operator action, change of who holds the pump, alarm and course-history record, the baseline vitals
with the limits they set, and the end. The
CLI turns them into a live chair card and a summary; the console streams them to browsers; the public
API hands them to callbacks. None of them is the audit log: that keeps its own records (stable event
names, hash-chained), written by the engine beside these events.

Each event carries ``session_id``, ``t_s`` (seconds on the session's clock since the session began) and
``kind`` (a stable name); :meth:`SessionEvent.as_dict` is its JSON form.

Delivery (:class:`EventStream`): subscribers are called synchronously, in order, on the engine's event
loop, so a command a subscriber issues from a ``Tick`` is handled at that same tick. A subscriber that
raises is reported on the diagnostics stream and unsubscribed, never allowed to disturb the infusion.
:meth:`EventStream.queue` gives an asyncio consumer (a browser's event stream) a bounded queue that drops
its oldest ticks, never the other events, when the consumer falls behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

_log = logging.getLogger("ketapump.session")

#: The channel an action came through: a face's (``keys``: the terminal's keys during a CLI session), or
#: ``engine`` for the session's own (the vitals gate, the protocol).
Source = Literal["cli", "signal", "keys", "script", "api", "web", "engine"]


@dataclass(frozen=True, kw_only=True)
class SessionEvent:
    """Base of every event: which session, when on its clock."""

    kind: ClassVar[str] = "event"
    session_id: str
    t_s: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: every field (non-finite floats as ``None``) and ``kind``."""
        return {"kind": self.kind, **{k: _jsonable(v) for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Self:
        """The event ``cls(**fields)`` builds. Given every field, it is built in one step. Why: a frozen
        dataclass's ``__init__`` sets each field through ``object.__setattr__``, which for a
        :class:`Tick` (twenty fields, ten a second all session long) costs more than the rest of its
        event's work. Other ``fields`` (some left to their defaults, a name the event lacks) go to
        ``__init__``, which fills the defaults or raises its usual error."""
        if fields.keys() != _field_names(cls):
            return cls(**fields)
        event = object.__new__(cls)
        event.__dict__.update(fields)
        return event


@dataclass(frozen=True, kw_only=True)
class PhaseChanged(SessionEvent):
    kind: ClassVar[str] = "phase"
    phase: str
    previous: str | None


@dataclass(frozen=True, kw_only=True)
class Tick(SessionEvent):
    """The session's state once per control tick during the infusion, once a second otherwise."""

    kind: ClassVar[str] = "tick"
    phase: str
    #: The kernel's state during the infusion (``running``, ``paused``, ``alarm``…); ``None`` outside it.
    pump_state: str | None
    delivered_ml: float
    planned_ml: float
    delivered_mg: float
    #: What the plan would have delivered by now (the plan line of the dose plot).
    programmed_mg: float
    commanded_rate_ml_h: float
    #: The rate the pump's volume counter shows over the last 30 s (NaN until it spans some time).
    measured_rate_ml_h: float = math.nan
    pressure_mmhg: float
    occlusion_threshold_mmhg: float
    alarms: tuple[str, ...]
    #: Who holds the pump paused, in order (``operator``, ``vitals``, ``limit``: the maximum duration);
    #: empty while nothing does. The pump follows within one control tick.
    paused_by: tuple[str, ...]
    #: Seconds since the current phase began.
    phase_elapsed_s: float
    vitals: Mapping[str, float] = field(default_factory=dict)
    #: The plan's rate at this point of its schedule, and the rate the session has programmed (lower
    #: while the operator has slowed the infusion); NaN outside the infusion.
    planned_rate_ml_h: float = math.nan
    programmed_rate_ml_h: float = math.nan
    #: While the vitals hold the pump: how long every condition has been clear (``None``: not clear).
    vitals_clear_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class VitalsRead(SessionEvent):
    kind: ClassVar[str] = "vitals"
    channel: str
    value: float
    #: When the monitor took the reading (session clock).
    reading_t_s: float


@dataclass(frozen=True, kw_only=True)
class BaselineRecorded(SessionEvent):
    """The patient's baseline vitals were recorded (the pre-check), and with them the limits in force
    for the rest of the session: each watched channel's absolute limits, its maximum lowered to the
    baseline plus the rules' allowed rise where one is set (``rise_max_pct``) and lower, and the band
    (baseline ± ``band_pct`` %) every channel must be back within before the observation can end."""

    kind: ClassVar[str] = "baseline"
    #: Channel → baseline value (each watched channel).
    baseline: Mapping[str, float]
    #: Channel → the (low, high) alarm limits in force (``None``: no limit of that kind).
    limits: Mapping[str, tuple[float | None, float | None]]
    #: Channel → the allowed rise over baseline (%), for the channels where the rules set one.
    rise_max_pct: Mapping[str, float]
    #: The observation's band: ± this % of baseline.
    band_pct: float


@dataclass(frozen=True, kw_only=True)
class FindingReported(SessionEvent):
    """A drug-library or course-rule finding about the order (hard: refused; soft: needs a reason)."""

    kind: ClassVar[str] = "finding"
    finding: str  # the limit kind, also the KIND of ``--confirm KIND=REASON``
    severity: str
    message: str


@dataclass(frozen=True, kw_only=True)
class QuestionAsked(SessionEvent):
    """The session waits for an answer (:meth:`Session.answer`) unless its operator has a standing one.

    ``question`` is ``checklist`` (answer ``True``/``False``), ``soft_limit`` or ``baseline_vitals``
    (answer a reason, or ``None`` to decline)."""

    kind: ClassVar[str] = "question"
    question_id: str
    question: str
    subject: str
    text: str


@dataclass(frozen=True, kw_only=True)
class QuestionAnswered(SessionEvent):
    kind: ClassVar[str] = "answer"
    question_id: str
    question: str
    subject: str
    answer: bool | str | None
    source: Source
    operator: str | None = None


@dataclass(frozen=True, kw_only=True)
class ActionTaken(SessionEvent):
    """An operator's command, and whether the session carried it out (``accepted``) or why not;
    ``detail`` holds its arguments and what it did (a new rate and when the infusion now ends, the
    holders left, …)."""

    kind: ClassVar[str] = "action"
    action: str
    reason: str
    source: Source
    operator: str | None
    accepted: bool
    why: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class HoldChanged(SessionEvent):
    """Who holds the pump paused changed: ``actor`` (``operator``, ``vitals``, ``protocol``) added
    ``added`` or released ``released``, leaving ``holders``; ``operator`` names the person when the
    actor is one."""

    kind: ClassVar[str] = "hold"
    holders: tuple[str, ...]
    added: str | None
    released: tuple[str, ...]
    actor: str
    operator: str | None
    reason: str


@dataclass(frozen=True, kw_only=True)
class AlarmRaised(SessionEvent):
    kind: ClassVar[str] = "alarm"
    #: ``kernel``, ``pump``, ``vitals``, ``checklist`` or ``observation``.
    source: str
    code: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class RecordWritten(SessionEvent):
    """A course-history record was committed (``patient``, ``session_begun``, ``override``, ``alarm``,
    ``action``, ``observation``, ``medication``, ``session_ended``)."""

    kind: ClassVar[str] = "record"
    record: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SessionEnded(SessionEvent):
    kind: ClassVar[str] = "ended"
    #: ``complete``, ``ended_<reason>``, ``refused`` (a limit), ``aborted`` (the pre-check) or ``failed``.
    outcome: str
    delivered_mg: float
    programmed_mg: float
    detail: str = ""


_FIELD_NAMES: dict[type[SessionEvent], frozenset[str]] = {}


def _field_names(cls: type[SessionEvent]) -> frozenset[str]:
    """The names of ``cls``'s fields."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


Subscriber = Callable[[SessionEvent], None]


class EventStream:
    """Fans a session's events out to its subscribers (see the module docstring)."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Calls ``subscriber`` with every later event; returns the function that unsubscribes it."""
        self._subscribers.append(subscriber)
        return lambda: self._unsubscribe(subscriber)

    @property
    def subscribed(self) -> bool:
        """Whether anyone listens: an event nobody reads (a control tick's, ten a second) need not be
        built."""
        return bool(self._subscribers)

    def _unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    def emit(self, event: SessionEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                # A face that fails must not disturb the infusion: it is dropped and reported.
                _log.exception("session event subscriber failed and was unsubscribed: %r", subscriber)
                self._unsubscribe(subscriber)

    def queue(self, maxsize: int = 1_000) -> tuple[asyncio.Queue[SessionEvent], Callable[[], None]]:
        """A bounded queue of later events for an asyncio consumer, and its unsubscribe function. When
        full, the oldest :class:`Tick` waiting is dropped to make room (a newer one follows); other
        events are never dropped, so a slow consumer sees every phase, alarm, action and record."""
        q: asyncio.Queue[SessionEvent] = asyncio.Queue()

        def put(event: SessionEvent) -> None:
            if q.qsize() >= maxsize:
                _drop_oldest_tick(q)
                if q.qsize() >= maxsize and isinstance(event, Tick):
                    return
            q.put_nowait(event)

        return q, self.subscribe(put)


def _drop_oldest_tick(q: asyncio.Queue[SessionEvent]) -> None:
    items: list[SessionEvent] = []
    while not q.empty():
        items.append(q.get_nowait())
    dropped = False
    for item in items:
        if not dropped and isinstance(item, Tick):
            dropped = True
            continue
        q.put_nowait(item)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


__all__ = [
    "ActionTaken",
    "AlarmRaised",
    "BaselineRecorded",
    "EventStream",
    "FindingReported",
    "HoldChanged",
    "PhaseChanged",
    "QuestionAnswered",
    "QuestionAsked",
    "RecordWritten",
    "SessionEnded",
    "SessionEvent",
    "Source",
    "Subscriber",
    "Tick",
    "VitalsRead",
]
