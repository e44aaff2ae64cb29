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
(the plot helper, a command that never runs a session) does not load the session engine.
:data:`_HOMES` says where each name lives at run time, and ``__all__`` is its names. Type checkers and
linters cannot read a built ``__all__``: they see each name re-exported under ``TYPE_CHECKING``
(``import X as X``, PEP 484; the renamed ``PK_MODELS`` assigned), and ``tests/test_clinical_door.py``
holds those re-exports and :data:`_HOMES` equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ketapump.clinical import bedside as bedside
    from ketapump.clinical import commands as commands
    from ketapump.clinical import course as course
    from ketapump.clinical import druglib as druglib
    from ketapump.clinical import events as events
    from ketapump.clinical import holds as holds
    from ketapump.clinical import pacing as pacing
    from ketapump.clinical import pk as pk
    from ketapump.clinical import protocol as protocol
    from ketapump.clinical import report as report
    from ketapump.clinical import runner as runner
    from ketapump.clinical import session as session
    from ketapump.clinical import vitals as vitals
    from ketapump.clinical.commands import ACTIONS as ACTIONS
    from ketapump.clinical.commands import OPERATOR_NAME_MAX as OPERATOR_NAME_MAX
    from ketapump.clinical.commands import check_operator_name as check_operator_name
    from ketapump.clinical.course import CourseHistory as CourseHistory
    from ketapump.clinical.course import CourseSummary as CourseSummary
    from ketapump.clinical.course import default_course_path as default_course_path
    from ketapump.clinical.course import plot_trend as plot_trend
    from ketapump.clinical.druglib import DrugLibrary as DrugLibrary
    from ketapump.clinical.druglib import LimitFinding as LimitFinding
    from ketapump.clinical.druglib import load_library as load_library
    from ketapump.clinical.events import ActionTaken as ActionTaken
    from ketapump.clinical.events import AlarmRaised as AlarmRaised
    from ketapump.clinical.events import BaselineRecorded as BaselineRecorded
    from ketapump.clinical.events import FindingReported as FindingReported
    from ketapump.clinical.events import HoldChanged as HoldChanged
    from ketapump.clinical.events import PhaseChanged as PhaseChanged
    from ketapump.clinical.events import QuestionAnswered as QuestionAnswered
    from ketapump.clinical.events import QuestionAsked as QuestionAsked
    from ketapump.clinical.events import RecordWritten as RecordWritten
    from ketapump.clinical.events import SessionEnded as SessionEnded
    from ketapump.clinical.events import SessionEvent as SessionEvent
    from ketapump.clinical.events import Source as Source
    from ketapump.clinical.events import Tick as Tick
    from ketapump.clinical.events import VitalsRead as VitalsRead
    from ketapump.clinical.pk import PkModel as PkModel
    from ketapump.clinical.pk import PlasmaEstimator as PlasmaEstimator
    from ketapump.clinical.pk import pk_model as pk_model
    from ketapump.clinical.protocol import DosePlan as DosePlan
    from ketapump.clinical.protocol import Patient as Patient
    from ketapump.clinical.protocol import Protocol as Protocol
    from ketapump.clinical.protocol import Sitter as Sitter
    from ketapump.clinical.protocol import load_protocol as load_protocol
    from ketapump.clinical.protocol import plan_dose as plan_dose
    from ketapump.clinical.runner import CONFIRMABLE as CONFIRMABLE
    from ketapump.clinical.runner import DEMO_OPERATOR as DEMO_OPERATOR
    from ketapump.clinical.runner import DEMO_SITTER as DEMO_SITTER
    from ketapump.clinical.runner import InterruptedSession as InterruptedSession
    from ketapump.clinical.runner import SessionCheck as SessionCheck
    from ketapump.clinical.runner import SessionOutcome as SessionOutcome
    from ketapump.clinical.runner import SessionRunner as SessionRunner
    from ketapump.clinical.runner import SessionSetup as SessionSetup
    from ketapump.clinical.runner import check_session as check_session
    from ketapump.clinical.runner import interrupted_sessions as interrupted_sessions
    from ketapump.clinical.runner import prepare_demo as prepare_demo
    from ketapump.clinical.runner import prepare_session as prepare_session
    from ketapump.clinical.runner import vitals_feed as vitals_feed
    from ketapump.clinical.session import PENDING as PENDING
    from ketapump.clinical.session import Operator as Operator
    from ketapump.clinical.session import Phase as Phase
    from ketapump.clinical.session import Question as Question
    from ketapump.clinical.session import ScheduledCommand as ScheduledCommand
    from ketapump.clinical.session import ScriptedOperator as ScriptedOperator
    from ketapump.clinical.session import Session as Session
    from ketapump.clinical.session import SessionAbortedError as SessionAbortedError
    from ketapump.clinical.session import SessionContext as SessionContext
    from ketapump.clinical.session import SessionResult as SessionResult
    from ketapump.clinical.session import check_order as check_order
    from ketapump.clinical.vitals import CallbackVitalsFeed as CallbackVitalsFeed
    from ketapump.clinical.vitals import CsvVitalsFeed as CsvVitalsFeed
    from ketapump.clinical.vitals import MonitorSettings as MonitorSettings
    from ketapump.clinical.vitals import PatientScript as PatientScript
    from ketapump.clinical.vitals import ScriptedMonitor as ScriptedMonitor
    from ketapump.clinical.vitals import VitalsFeed as VitalsFeed
    from ketapump.clinical.vitals import VitalsSample as VitalsSample
    from ketapump.clinical.vitals import VitalsThresholds as VitalsThresholds
    from ketapump.clinical.vitals import demo_patient as demo_patient
    from ketapump.clinical.vitals import load_patient_script as load_patient_script

    PK_MODELS = pk.MODELS

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


__all__ = list(_HOMES)
