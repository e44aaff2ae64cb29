"""From what a user asked for to a recorded session: validate everything, open the records, run the
engine, write the report.

Every face runs a session the same three steps, so none of them holds a second implementation:

1. :func:`prepare_session` (or :func:`prepare_demo`) validates everything the user gave — protocol,
   patient (its id normalised by the course history's rule), drug library, pump URL, vitals feed, time
   scale, and that the report directory and the audit log can be written — and connects nothing and
   writes nothing. A problem raises :class:`~ketapump.errors.ConfigurationError` (or ``OSError`` for a
   file that cannot be read) before anything is recorded.
2. :meth:`SessionRunner.open` opens the course history (an existing one: it is never created here, but
   for the demo's own) and the audit log, records the history's database id in the log, and builds the
   engine (:class:`~ketapump.clinical.session.Session`), which can take commands and subscribers at once.
3. :meth:`SessionRunner.run` runs the session and, however it ends, closes the records (the audit log's
   closing record; its record count and chain head sealed in the course history), writes the report and
   plots and verifies the audit log. It returns a :class:`SessionOutcome`; one whose session did not
   complete carries what it raised (a refusal, an aborted pre-check, an unreachable pump, an unwritable
   record) as :attr:`SessionOutcome.error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ketapump import _core
from ketapump.bridge import (
    JITTER_REAL_S,
    AuditWriter,
    audit_logger,
    control_period_s,
    default_log_path,
    loop_settings,
    make_driver,
    verify,
)
from ketapump.clinical import druglib, report
from ketapump.clinical.commands import check_operator_name
from ketapump.clinical.course import SCHEMA_VERSION, CourseHistory, normalise_patient_id
from ketapump.clinical.events import Source
from ketapump.clinical.plotworker import PlotHelper
from ketapump.clinical.protocol import (
    DosePlan,
    Patient,
    Protocol,
    Sitter,
    load_protocol,
    plan_dose,
    protocol_sha256,
)
from ketapump.clinical.session import (
    NEW_PATIENT,
    OBSERVATION_INCOMPLETE,
    NewPatientFinding,
    Operator,
    ScriptedOperator,
    Session,
    SessionContext,
    SessionResult,
    check_order,
    new_patient_finding,
)
from ketapump.clinical.vitals import (
    CsvVitalsFeed,
    ScriptedMonitor,
    VitalsFeed,
    demo_patient,
    load_patient_script,
)
from ketapump.clock import Clock, ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings
from ketapump.errors import (
    ConfigurationError,
    ConfirmationRequired,
    CourseError,
    CourseRecordNotFoundError,
    LimitError,
    LimitRefused,
)
from ketapump.validation import check_output_path
from ketapump.wire import PumpDriver, split_url

#: What a reason may be given for (``--confirm KIND=REASON``, a console's confirmations): each limit
#: kind of the drug library and course rules, an elevated baseline, a new patient whose record is near
#: a recorded one, an infusion past its maximum duration, and a dose given over several syringes.
CONFIRMABLE: tuple[str, ...] = (
    *(name for name, _unit in _core.LIMIT_KINDS),
    druglib.SYRINGE_KIND,
    "baseline_vitals",
    NEW_PATIENT,
    OBSERVATION_INCOMPLETE,
)

#: The demo's patient: weight and height of ``data/patients/demo.toml``'s scripted monitor.
DEMO_PATIENT = Patient("demo-patient", weight_kg=70.0, height_cm=175.0, sex="male")
DEMO_PROTOCOL = "ketamine-depression"
#: The demo's operator: the scripted nurse of ``data/patients/demo.toml``.
DEMO_OPERATOR = "demo operator"
#: The demo patient's sitter (a number from the range reserved for fiction).
DEMO_SITTER = Sitter("demo sitter", "+1 202 555 0142")


@dataclass
class SessionSetup:
    """A validated session, ready to run: nothing has been connected or written yet."""

    protocol: Protocol
    patient: Patient
    plan: DosePlan
    library: druglib.DrugLibrary
    driver: PumpDriver
    clock: Clock
    vitals: VitalsFeed
    operator: Operator
    pump_url: str
    log_path: Path
    #: The course history (``None``: the default location, see docs/course.md).
    db_path: Path | None
    #: Where the report, the series and the plots go.
    out: Path
    #: Kernel settings that depend on the transport (control period, gains, pressure sensor).
    loop_settings: dict[str, Any] = field(default_factory=dict)
    #: The demo's own records, recreated on each run (never a real course history).
    throwaway_records: bool = False
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The operator running the session (``None`` only where the protocol allows anonymous QA runs).
    operator_name: str | None = None
    #: SHA-256 of the protocol file the session runs (empty: not known).
    protocol_sha256: str = ""
    #: The face the session was started through (in the audit log with the plan).
    source: Source = "cli"
    #: Who takes the patient home (``None``: not recorded; the discharge then is not confirmed).
    sitter: Sitter | None = None
    #: The forms the report is written in, the first the one a summary names (see :data:`REPORT_FORMATS`).
    report_formats: tuple[ReportFormat, ...] = ("md",)


#: A report's forms: Markdown with the plots beside it, one self-contained HTML file, or a PDF.
ReportFormat = Literal["md", "html", "pdf"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("md", "html", "pdf")


def vitals_feed(source: str) -> VitalsFeed:
    """The vitals feed a ``--vitals`` value names: ``sim`` (the demo patient), ``sim:SCRIPT.toml`` or
    ``csv:PATH``."""
    if source == "sim":
        return ScriptedMonitor(demo_patient())
    if source.startswith("sim:"):
        return ScriptedMonitor(load_patient_script(Path(source.removeprefix("sim:"))))
    if source.startswith("csv:"):
        return CsvVitalsFeed(Path(source.removeprefix("csv:")))
    raise ConfigurationError("vitals", f"{source!r} is not 'sim', 'sim:SCRIPT' or 'csv:PATH'")


def prepare_session(
    *,
    protocol: str,
    patient: Patient,
    operator: Operator,
    pump: str = "sim://",
    vitals: str = "sim",
    library: Path | None = None,
    course_db: Path | None = None,
    log: Path | None = None,
    out: Path = Path("ketapump-session"),
    time_scale: float | None = None,
    operator_name: str | None = None,
    jitter_real_s: float | None = None,
    sitter: Sitter | None = None,
    report_formats: Sequence[str] = ("md",),
) -> SessionSetup:
    """Validates a session request (see the module docstring). ``time_scale`` runs a ``sim://`` pump at
    that many pump seconds per real second (``None``: virtual time) or follows a hw-sim started with it.
    ``operator_name`` is required unless the protocol allows anonymous QA runs. ``jitter_real_s`` is
    the scheduling jitter (real s) the pump's watchdog must also outlast, where it exceeds a lone
    session's (:data:`ketapump.bridge.JITTER_REAL_S`): one event loop running several sessions
    (``serve``). ``report_formats`` are the report's forms (:data:`REPORT_FORMATS`, each once)."""
    formats = _report_formats(report_formats)
    try:
        patient = replace(patient, patient_id=normalise_patient_id(patient.patient_id))
    except CourseError as e:
        raise ConfigurationError("patient", e.problem if "patient id" in e.subject else str(e)) from e
    log_path = log or default_log_path()
    proto = load_protocol(protocol)
    operator_name = _operator_name(operator_name, proto)
    digest = protocol_sha256(protocol)
    plan = plan_dose(proto, patient)
    lib = druglib.load_library(library)
    lib.drug(plan.drug)
    scheme = split_url(pump)[0]
    defaults = default_kernel_settings()
    scale = 1.0 if time_scale is None else time_scale
    period = control_period_s(scheme, scale, None, float(defaults["control_period_s"]))
    clock: Clock = VirtualClock() if scheme == "sim" and time_scale is None else ScaledClock(scale)
    feed = vitals_feed(vitals)
    jitter = JITTER_REAL_S if jitter_real_s is None else jitter_real_s
    driver = make_driver(pump, clock, period, scale, sim_pump=_sim_pump_for(pump, plan), jitter_real_s=jitter)
    settings: dict[str, Any] = dict(loop_settings(period, defaults))
    if "pressure_mmhg" in driver.lacks:
        settings["has_pressure_sensor"] = False
    # Where the records go, found good before anything is asked or connected, not after the infusion.
    check_output_path(out, option="--out", directory=True)
    check_output_path(log_path, option="--log", directory=False)
    CourseHistory.check_path(course_db)
    return SessionSetup(
        protocol=proto,
        patient=patient,
        plan=plan,
        library=lib,
        driver=driver,
        clock=clock,
        vitals=feed,
        operator=operator,
        pump_url=pump,
        log_path=log_path,
        db_path=course_db,
        out=out,
        loop_settings=settings,
        operator_name=operator_name,
        protocol_sha256=digest,
        sitter=sitter,
        report_formats=formats,
    )


def _report_formats(given: Sequence[str]) -> tuple[ReportFormat, ...]:
    """``given`` checked: known forms, at least one, none twice (a ``ConfigurationError`` naming them)."""
    unknown = [f for f in given if f not in REPORT_FORMATS]
    if unknown or not given or len(set(given)) != len(given):
        raise ConfigurationError(
            "report",
            f"{', '.join(map(repr, given)) or 'nothing'} is not a list of distinct report forms "
            f"({', '.join(REPORT_FORMATS)})",
        )
    return tuple(f for f in given if f in REPORT_FORMATS)


def _operator_name(name: str | None, protocol: Protocol) -> str | None:
    """The operator's name, checked; refused when missing unless the protocol allows anonymous runs."""
    if name is None:
        if protocol.session.allow_anonymous:
            return None
        raise ConfigurationError(
            "operator",
            f"is required: protocol {protocol.name!r} does not allow a session without its operator's name",
        )
    try:
        return check_operator_name(name)
    except ValueError as e:
        raise ConfigurationError("operator", str(e)) from None


def prepare_demo(
    *, out: Path, seed: int = 0, time_scale: float | None = None, operator_name: str = DEMO_OPERATOR
) -> SessionSetup:
    """The demo: the standard protocol for the 70 kg demo patient on the in-process simulator, its
    records (audit log, course history) in ``out`` and recreated on each run. ``time_scale`` runs it at
    that many pump seconds per real second (``None``: virtual time); its control period and pump watchdog
    come from the same arithmetic as any run's, and a scale the loop cannot hold is refused
    (:class:`~ketapump.errors.ConfigurationError`, field ``--time-scale``). The demo patient's scripted
    nurse acts at the chair (``[[nurse]]`` in ``data/patients/demo.toml``: a slow-down for nausea with an
    antiemetic, then the plan's rate again) in ``operator_name``'s name."""
    protocol = load_protocol(DEMO_PROTOCOL)
    plan = plan_dose(protocol, DEMO_PATIENT)
    scale = 1.0 if time_scale is None else time_scale
    clock: Clock = VirtualClock() if time_scale is None else ScaledClock(scale)
    defaults = default_kernel_settings()
    period = control_period_s("sim", scale, None, float(defaults["control_period_s"]))
    pump = _core.SimPump(plan.syringe, seed=seed, fill_ml=plan.syringe_fill_ml)
    driver = make_driver("sim://", clock, period, scale, sim_pump=pump)
    script = demo_patient()
    seeded = script.model_copy(update={"monitor": script.monitor.model_copy(update={"seed": seed})})
    return SessionSetup(
        protocol=protocol,
        patient=DEMO_PATIENT,
        plan=plan,
        library=druglib.load_library(None),
        driver=driver,
        clock=clock,
        vitals=ScriptedMonitor(seeded),
        operator=ScriptedOperator.from_script(seeded),
        pump_url="sim://",
        log_path=out / "audit.jsonl",
        db_path=out / "course.sqlite3",
        out=out,
        loop_settings=dict(loop_settings(period, defaults)),
        throwaway_records=True,
        operator_name=_operator_name(operator_name, protocol),
        protocol_sha256=protocol_sha256(DEMO_PROTOCOL),
        sitter=DEMO_SITTER,
    )


@dataclass(frozen=True)
class SessionCheck:
    """What the session's pre-check will make of an order, asked before anything is opened."""

    #: Every finding the Rust core reports against the order (hard and soft), in its order, then the
    #: new-patient finding (a new id one typo from a recorded one), if any.
    findings: list[druglib.LimitFinding | NewPatientFinding]
    #: What the pre-check will raise with the reasons given (``LimitRefused`` for a hard finding,
    #: ``ConfirmationRequired`` for a soft one without a reason), or ``None``: it proceeds.
    refusal: LimitError | None


def check_session(
    setup: SessionSetup, reasons: Mapping[str, str], *, at: datetime.datetime | None = None
) -> SessionCheck:
    """The drug-library, course-rule and new-patient checks of the session's pre-check, against the
    course history as it stands ``at`` (default: now) and with ``reasons`` (limit kind → reason) as the
    operator's standing answers: a face can refuse with every finding before it opens the records,
    rather than start a session that waits on a question its client never sees. The session checks
    again when it runs (the history may change in between). Reads the history, writes nothing."""
    when = at or datetime.datetime.now(datetime.UTC)
    try:
        course: CourseHistory | None = CourseHistory.open(setup.db_path, readonly=True)
    except CourseRecordNotFoundError:
        course = None  # no history yet: the order is checked as a first session
    try:
        findings = check_order(setup.plan, setup.patient, setup.library, course, when)[2]
        near = new_patient_finding(course, setup.patient.patient_id) if course is not None else None
    finally:
        if course is not None:
            course.close()
    confirmations = [druglib.Confirmation(kind, reason) for kind, reason in reasons.items()]
    refusal: LimitError | None = None
    try:
        druglib.authorize(findings, confirmations)
    except LimitError as e:
        refusal = e
    if near is None:
        return SessionCheck(list(findings), refusal)
    # The new-patient question the session would ask (and wait on) before anything else.
    if not reasons.get(NEW_PATIENT, "").strip():
        if refusal is None:
            refusal = ConfirmationRequired([near])
        elif isinstance(refusal, ConfirmationRequired):
            refusal = ConfirmationRequired([*refusal.findings, near])
        else:
            refusal = LimitRefused(list(refusal.findings), also=[*refusal.also, near])
    return SessionCheck([*findings, near], refusal)


@dataclass(frozen=True)
class InterruptedSession:
    """A session the course history holds as begun and never ended, and no process runs it any more;
    what its audit log says about it, and the recovery ``ketapump run --resume`` offers."""

    session_id: str
    patient_id: str
    protocol: str
    started_at: datetime.datetime
    programmed_mg: float
    log_path: str | None
    #: From the audit log (``None`` when it cannot be read): the pump URL and the plan.
    pump: str | None = None
    rate_ml_h: float | None = None
    volume_ml: float | None = None
    syringe: str | None = None
    #: The session's delivered volume at the log's last telemetry summary.
    delivered_ml: float | None = None
    #: Why the log could not be used for a resume, if it could not.
    problem: str = ""

    def resume_command(self) -> list[str] | None:
        """``ketapump run --resume`` for this session's infusion: it reconciles the delivered volume
        with the pump's own counter, refuses if they disagree, and continues the infusion into a new
        log chained to the old one. ``None`` when the log does not hold what it needs."""
        if None in (self.pump, self.rate_ml_h, self.volume_ml, self.syringe, self.log_path):
            return None
        old = Path(str(self.log_path))
        return [
            "ketapump",
            "run",
            "--pump",
            str(self.pump),
            "--rate-ml-h",
            f"{self.rate_ml_h:g}",
            "--volume-ml",
            f"{self.volume_ml:g}",
            "--syringe",
            str(self.syringe),
            "--resume",
            str(old),
            "--log",
            str(old.with_name(old.stem + "-resumed.jsonl")),
        ]

    def as_dict(self) -> dict[str, Any]:
        command = self.resume_command()
        return {
            "session_id": self.session_id,
            "patient_id": self.patient_id,
            "protocol": self.protocol,
            "started_at": self.started_at.isoformat(),
            "programmed_mg": self.programmed_mg,
            "log": self.log_path,
            "pump": self.pump,
            "rate_ml_h": self.rate_ml_h,
            "volume_ml": self.volume_ml,
            "syringe": self.syringe,
            "delivered_ml": self.delivered_ml,
            "problem": self.problem,
            "resume_command": command,
        }


def interrupted_sessions(db_path: Path | None, *, running: Collection[str] = ()) -> list[InterruptedSession]:
    """The sessions of the course history at ``db_path`` that began and never ended, except those in
    ``running`` (the ones this process runs), each with what its audit log holds. No history: none."""
    try:
        course = CourseHistory.open(db_path, readonly=True)
    except CourseRecordNotFoundError:
        return []
    try:
        unfinished = [s for s in course.sessions_in_progress() if s.session_id not in running]
    finally:
        course.close()
    found = []
    for s in unfinished:
        base = InterruptedSession(
            s.session_id, s.patient_id, s.protocol, s.started_at, s.programmed_mg, s.log_path
        )
        found.append(_with_log(base))
    return found


def _with_log(session: InterruptedSession) -> InterruptedSession:
    """``session`` completed from its audit log: the pump it ran, its plan, the last delivered volume."""
    if not session.log_path:
        return replace(session, problem="the course history names no audit log")
    fields: dict[str, Any] = {}
    try:
        with Path(session.log_path).open(encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if entry.get("session_id") != session.session_id:
                    continue
                fields.setdefault("pump", entry.get("pump"))
                if entry.get("event") == "session_planned":
                    fields |= {k: entry.get(k) for k in ("rate_ml_h", "volume_ml", "syringe")}
                elif entry.get("event") == "telemetry":
                    fields["delivered_ml"] = entry.get("session_delivered_ml")
    except (OSError, json.JSONDecodeError) as e:
        return replace(session, problem=f"cannot read the audit log: {e}")
    if "rate_ml_h" not in fields:
        fields["problem"] = "the audit log holds no plan for this session"
    return replace(session, **fields)


def _sim_pump_for(url: str, plan: DosePlan) -> _core.SimPump | None:
    """For ``sim://``: a simulated pump with the protocol's syringe, filled as the plan says."""
    scheme, _path, params = split_url(url)
    if scheme != "sim":
        return None
    # A dose one syringe cannot hold is refused by the session's review (syringe_fill_ml), not here.
    fill_ml = min(plan.syringe_fill_ml, plan.syringe_capacity_ml)
    return _core.SimPump(plan.syringe, seed=int(params.get("seed", "0")), fill_ml=fill_ml)


def wall_time(at: datetime.datetime) -> str:
    """A time as a clinician signs it: UTC and the machine's local time."""
    local = at.astimezone()
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({local:%Y-%m-%d %H:%M:%S} {local.tzname() or 'local'})"


def record_fields(
    setup: SessionSetup, started: datetime.datetime, ended: datetime.datetime
) -> dict[str, Any]:
    """What a signed record names beside the session's own numbers: when (UTC and local, wall clock),
    who, the protocol file's hash, the pump, the syringe, the software."""
    plan = setup.plan
    version = _core.__version__
    clock = "virtual time (simulated)" if isinstance(setup.clock, VirtualClock) else "real time"
    if isinstance(setup.clock, ScaledClock) and setup.clock.time_scale != 1.0:
        clock = f"{setup.clock.time_scale:g}× real time (simulated)"
    return {
        "patient": setup.patient.patient_id,
        "started_at": wall_time(started),
        "ended_at": wall_time(ended),
        "clock": clock,
        "protocol_sha256": setup.protocol_sha256,
        "pump": setup.pump_url,
        "syringe": _syringes(plan),
        "concentration": f"{plan.concentration_mg_per_ml:g} mg/mL {plan.drug}",
        "rate": f"{plan.rate_ml_h:.2f} mL/h mean, {plan.peak_rate_ml_h:.2f} mL/h peak",
        # One workspace version for the package and the Rust safety core it was built with.
        "software": f"ketapump {version}, safety core {version} ({_core.BUILD_PROFILE} build)",
        "sitter": f"{setup.sitter.name}, phone {setup.sitter.phone}" if setup.sitter else "not recorded",
    }


def _syringes(plan: DosePlan) -> str:
    """The syringe a record names: its fill, or each syringe's share of a dose of several."""
    syringe = f"{plan.syringe} ({plan.syringe_capacity_ml:g} mL)"
    shares = plan.syringe_volumes_ml
    if len(shares) == 1:
        return f"{syringe}, filled with {plan.syringe_fill_ml:.1f} mL"
    given = " + ".join(f"{v:.1f}" for v in shares)
    return f"{len(shares)} × {syringe}, giving {given} mL (the first also primes the line)"


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _monotonic_utc() -> Callable[[], datetime.datetime]:
    """The wall clock in UTC that never steps back (a clock set back mid-session must not make a
    session end before it began): each reading is at least the one before."""
    last = _utc_now()

    def now() -> datetime.datetime:
        nonlocal last
        last = max(last, _utc_now())
        return last

    return now


@dataclass
class SessionOutcome:
    """A finished session and where its records are."""

    result: SessionResult
    log_path: Path
    log_verified: bool
    course_db: Path
    report: Path
    plots: list[Path]
    #: Every form of the report written (``report`` is the first).
    reports: list[Path] = field(default_factory=list)
    #: What ended the session, when it did not complete (a refusal, an aborted pre-check, an unreachable
    #: pump, an audit log or course history that could not be written); ``None`` otherwise.
    error: Exception | None = None
    #: What ``ketapump log verify`` says of the audit log (empty when it verifies).
    log_detail: str = ""

    @property
    def complete(self) -> bool:
        """The session completed and its audit log verifies."""
        return self.error is None and self.result.outcome == "complete" and self.log_verified

    def summary(self) -> dict[str, Any]:
        """The machine summary every face prints (``--json``) or serves."""
        r = self.result
        return {
            "session_id": r.session_id,
            "outcome": r.outcome,
            "operator": r.operator,
            "programmed_mg": r.programmed_mg,
            "delivered_mg": r.delivered_mg,
            "error_pct": r.summary()["error_pct"],
            "alarms": r.alarms,
            "pauses": r.pauses,
            "actions": r.actions,
            "observations": r.observations,
            "medications": r.medications,
            "syringe_changes": r.syringe_changes,
            "confirmations": r.confirmations,
            "observation_min": r.observation_min,
            "discharge_confirmed": r.discharge_confirmed,
            "sitter": r.sitter,
            "log": str(self.log_path),
            "log_verified": self.log_verified,
            "log_detail": self.log_detail,
            "course_db": str(self.course_db),
            "report": str(self.report),
            "reports": [str(p) for p in self.reports or [self.report]],
            "plots": [str(p) for p in self.plots],
            **self._refusal(),
        }

    def _refusal(self) -> dict[str, Any]:
        """For a session refused by its findings: every finding, hard ones first, and the kinds a
        confirmation needs (the same objects ``dose --json`` prints)."""
        if not isinstance(self.error, LimitError):
            return {}
        findings = [*self.error.findings, *self.error.also]
        return {
            "findings": [f.as_dict() for f in findings if isinstance(f, druglib.LimitFinding)],
            "needs_confirmation": [f.kind for f in findings if f.severity == "soft"],
        }


class SessionRunner:
    """A session with its records open (see the module docstring)."""

    def __init__(self, setup: SessionSetup, writer: AuditWriter, course: CourseHistory) -> None:
        self.setup = setup
        self._writer = writer
        self._course = course
        self._plots = PlotHelper()
        events = audit_logger(writer, session_id=setup.session_id, pump=setup.pump_url)
        # The history every limit is checked against, named in the log: a session's record says which.
        events.info(
            "course_history_opened",
            course_db=str(course.path),
            course_db_id=course.database_id,
            schema_version=SCHEMA_VERSION,
        )
        origin = _utc_now()
        self.session = Session(
            SessionContext(
                session_id=setup.session_id,
                protocol=setup.protocol,
                patient=setup.patient,
                driver=setup.driver,
                clock=setup.clock,
                log=events,
                course=course,
                library=setup.library,
                vitals=setup.vitals,
                operator=setup.operator,
                calendar_origin=origin - datetime.timedelta(seconds=setup.clock.now()),
                audit_path=str(setup.log_path),
                loop_settings=setup.loop_settings,
                operator_name=setup.operator_name,
                # Course records carry true times, whatever clock the pump runs on.
                true_time=_monotonic_utc(),
                source=setup.source,
                sitter=setup.sitter,
            )
        )

    @classmethod
    def open(cls, setup: SessionSetup) -> SessionRunner:
        """Opens the course history, then the audit log. Raises
        :class:`~ketapump.errors.CourseError` for the history (missing, empty, foreign, older, damaged,
        unwritable: nothing written anywhere), and ``OSError``/``ValueError`` for a log that cannot be
        opened (the history is closed again)."""
        log_path = setup.log_path
        if setup.throwaway_records:
            log_path.unlink(missing_ok=True)
            if setup.db_path is not None:
                db = setup.db_path
                for own in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                    own.unlink(missing_ok=True)  # the demo's own history from an earlier run
            course = CourseHistory.create(setup.db_path, at=datetime.datetime.now(datetime.UTC))
        else:
            course = CourseHistory.open(setup.db_path)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            writer = AuditWriter.open(log_path)
        except BaseException:
            course.close()
            raise
        return cls(setup, writer, course)

    def close(self) -> None:
        """Closes the records of a session that will not run (:meth:`run` closes them itself)."""
        try:
            self._course.close()
        finally:
            self._writer.close()

    async def run(self) -> SessionOutcome:
        """Runs the session, then, however it ended, closes and seals the records and writes the report
        (see the module docstring). A ``KeyboardInterrupt`` or cancellation still closes the records and
        is raised again; every other failure is the outcome's :attr:`~SessionOutcome.error`."""
        setup = self.setup
        error: Exception | None = None
        if isinstance(setup.clock, VirtualClock):
            # A session in virtual time ends in seconds: the plots' helper gets ready beside it (in real
            # time it would wait idle for the whole session, so it starts at the end).
            self._plots.start()
        try:
            started = _utc_now()
            try:
                result = await self.session.run()
            except Exception as e:
                error = e
                result = self.session.result(setup.plan)
            finally:
                self._close_records()
            ended = _utc_now()
            # Verifying the log and drawing the plots take a CPU second or more: off the event loop, where
            # they would hold up every other session a process runs (``ketapump serve``'s chairs).
            return await asyncio.to_thread(self._write_records, result, error, started, ended)
        finally:
            self._plots.close()

    def _write_records(
        self,
        result: SessionResult,
        error: Exception | None,
        started: datetime.datetime,
        ended: datetime.datetime,
    ) -> SessionOutcome:
        setup = self.setup
        verified = verify(setup.log_path)
        plots = self._plots.write_plots(
            result.points,
            result.events,
            setup.out,
            thresholds=result.thresholds,
            actions=result.actions,
            observations=result.observations,
            medications=result.medications,
            planned=result.planned_schedule(),
            baseline=result.baseline,
            band_pct=result.observation_band_pct,
        )
        outcome = SessionOutcome(
            result=result,
            log_path=setup.log_path,
            log_verified=verified.ok,
            course_db=self._course.path,
            report=setup.out / f"report.{setup.report_formats[0]}",
            plots=plots,
            error=error,
            log_detail=verified.reason,
        )
        summary = (
            result.summary()
            | record_fields(setup, started, ended)
            | {
                "log": str(setup.log_path),
                "log_verified": verified.ok,
                "course_db": str(self._course.path),
            }
        )
        if error is not None:
            summary["ended_by"] = str(error)
        written = [
            report.write_report(
                summary,
                result.points,
                result.events,
                setup.out,
                fmt=fmt,
                plots=plots,
                thresholds=result.thresholds,
            )
            for fmt in setup.report_formats
        ]
        outcome.report, outcome.reports = written[0], written
        return outcome

    def _close_records(self) -> None:
        """Closes the audit log (its ``log_closed`` record) and seals it in the course history — its
        record count and chain head, so ``log verify`` catches closing records dropped later — when the
        session is there; then closes the history. Never raises: a seal that cannot be written leaves
        the log checked on its own."""
        writer, course = self._writer, self._course
        writer.close()
        try:
            with contextlib.suppress(CourseRecordNotFoundError):
                course.session(self.setup.session_id)
                course.seal_log(
                    self.setup.session_id,
                    self.setup.log_path,
                    writer.next_seq,
                    writer.last_hash,
                    writer.key_id,
                    datetime.datetime.now(datetime.UTC),
                )
        except CourseError:
            pass  # the history already failed mid-session (recorded in the log), or is gone
        finally:
            course.close()


__all__ = [
    "CONFIRMABLE",
    "DEMO_OPERATOR",
    "DEMO_PATIENT",
    "DEMO_PROTOCOL",
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
    "record_fields",
    "vitals_feed",
    "wall_time",
]
