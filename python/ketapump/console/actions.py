"""The operator actions a chair offers, as one table over the session engine's commands: each row is a
route (``POST /api/chairs/{chair}/actions/{name}``), a button on the browser's card (the page builds its
buttons and their forms from ``GET /api/actions``) and the engine command it becomes.

A row names an engine command (:meth:`ketapump.clinical.Session.command`: ``(action, reason, *, source,
operator, **args)``) and says how a face asks for it: its label, its reason prompt, when its button is
shown, and the values it takes (``params``: typed, required or optional, a choice from a vocabulary).
The console sends every action through that one method, so adding an action the engine has learnt is
one row here: the route, the button and its form, the audit record (the engine writes it, with the
operator's name and the source) and the event that says whether it was carried out all follow. A row
whose command the engine does not have stays hidden (:func:`available_actions`).

The console checks only what a form needs (a reason where one is required, the values' names and types);
the engine checks the rest when the command is issued (a ``ValueError``: the request is refused with its
message) and decides at its next tick whether the action is possible now (the ``action`` event, with the
engine's reason). The console never greys out STOP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ketapump.clinical import Session, Source, bedside, session


@dataclass(frozen=True)
class ActionParam:
    """A value an action takes: its name (the engine command's argument), its type, how the form labels
    it, its unit, whether it must be given and, for a choice, where its options come from."""

    name: str
    kind: Literal["number", "text", "choice"]
    label: str
    unit: str = ""
    required: bool = True
    #: For a ``choice``: the name of a vocabulary (:data:`VOCABULARIES`).
    vocabulary: str = ""

    def choices(self) -> list[dict[str, str]]:
        """The options of a choice: ``{"value", "label"}`` each (none: not a choice)."""
        source = VOCABULARIES.get(self.vocabulary)
        return source() if source is not None else []

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "label": self.label,
            "unit": self.unit,
            "required": self.required,
            "vocabulary": self.vocabulary,
            "choices": self.choices(),
        }


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
    #: Shown when the chair's pump is in one of these states, the session in one of these phases, or
    #: ``slowed`` while the operator has slowed the infusion (empty: whenever a session runs, e.g. STOP).
    shown_when: frozenset[str] = frozenset()
    params: tuple[ActionParam, ...] = field(default_factory=tuple)
    #: What the reason is pre-filled with (STOP: so Enter sends it at once).
    default_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "label": self.label,
            "reason": self.reason,
            "prompt": self.prompt,
            "default_reason": self.default_reason,
            "style": self.style,
            "shown_when": sorted(self.shown_when),
            "params": [p.as_dict() for p in self.params],
        }

    def check(self, reason: str, params: Mapping[str, Any]) -> list[str]:
        """Every problem of a request for this action a form can see (empty: it can be sent)."""
        problems = []
        if self.reason == "required" and not reason.strip():
            problems.append(f"reason: {self.name} needs a reason")
        known = {p.name: p for p in self.params}
        for name in sorted(params.keys() - known.keys()):
            problems.append(f"params.{name}: {self.name} takes no such value")
        for name, spec in known.items():
            value = params.get(name)
            if value is None:
                if spec.required:
                    problems.append(f"params.{name}: {self.name} needs it")
            elif spec.kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
                problems.append(f"params.{name}: must be a number")
            elif spec.kind != "number" and not (isinstance(value, str) and value.strip()):
                problems.append(f"params.{name}: must be text")
        return problems

    def send(
        self, target: Session, reason: str, params: Mapping[str, Any], *, source: Source, operator: str
    ) -> None:
        """Issues the command on ``target`` (carried out at its next control tick); ``ValueError`` if the
        engine finds the command wrong in itself."""
        given = {name: value for name, value in params.items() if value is not None}
        target.command(self.command, reason, source=source, operator=operator, **given)


def _observation_kinds() -> list[dict[str, str]]:
    kinds = bedside.bedside().kinds
    return [
        {"value": name, "label": f"{name.replace('_', ' ')} — {kind.scale or 'a note says what was seen'}"}
        for name, kind in kinds.items()
    ]


def _dose_units() -> list[dict[str, str]]:
    return [{"value": unit, "label": unit} for unit in bedside.bedside().medication.units]


def _routes() -> list[dict[str, str]]:
    return [{"value": route, "label": route} for route in bedside.bedside().medication.routes]


#: Where a choice's options come from: the engine's bedside vocabulary (clinician-owned data), or, for
#: ``chair_alarms``, the alarms raised on the chair (the page fills them from its card).
VOCABULARIES: dict[str, Callable[[], list[dict[str, str]]]] = {
    "observation_kinds": _observation_kinds,
    "dose_units": _dose_units,
    "routes": _routes,
    "chair_alarms": list,
}

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
        "slow",
        "slow",
        "Slow",
        "required",
        "Why slow the infusion?",
        shown_when=frozenset({"running", "paused"}),
        params=(
            ActionParam(
                "to_fraction", "number", "To this fraction of the plan's rate", "0–1", required=False
            ),
            ActionParam("to_rate_ml_h", "number", "Or at most this rate", "mL/h", required=False),
        ),
    ),
    ActionSpec(
        "restore",
        "restore_rate",
        "Restore rate",
        "optional",
        "Back to the plan's rate: anything to note?",
        shown_when=frozenset({"slowed"}),
    ),
    ActionSpec(
        "acknowledge",
        "acknowledge",
        "Acknowledge alarms",
        "optional",
        "What was found?",
        params=(
            ActionParam(
                "alarm",
                "choice",
                "Which alarm (none chosen: every one)",
                required=False,
                vocabulary="chair_alarms",
            ),
        ),
    ),
    ActionSpec(
        "observation",
        "record_observation",
        "Observation",
        "optional",
        "Anything to add?",
        params=(
            ActionParam("kind", "choice", "What was observed", vocabulary="observation_kinds"),
            ActionParam("value", "number", "On its scale", required=False),
            ActionParam("note", "text", "Note", required=False),
        ),
    ),
    ActionSpec(
        "medication",
        "give_medication",
        "Medication",
        "optional",
        "Why was it given?",
        params=(
            ActionParam("drug", "text", "Drug"),
            ActionParam("dose", "number", "Dose"),
            ActionParam("unit", "choice", "Unit", vocabulary="dose_units"),
            ActionParam("route", "choice", "Route", vocabulary="routes"),
        ),
    ),
    ActionSpec(
        "end_observation",
        "end_observation",
        "End observation",
        "required",
        "Why end the observation early? (recorded, and an alarm for the clinician)",
        shown_when=frozenset({"observation"}),
    ),
    ActionSpec(
        "stop",
        "stop",
        "STOP",
        "required",
        "Why stop?",
        style="danger",
        default_reason="stopped by the operator",
    ),
)


def engine_commands() -> Sequence[str]:
    """The commands the session engine takes (:data:`ketapump.clinical.session.ACTIONS`)."""
    return tuple(session.ACTIONS)


def available_actions() -> dict[str, ActionSpec]:
    """The actions whose command the session engine has, by name (a row for a command still to come
    stays hidden until the engine takes it)."""
    commands = set(engine_commands())
    return {a.name: a for a in ACTIONS if a.command in commands}


__all__ = ["ACTIONS", "VOCABULARIES", "ActionParam", "ActionSpec", "available_actions", "engine_commands"]
