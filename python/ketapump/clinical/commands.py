"""The operator's commands to a running session, checked when they are issued.

Every face (the CLI's keys and signals, the console, the public API, a script) issues the same
commands through :meth:`ketapump.clinical.session.Session.command`; each names who issued it
(``operator``), the channel it came through (``source``) and why (``reason``). What a command needs is
checked here, at once, so a face gets a ``ValueError`` it can show; whether the session can carry it out
(a pause outside the infusion, a resume into an active vitals alarm) is decided at the next control tick
and reported in its :class:`~ketapump.clinical.events.ActionTaken` event.

=====================  ===============================================  ====================
action                 arguments                                        reason
=====================  ===============================================  ====================
``pause``              —                                                required
``resume``             —                                                optional
``slow``               ``to_fraction`` (0 < f < 1) or ``to_rate_ml_h``  required
``restore_rate``       —                                                optional
``stop``               —                                                required
``end_observation``    —                                                required (else refused)
``acknowledge``        ``alarm`` (a code; ``None``: every alarm)        optional
``record_observation`` ``kind``, ``value``, ``note`` (data/bedside.toml)  —
``give_medication``    ``drug``, ``dose``, ``unit``, ``route``          optional
=====================  ===============================================  ====================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ketapump.clinical.bedside import check_medication, check_observation
from ketapump.clinical.events import Source

Action = Literal[
    "pause",
    "resume",
    "slow",
    "restore_rate",
    "stop",
    "end_observation",
    "acknowledge",
    "record_observation",
    "give_medication",
]
#: The operator commands the session takes (:meth:`~ketapump.clinical.session.Session.command`).
ACTIONS: Final[tuple[Action, ...]] = get_args(Action)
#: Commands that act on the pump: carried out during the infusion only.
PUMP_ACTIONS: Final = frozenset({"pause", "resume", "slow", "restore_rate"})
#: Commands that need a reason.
REASON_REQUIRED: Final = frozenset({"pause", "slow", "stop"})
#: Each command's arguments: required ones, then optional ones.
_ARGS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "pause": (frozenset(), frozenset()),
    "resume": (frozenset(), frozenset()),
    "slow": (frozenset(), frozenset({"to_fraction", "to_rate_ml_h"})),
    "restore_rate": (frozenset(), frozenset()),
    "stop": (frozenset(), frozenset()),
    "end_observation": (frozenset(), frozenset()),
    "acknowledge": (frozenset(), frozenset({"alarm"})),
    "record_observation": (frozenset({"kind"}), frozenset({"value", "note"})),
    "give_medication": (frozenset({"drug", "dose", "unit", "route"}), frozenset()),
}
#: The longest operator name accepted.
OPERATOR_NAME_MAX = 80


def check_operator_name(name: str) -> str:
    """The operator's name as recorded (surrounding blanks removed); ``ValueError`` for a name that is
    blank, too long or holds control characters."""
    if not isinstance(name, str):
        raise ValueError(f"an operator's name is text, not {type(name).__name__}")
    stripped = name.strip()
    if not stripped:
        raise ValueError("an operator's name must not be blank")
    if len(stripped) > OPERATOR_NAME_MAX:
        raise ValueError(f"an operator's name has at most {OPERATOR_NAME_MAX} characters")
    if any(not ch.isprintable() for ch in stripped):
        raise ValueError("an operator's name must not hold control characters")
    return stripped


@dataclass(frozen=True)
class OperatorCommand:
    """A checked command (see the module docstring), queued for the session's next tick."""

    action: Action
    reason: str
    source: Source
    operator: str | None
    args: Mapping[str, Any] = field(default_factory=dict)


def make_command(
    action: str, reason: str = "", *, source: Source, operator: str | None, **args: Any
) -> OperatorCommand:
    """Checks a command and returns it; ``ValueError`` names what is wrong (an unknown action or
    argument, a missing reason, an argument out of range)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown session command {action!r} (one of {', '.join(ACTIONS)})")
    if not isinstance(reason, str):
        raise ValueError(f"a reason is text, not {type(reason).__name__}")
    if action in REASON_REQUIRED and not reason.strip():
        raise ValueError(f"{action} needs a reason")
    if operator is not None:
        operator = check_operator_name(operator)
    required, optional = _ARGS[action]
    given = {k for k, v in args.items() if v is not None}
    unknown = set(args) - required - optional
    if unknown:
        raise ValueError(f"{action} takes no {', '.join(sorted(unknown))}")
    missing = required - given
    if missing:
        raise ValueError(f"{action} needs {', '.join(sorted(missing))}")
    if action == "slow":
        _check_slow(args.get("to_fraction"), args.get("to_rate_ml_h"))
    elif action == "acknowledge" and args.get("alarm") is not None:
        if not isinstance(args["alarm"], str) or not args["alarm"].strip():
            raise ValueError("acknowledge names an alarm by its code")
    elif action == "record_observation":
        check_observation(args["kind"], args.get("value"), args.get("note") or "")
    elif action == "give_medication":
        check_medication(args["drug"], args["dose"], args["unit"], args["route"])
    kept = {k: v for k, v in args.items() if v is not None}
    return OperatorCommand(action, reason.strip(), source, operator, kept)


def _check_slow(to_fraction: Any, to_rate_ml_h: Any) -> None:
    if (to_fraction is None) == (to_rate_ml_h is None):
        raise ValueError("slow takes exactly one of to_fraction and to_rate_ml_h")
    value = to_fraction if to_fraction is not None else to_rate_ml_h
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"slow takes a finite number, not {value!r}")
    if to_fraction is not None and not 0.0 < to_fraction < 1.0:
        raise ValueError(f"to_fraction must be between 0 and 1 (slower than the plan), not {to_fraction!r}")
    if to_rate_ml_h is not None and not to_rate_ml_h > 0.0:
        raise ValueError(f"to_rate_ml_h must be above 0, not {to_rate_ml_h!r}")


class NurseAction(BaseModel):
    """One scripted action of the nurse at the chair (a patient script's ``[[nurse]]`` entry): a
    command issued once the infusion has run ``at_s`` seconds, checked as :func:`make_command` checks
    it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0, allow_inf_nan=False)
    action: Action
    reason: str = ""
    to_fraction: float | None = None
    to_rate_ml_h: float | None = None
    alarm: str | None = None
    kind: str | None = None
    value: float | None = None
    note: str | None = None
    drug: str | None = None
    dose: float | None = None
    unit: str | None = None
    route: str | None = None

    def args(self) -> dict[str, Any]:
        """The command's arguments (those given)."""
        return self.model_dump(exclude={"at_s", "action", "reason"}, exclude_none=True)

    @model_validator(mode="after")
    def _a_valid_command(self) -> NurseAction:
        make_command(self.action, self.reason, source="script", operator=None, **self.args())
        return self


__all__ = [
    "ACTIONS",
    "OPERATOR_NAME_MAX",
    "PUMP_ACTIONS",
    "REASON_REQUIRED",
    "Action",
    "NurseAction",
    "OperatorCommand",
    "check_operator_name",
    "make_command",
]
