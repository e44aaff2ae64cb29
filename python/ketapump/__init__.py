"""ketapump: an infusion-pump control bridge with a Rust safety kernel.

Engineering software for pump integration, QA and research rigs. Not a certified medical device.

The public API (docs/api.md)::

    import ketapump

    with ketapump.open_pump("modbus-tcp://127.0.0.1:5020") as pump:   # or ketapump.simulate()
        print(pump.telemetry(), pump.infused_ml)
        result = ketapump.infuse(pump, rate_ml_h=60.0, volume_ml=1.0, log="run.jsonl")

- pumps: :func:`open_pump`, :func:`open_pump_async`, :func:`simulate`, :func:`simulate_async`
  (:class:`Pump`, :class:`AsyncPump`, :class:`PumpTelemetry`);
- kernel-guarded infusions: :func:`infuse`, :func:`infuse_async` (:class:`InfusionTick`,
  :class:`InfusionResult`);
- protocol sessions: :class:`Session` (:class:`Patient`, :class:`CallbackVitalsFeed`,
  :class:`ScriptedOperator`, the events :class:`SessionEvent`, :class:`Tick`, …);
- errors: :class:`KetapumpError` and its family.

The names load on first use (``import ketapump`` alone loads only the compiled core's version).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ketapump._core import __version__

if TYPE_CHECKING:
    from ketapump.api import (
        AsyncPump,
        InfusionResult,
        InfusionTick,
        Pump,
        PumpInfo,
        Session,
        infuse,
        infuse_async,
        init_course,
        open_pump,
        open_pump_async,
        simulate,
        simulate_async,
    )
    from ketapump.clinical import (
        ActionTaken,
        AlarmRaised,
        CallbackVitalsFeed,
        Patient,
        PhaseChanged,
        Question,
        QuestionAsked,
        ScriptedOperator,
        SessionEnded,
        SessionEvent,
        SessionOutcome,
        Sitter,
        Tick,
        VitalsSample,
    )
    from ketapump.errors import (
        AuditWriteError,
        ConfigurationError,
        ConfirmationRequired,
        InterlockError,
        KetapumpError,
        LimitRefused,
        PumpTimeoutError,
        TransportError,
    )
    from ketapump.wire import PumpRefusedError, PumpTelemetry

#: Where each public name lives (the door it is imported through).
_HOMES = {
    **dict.fromkeys(
        (
            "AsyncPump",
            "InfusionResult",
            "InfusionTick",
            "Pump",
            "PumpInfo",
            "Session",
            "infuse",
            "infuse_async",
            "init_course",
            "open_pump",
            "open_pump_async",
            "simulate",
            "simulate_async",
        ),
        "ketapump.api",
    ),
    **dict.fromkeys(
        (
            "ActionTaken",
            "AlarmRaised",
            "CallbackVitalsFeed",
            "Patient",
            "PhaseChanged",
            "Question",
            "QuestionAsked",
            "ScriptedOperator",
            "SessionEnded",
            "SessionEvent",
            "SessionOutcome",
            "Sitter",
            "Tick",
            "VitalsSample",
        ),
        "ketapump.clinical",
    ),
    **dict.fromkeys(
        (
            "AuditWriteError",
            "ConfigurationError",
            "ConfirmationRequired",
            "InterlockError",
            "KetapumpError",
            "LimitRefused",
            "PumpTimeoutError",
            "TransportError",
        ),
        "ketapump.errors",
    ),
    **dict.fromkeys(
        (
            "PumpRefusedError",
            "PumpTelemetry",
        ),
        "ketapump.wire",
    ),
}

__all__ = [
    "ActionTaken",
    "AlarmRaised",
    "AsyncPump",
    "AuditWriteError",
    "CallbackVitalsFeed",
    "ConfigurationError",
    "ConfirmationRequired",
    "InfusionResult",
    "InfusionTick",
    "InterlockError",
    "KetapumpError",
    "LimitRefused",
    "Patient",
    "PhaseChanged",
    "Pump",
    "PumpInfo",
    "PumpRefusedError",
    "PumpTelemetry",
    "PumpTimeoutError",
    "Question",
    "QuestionAsked",
    "ScriptedOperator",
    "Session",
    "SessionEnded",
    "SessionEvent",
    "SessionOutcome",
    "Sitter",
    "Tick",
    "TransportError",
    "VitalsSample",
    "__version__",
    "infuse",
    "infuse_async",
    "init_course",
    "open_pump",
    "open_pump_async",
    "simulate",
    "simulate_async",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ketapump' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
