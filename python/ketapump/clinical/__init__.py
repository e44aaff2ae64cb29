"""The clinical layer: a ketamine session from a reviewed plan to a signed record.

Owns the protocol files and dose arithmetic (:mod:`~ketapump.clinical.protocol`), the drug library and
its limit checks (:mod:`~ketapump.clinical.druglib`, the comparisons run in the Rust core), vitals feeds
and the vitals gate (:mod:`~ketapump.clinical.vitals`), the course history
(:mod:`~ketapump.clinical.course`), the session engine (:mod:`~ketapump.clinical.session`) with the
operator's commands (:mod:`~ketapump.clinical.commands`, :mod:`~ketapump.clinical.bedside`), who holds
the pump (:mod:`~ketapump.clinical.holds`) and slowing down (:mod:`~ketapump.clinical.pacing`), and the
report and plots (:mod:`~ketapump.clinical.report`). It imports the bridge and wire layers and the floor;
the faces above it (CLI, console, public API) drive the session engine and hold no clinical logic. Other
layers import it through this module: the names below, or its modules as namespaces.

The door is lazy (PEP 562): each name is imported on first use, so a process that needs one module
(the plot helper, a command that never runs a session) does not load the session engine. Type
checkers see the imports under ``TYPE_CHECKING``; :data:`_HOMES` says where each name lives at run
time, and ``tests/test_clinical_door.py`` holds the two equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ketapump.clinical import (
        bedside,
        commands,
        course,
        druglib,
        events,
        holds,
        pacing,
        pk,
        protocol,
        report,
        runner,
        session,
        vitals,
    )
    from ketapump.clinical.commands import ACTIONS, OPERATOR_NAME_MAX, check_operator_name
    from ketapump.clinical.course import CourseHistory, CourseSummary, default_course_path, plot_trend
    from ketapump.clinical.druglib import DrugLibrary, LimitFinding, load_library
    from ketapump.clinical.events import (
        ActionTaken,
        AlarmRaised,
        BaselineRecorded,
        FindingReported,
        HoldChanged,
        PhaseChanged,
        QuestionAnswered,
        QuestionAsked,
        RecordWritten,
        SessionEnded,
        SessionEvent,
        Source,
        Tick,
        VitalsRead,
    )
    from ketapump.clinical.pk import MODELS as PK_MODELS
    from ketapump.clinical.pk import PkModel, PlasmaEstimator, pk_model
    from ketapump.clinical.protocol import DosePlan, Patient, Protocol, Sitter, load_protocol, plan_dose
    from ketapump.clinical.runner import (
        CONFIRMABLE,
        DEMO_OPERATOR,
        DEMO_SITTER,
        InterruptedSession,
        SessionCheck,
        SessionOutcome,
        SessionRunner,
        SessionSetup,
        check_session,
        interrupted_sessions,
        prepare_demo,
        prepare_session,
        vitals_feed,
    )
    from ketapump.clinical.session import (
        PENDING,
        Operator,
        Phase,
        Question,
        ScheduledCommand,
        ScriptedOperator,
        Session,
        SessionAbortedError,
        SessionContext,
        SessionResult,
        check_order,
    )
    from ketapump.clinical.vitals import (
        CallbackVitalsFeed,
        CsvVitalsFeed,
        MonitorSettings,
        PatientScript,
        ScriptedMonitor,
        VitalsFeed,
        VitalsSample,
        VitalsThresholds,
        demo_patient,
        load_patient_script,
    )

#: Where each name of ``__all__`` lives: ``name: (module, name in it)``; a module is its own entry.
_HOMES: dict[str, tuple[str, str]] = {
    **{
        module: (module, "")
        for module in (
            "bedside",
            "commands",
            "course",
            "druglib",
            "events",
            "holds",
            "pacing",
            "pk",
            "protocol",
            "report",
            "runner",
            "session",
            "vitals",
        )
    },
    **{name: ("commands", name) for name in ("ACTIONS", "OPERATOR_NAME_MAX", "check_operator_name")},
    **{
        name: ("course", name)
        for name in ("CourseHistory", "CourseSummary", "default_course_path", "plot_trend")
    },
    **{name: ("druglib", name) for name in ("DrugLibrary", "LimitFinding", "load_library")},
    **{
        name: ("events", name)
        for name in (
            "ActionTaken",
            "AlarmRaised",
            "BaselineRecorded",
            "FindingReported",
            "HoldChanged",
            "PhaseChanged",
            "QuestionAnswered",
            "QuestionAsked",
            "RecordWritten",
            "SessionEnded",
            "SessionEvent",
            "Source",
            "Tick",
            "VitalsRead",
        )
    },
    "PK_MODELS": ("pk", "MODELS"),
    **{name: ("pk", name) for name in ("PkModel", "PlasmaEstimator", "pk_model")},
    **{
        name: ("protocol", name)
        for name in ("DosePlan", "Patient", "Protocol", "Sitter", "load_protocol", "plan_dose")
    },
    **{
        name: ("runner", name)
        for name in (
            "CONFIRMABLE",
            "DEMO_OPERATOR",
            "DEMO_SITTER",
            "InterruptedSession",
            "SessionCheck",
            "SessionOutcome",
            "SessionRunner",
            "SessionSetup",
            "check_session",
            "interrupted_sessions",
            "prepare_demo",
            "prepare_session",
            "vitals_feed",
        )
    },
    **{
        name: ("session", name)
        for name in (
            "PENDING",
            "Operator",
            "Phase",
            "Question",
            "ScheduledCommand",
            "ScriptedOperator",
            "Session",
            "SessionAbortedError",
            "SessionContext",
            "SessionResult",
            "check_order",
        )
    },
    **{
        name: ("vitals", name)
        for name in (
            "CallbackVitalsFeed",
            "CsvVitalsFeed",
            "MonitorSettings",
            "PatientScript",
            "ScriptedMonitor",
            "VitalsFeed",
            "VitalsSample",
            "VitalsThresholds",
            "demo_patient",
            "load_patient_script",
        )
    },
}


def __getattr__(name: str) -> object:
    """Imports the module a name of ``__all__`` lives in, on first use, and keeps the name here."""
    try:
        module, attribute = _HOMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    home = importlib.import_module(f"{__name__}.{module}")
    value = getattr(home, attribute) if attribute else home
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "ACTIONS",
    "CONFIRMABLE",
    "DEMO_OPERATOR",
    "DEMO_SITTER",
    "OPERATOR_NAME_MAX",
    "PENDING",
    "PK_MODELS",
    "ActionTaken",
    "AlarmRaised",
    "BaselineRecorded",
    "CallbackVitalsFeed",
    "CourseHistory",
    "CourseSummary",
    "CsvVitalsFeed",
    "DosePlan",
    "DrugLibrary",
    "FindingReported",
    "HoldChanged",
    "InterruptedSession",
    "LimitFinding",
    "MonitorSettings",
    "Operator",
    "Patient",
    "PatientScript",
    "Phase",
    "PhaseChanged",
    "PkModel",
    "PlasmaEstimator",
    "Protocol",
    "Question",
    "QuestionAnswered",
    "QuestionAsked",
    "RecordWritten",
    "ScheduledCommand",
    "ScriptedMonitor",
    "ScriptedOperator",
    "Session",
    "SessionAbortedError",
    "SessionCheck",
    "SessionContext",
    "SessionEnded",
    "SessionEvent",
    "SessionOutcome",
    "SessionResult",
    "SessionRunner",
    "SessionSetup",
    "Sitter",
    "Source",
    "Tick",
    "VitalsFeed",
    "VitalsRead",
    "VitalsSample",
    "VitalsThresholds",
    "bedside",
    "check_operator_name",
    "check_order",
    "check_session",
    "commands",
    "course",
    "default_course_path",
    "demo_patient",
    "druglib",
    "events",
    "holds",
    "interrupted_sessions",
    "load_library",
    "load_patient_script",
    "load_protocol",
    "pacing",
    "pk",
    "pk_model",
    "plan_dose",
    "plot_trend",
    "prepare_demo",
    "prepare_session",
    "protocol",
    "report",
    "runner",
    "session",
    "vitals",
    "vitals_feed",
]
