"""The operator actions a chair offers, as one table: each row is a route
(``POST /api/chairs/{chair}/actions/{name}``), a button on the browser's card (the page builds its
buttons from ``GET /api/actions``) and the session-engine command it becomes. Adding an action the
engine has learnt is one row here: the route, the button, the reason prompt, the audit record (the
engine writes it, with the operator's name and the source) and the event that says whether it was carried
out all follow from it.

A row's ``command`` names a method of :class:`ketapump.clinical.Session` that takes
``(reason, *, source, operator, **params)``; ``params`` are the extra values the action takes (a slowed
rate, a medication), validated by type before the command is sent. The engine, not this table, decides
whether an action is possible now: the console never greys out STOP, and a refused action comes back as
an ``action`` event with the engine's reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ketapump.clinical import Session, Source, session


@dataclass(frozen=True)
class ActionParam:
    """An extra value an action takes: its name, its type, how the form labels it, its unit."""

    name: str
    kind: Literal["number", "text"]
    label: str
    unit: str = ""


@dataclass(frozen=True)
class ActionSpec:
    """One operator action (see the module docstring)."""

    name: str
    command: str
    label: str
    #: ``required``: the request is refused without a non-blank reason; ``optional``: a reason is asked.
    reason: Literal["required", "optional"]
    prompt: str
    style: Literal["normal", "danger"] = "normal"
    #: Shown when the chair's pump is in one of these states (empty: always, e.g. STOP).
    shown_when: frozenset[str] = frozenset()
    params: tuple[ActionParam, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "reason": self.reason,
            "prompt": self.prompt,
            "style": self.style,
            "shown_when": sorted(self.shown_when),
            "params": [p.__dict__ for p in self.params],
        }

    def check(self, reason: str, params: Mapping[str, Any]) -> list[str]:
        """Every problem of a request for this action (empty: it can be sent)."""
        problems = []
        if self.reason == "required" and not reason.strip():
            problems.append(f"reason: {self.name} needs a reason")
        known = {p.name: p for p in self.params}
        for name in params.keys() - known.keys():
            problems.append(f"params.{name}: {self.name} takes no such value")
        for name, spec in known.items():
            value = params.get(name)
            if value is None:
                problems.append(f"params.{name}: {self.name} needs it")
            elif spec.kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(f"params.{name}: must be a number")
            elif spec.kind == "text" and not (isinstance(value, str) and value.strip()):
                problems.append(f"params.{name}: must be text")
        return problems

    def send(
        self, target: Session, reason: str, params: Mapping[str, Any], *, source: Source, operator: str
    ) -> None:
        """Queues the command on ``target`` (carried out at its next control tick)."""
        getattr(target, self.command)(reason, source=source, operator=operator, **params)


#: Every action, in the order the card shows its buttons (STOP last, on its own).
ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec(
        "pause",
        "pause",
        "Pause",
        "required",
        "Why pause the infusion?",
        shown_when=frozenset({"running", "armed"}),
    ),
    ActionSpec(
        "resume",
        "resume",
        "Resume",
        "optional",
        "Resume the infusion: anything to note?",
        shown_when=frozenset({"paused"}),
    ),
    ActionSpec(
        "acknowledge",
        "acknowledge",
        "Acknowledge alarms",
        "optional",
        "What was found?",
    ),
    ActionSpec("stop", "stop", "STOP", "required", "Why stop?", style="danger"),
)


def available_actions() -> dict[str, ActionSpec]:
    """The actions whose command the session engine has (a row for a command still to come stays
    hidden until the engine takes it)."""
    return {a.name: a for a in ACTIONS if a.command in session.ACTIONS and hasattr(Session, a.command)}


__all__ = ["ACTIONS", "ActionParam", "ActionSpec", "available_actions"]
