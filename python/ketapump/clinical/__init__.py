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
"""

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
from ketapump.clinical.course import CourseHistory, CourseSummary, default_course_path
from ketapump.clinical.druglib import DrugLibrary, LimitFinding, load_library
from ketapump.clinical.events import (
    ActionTaken,
    AlarmRaised,
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
from ketapump.clinical.protocol import DosePlan, Patient, Protocol, load_protocol, plan_dose
from ketapump.clinical.runner import (
    DEMO_OPERATOR,
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
    VitalsThresholds,
    demo_patient,
    load_patient_script,
)

__all__ = [
    "ACTIONS",
    "ActionTaken",
    "AlarmRaised",
    "CallbackVitalsFeed",
    "CourseHistory",
    "CourseSummary",
    "CsvVitalsFeed",
    "DEMO_OPERATOR",
    "DosePlan",
    "DrugLibrary",
    "FindingReported",
    "HoldChanged",
    "InterruptedSession",
    "LimitFinding",
    "MonitorSettings",
    "OPERATOR_NAME_MAX",
    "Operator",
    "PENDING",
    "PK_MODELS",
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
    "Source",
    "Tick",
    "VitalsFeed",
    "VitalsRead",
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
    "prepare_demo",
    "prepare_session",
    "protocol",
    "report",
    "runner",
    "session",
    "vitals",
    "vitals_feed",
]
