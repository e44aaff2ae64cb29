"""The clinical commands of the ``ketapump`` CLI: ``dose`` and ``demo``.

``ketapump dose`` answers "what will this protocol give this patient, and which limits apply?" without
touching a pump or a record. ``ketapump demo`` runs a complete simulated ketamine session end to end —
limits, pre-check, take-up, infusion, observation, discharge — on the built-in simulator and writes the
audit log, the course history, a report and its plots.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ketapump import _core
from ketapump.bridge import (
    AuditWriter,
    audit_logger,
    control_period_s,
    default_log_path,
    loop_settings,
    make_driver,
    verify,
)
from ketapump.cli.common import EXIT_ABORTED, EXIT_INTERLOCK, EXIT_LIMIT, fail
from ketapump.clinical import (
    CourseHistory,
    CsvVitalsFeed,
    DosePlan,
    MonitorSettings,
    Patient,
    Protocol,
    ScriptedMonitor,
    ScriptedOperator,
    Session,
    SessionAbortedError,
    SessionContext,
    SessionResult,
    VitalsFeed,
    demo_patient,
    druglib,
    load_library,
    load_patient_script,
    load_protocol,
    plan_dose,
    report,
)
from ketapump.clock import Clock, ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings
from ketapump.errors import (
    AuditWriteError,
    ConfigurationError,
    KetapumpError,
    LimitError,
    TransportError,
)
from ketapump.validation import input_exit_code
from ketapump.wire import PumpDriver, ReferencePumpDriver, SimTransport, open_transport, split_url

#: The demo's patient: weight, height and the scripted monitor of ``data/patients/demo.toml``.
DEMO_PATIENT = Patient("demo-patient", weight_kg=70.0, height_cm=175.0, sex="male")
DEMO_PROTOCOL = "ketamine-depression"


def dose(
    protocol: Annotated[str, typer.Option(help="Protocol file, or a shipped protocol's name.")],
    weight_kg: Annotated[float, typer.Option(help="Patient's actual body weight (kg).")],
    height_cm: Annotated[
        float | None, typer.Option(help="Height (cm): needed for ideal or adjusted weight.")
    ] = None,
    sex: Annotated[
        str | None, typer.Option(help="female or male: needed for ideal or adjusted weight.")
    ] = None,
    library: Annotated[
        Path | None, typer.Option(help="Drug library file (default: the shipped one).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
) -> None:
    """Dose calculator: mg, mL, mL/h, duration, syringe fill, and the limits that apply.

    Exit codes: 0 allowed (soft findings need a confirmation when the session runs), 6 refused by a
    hard limit, 65 invalid protocol, library or patient data, 66 protocol or library file (or shipped
    protocol name) not found.
    """
    if sex is not None and sex not in {"female", "male"}:
        raise fail(f"--sex {sex!r}: use female or male", os.EX_USAGE)
    try:
        proto = load_protocol(protocol)
        lib = load_library(library)
        patient = Patient("dose-calculator", weight_kg, height_cm, sex)  # type: ignore[arg-type]
        plan = plan_dose(proto, patient)
        entry = lib.drug(plan.drug)
        findings = druglib.check(entry, druglib.order_for(plan, patient))
    except ConfigurationError as e:
        raise fail(str(e), input_exit_code(e)) from e
    result: dict[str, Any] = {
        "dose_mg": plan.dose_mg,
        "volume_ml": plan.volume_ml,
        "rate_ml_h": plan.rate_ml_h,
        "duration_min": plan.duration_min,
        **plan.as_dict(),
        "limits": druglib.applicable_limits(entry),
        "findings": [f.as_dict() for f in findings],
        "allowed": not any(f.severity == "hard" for f in findings),
    }
    if json_output:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        _print_dose(plan.as_dict(), result)
    if not result["allowed"]:
        raise typer.Exit(EXIT_LIMIT)


def _print_dose(plan: dict[str, Any], result: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"protocol        {plan['protocol']} ({plan['drug']} {plan['concentration_mg_per_ml']:g} mg/mL)")
    basis = plan["weight_basis"]
    echo(
        f"weight          {plan['weight_kg']:g} kg actual; "
        f"dosed on {basis} weight {plan['basis_weight_kg']:.1f} kg"
    )
    echo(f"dose            {plan['dose_mg']:.2f} mg ({plan['dose_mg_per_kg']:g} mg/kg)")
    echo(f"volume          {plan['volume_ml']:.2f} mL")
    echo(f"rate            {plan['rate_ml_h']:.2f} mL/h mean ({plan['dose_rate_mg_per_kg_h']:.3f} mg/kg/h)")
    if len(plan["phases"]) > 1:
        for ph in plan["phases"]:
            echo(
                f"  {ph['kind']:<6} {ph['start_min']:5.1f}–{ph['end_min']:5.1f} min "
                f"{ph['from_ml_h']:.2f} → {ph['to_ml_h']:.2f} mL/h"
            )
    echo(f"duration        {plan['duration_min']:.1f} min")
    echo(
        f"syringe fill    {plan['syringe_fill_ml']:.1f} mL in {plan['syringe']} "
        f"({plan['syringe_capacity_ml']:g} mL; includes the line prime)"
    )
    echo(f"limits ({plan['drug']}, drug library):")
    for kind, bounds in result["limits"].items():
        echo(f"  {kind:<28} soft {_range(bounds, 'soft')}   hard {_range(bounds, 'hard')}  {bounds['unit']}")
    for f in result["findings"]:
        echo(f"{f['severity'].upper():<6}          {f['message']}")
    if not result["findings"]:
        echo("findings        none: within every limit")


def _range(bounds: dict[str, Any], level: str) -> str:
    low, high = bounds.get(f"{level}_min"), bounds.get(f"{level}_max")
    if low is None and high is None:
        return f"{'—':<13}"
    if low is None:
        text = f"≤ {high:g}"
    elif high is None:
        text = f"≥ {low:g}"
    else:
        text = f"{low:g}–{high:g}"
    return f"{text:<13}"


def demo(
    speed: Annotated[
        float | None,
        typer.Option(min=1.0, help="Pump seconds per real second (default: as fast as possible)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine summary on stdout.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for the log, history, report and plots.")] = Path(
        "ketapump-demo"
    ),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the simulated pump and patient monitor.")] = 0,
) -> None:
    """Run a complete simulated ketamine session (0.5 mg/kg over 40 min, 70 kg) end to end.

    Everything runs in-process on the built-in simulator: the pump (hw-sim physics and firmware, through
    the same driver a real pump uses) and a scripted patient monitor. Writes to OUT: audit.jsonl (the
    hash-chained audit log), course.sqlite3 (this demo's course history, recreated on each run),
    report.md, series.csv and four PNG plots. Exit 0 when the session completes.
    """
    protocol = load_protocol(DEMO_PROTOCOL)
    plan = plan_dose(protocol, DEMO_PATIENT)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(f"cannot create {out}: {e.strerror}", os.EX_CANTCREAT) from e
    db_path = out / "course.sqlite3"
    for own in (db_path, out / "course.sqlite3-wal", out / "course.sqlite3-shm"):
        own.unlink(missing_ok=True)  # the demo's own history from an earlier run
    clock: Clock = VirtualClock() if speed is None else ScaledClock(speed)
    pump = _core.SimPump(plan.syringe, seed=seed, fill_ml=plan.syringe_fill_ml)
    transport = open_transport("sim://", clock=clock, pump=pump)
    assert isinstance(transport, SimTransport)
    setup = _Setup(
        protocol=protocol,
        patient=DEMO_PATIENT,
        library=load_library(None),
        driver=ReferencePumpDriver(transport),
        clock=clock,
        vitals=ScriptedMonitor(demo_patient().model_copy(update={"monitor": _monitor(seed)})),
        operator=ScriptedOperator(),
        pump_url="sim://",
        log_path=out / "audit.jsonl",
        db_path=db_path,
        out=out,
        loop_settings={},
    )
    _execute(setup, json_output=json_output, fresh_log=True)


def session(
    protocol: Annotated[str, typer.Option(help="Protocol file, or a shipped protocol's name.")],
    patient: Annotated[str, typer.Option(help="Patient id in the course history.")],
    weight_kg: Annotated[float, typer.Option(help="Actual body weight (kg).")],
    pump: Annotated[str, typer.Option(help="Pump URL (see `ketapump run`).")] = "sim://",
    height_cm: Annotated[
        float | None, typer.Option(help="Height (cm), for ideal or adjusted weight.")
    ] = None,
    sex: Annotated[str | None, typer.Option(help="female or male, for ideal or adjusted weight.")] = None,
    vitals: Annotated[
        str, typer.Option(help="Vitals feed: 'sim' (the demo patient), 'sim:SCRIPT.toml' or 'csv:PATH'.")
    ] = "sim",
    library: Annotated[
        Path | None, typer.Option(help="Drug library file (default: the shipped one).")
    ] = None,
    course_db: Annotated[
        Path | None, typer.Option(help="Course history (default: see docs/course.md).")
    ] = None,
    confirm: Annotated[
        list[str] | None,
        typer.Option(help="KIND=REASON: confirm a soft limit or course rule with a reason (repeatable)."),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Answer every checklist item yes (scripted runs).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Directory for the report and plots.")] = Path("ketapump-session"),
    log: Annotated[Path | None, typer.Option(help="Audit log file (default: see README).")] = None,
    time_scale: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Pump seconds per real second (must match a scaled hw-sim; sim:// runs in virtual time "
            "unless given).",
        ),
    ] = None,
    resume_after_s: Annotated[
        float, typer.Option(min=0.0, help="After a vitals alarm clears, resume after this long (s).")
    ] = 120.0,
    stop_after_min: Annotated[
        float, typer.Option(min=0.0, help="Stop an infusion the vitals have kept paused this long (min).")
    ] = 30.0,
    json_output: Annotated[bool, typer.Option("--json", help="Machine summary on stdout.")] = False,
) -> None:
    """Run a clinical session from a protocol on any pump, recorded in the audit log and course history.

    Everything given is validated before anything is written (exit 65, every problem listed). Checklist
    items are asked on the terminal unless --yes; a soft limit or course rule proceeds only with
    --confirm KIND=REASON. While it runs, SIGUSR1 pauses and SIGUSR2 resumes the infusion; SIGINT or
    SIGTERM stops it (the session still observes and records). Exit codes: 0 complete, 3 ended early
    (interlock, operator, link), 6 refused by a limit or an unconfirmed soft limit, 7 aborted in the
    pre-check, 65 invalid data, 66 a file not found, 69 pump unreachable, 74 log unwritable.
    """
    if sex is not None and sex not in {"female", "male"}:
        raise fail(f"--sex {sex!r}: use female or male", os.EX_USAGE)
    try:
        reasons = _reasons(confirm or [])
        proto = load_protocol(protocol)
        person = Patient(patient, weight_kg, height_cm, sex)  # type: ignore[arg-type]
        plan = plan_dose(proto, person)
        lib = load_library(library)
        lib.drug(plan.drug)
        scheme = split_url(pump)[0]
        defaults = default_kernel_settings()
        scale = 1.0 if time_scale is None else time_scale
        period = control_period_s(scheme, scale, None, float(defaults["control_period_s"]))
        clock: Clock = VirtualClock() if scheme == "sim" and time_scale is None else ScaledClock(scale)
        feed = _vitals_feed(vitals)
        driver = make_driver(pump, clock, period, scale, sim_pump=_sim_pump_for(pump, plan))
        settings: dict[str, Any] = dict(loop_settings(period, defaults))
        if "pressure_mmhg" in driver.lacks:
            settings["has_pressure_sensor"] = False
    except ConfigurationError as e:
        raise fail(str(e), input_exit_code(e)) from e
    except OSError as e:
        raise fail(str(e), os.EX_NOINPUT) from e
    operator = ScriptedOperator(
        answers={} if yes else _ask_checklist(proto.checklists.pre + proto.checklists.discharge),
        reasons=reasons,
        resume_after_s=resume_after_s,
        stop_after_s=stop_after_min * 60.0,
    )
    setup = _Setup(
        protocol=proto,
        patient=person,
        library=lib,
        driver=driver,
        clock=clock,
        vitals=feed,
        operator=operator,
        pump_url=pump,
        log_path=log or default_log_path(),
        db_path=course_db,
        out=out,
        loop_settings=settings,
    )
    _execute(setup, json_output=json_output, fresh_log=False)


def _sim_pump_for(url: str, plan: DosePlan) -> _core.SimPump | None:
    """For ``sim://``: a simulated pump with the protocol's syringe, filled as the plan says."""
    scheme, _path, params = split_url(url)
    if scheme != "sim":
        return None
    return _core.SimPump(plan.syringe, seed=int(params.get("seed", "0")), fill_ml=plan.syringe_fill_ml)


def _reasons(confirm: list[str]) -> dict[str, str]:
    reasons = {}
    for item in confirm:
        kind, sep, reason = item.partition("=")
        if not sep or not reason.strip():
            raise ConfigurationError("--confirm", f"{item!r} is not KIND=REASON with a reason")
        kinds = [name for name, _unit in _core.LIMIT_KINDS] + ["baseline_vitals"]
        if kind not in kinds:
            raise ConfigurationError("--confirm", f"{kind!r} is not a limit kind ({', '.join(kinds)})")
        reasons[kind] = reason.strip()
    return reasons


def _ask_checklist(items: list[str]) -> dict[str, bool]:
    """The terminal operator: every checklist item asked up front, before the pump is touched."""
    return {
        item: typer.confirm(f"confirm: {item}?", default=False, err=True) for item in dict.fromkeys(items)
    }


def _vitals_feed(source: str) -> VitalsFeed:
    if source == "sim":
        return ScriptedMonitor(demo_patient())
    if source.startswith("sim:"):
        return ScriptedMonitor(load_patient_script(Path(source.removeprefix("sim:"))))
    if source.startswith("csv:"):
        return CsvVitalsFeed(Path(source.removeprefix("csv:")))
    raise ConfigurationError("vitals", f"{source!r} is not 'sim', 'sim:SCRIPT' or 'csv:PATH'")


def _monitor(seed: int) -> MonitorSettings:
    return demo_patient().monitor.model_copy(update={"seed": seed})


@dataclass
class _Setup:
    """A validated session, ready to run: nothing has been written yet."""

    protocol: Protocol
    patient: Patient
    library: druglib.DrugLibrary
    driver: PumpDriver
    clock: Clock
    vitals: VitalsFeed
    operator: ScriptedOperator
    pump_url: str
    log_path: Path
    db_path: Path | None
    out: Path
    loop_settings: dict[str, Any]


def _execute(setup: _Setup, *, json_output: bool, fresh_log: bool) -> None:
    """Opens the record (audit log, course history), runs the session, writes the report and plots,
    prints the summary and exits with the session's code."""
    console = Console(stderr=True)
    session_id = uuid.uuid4().hex
    log_path = setup.log_path
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if fresh_log:
            log_path.unlink(missing_ok=True)
        writer = AuditWriter.open(log_path)
    except (OSError, ValueError) as e:
        raise fail(f"cannot open the audit log {log_path}: {e}", os.EX_IOERR) from e
    events = audit_logger(writer, session_id=session_id, pump=setup.pump_url)
    origin = datetime.datetime.now(datetime.UTC)
    try:
        with CourseHistory.open(setup.db_path) as course:
            ctx = SessionContext(
                session_id=session_id,
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
                audit_path=str(log_path),
                loop_settings=setup.loop_settings,
            )
            result = _with_progress(ctx, console, quiet=json_output)
            db_path = course.path
    except SessionAbortedError as e:
        raise fail(str(e), EXIT_ABORTED) from e
    except LimitError as e:
        raise fail(str(e), EXIT_LIMIT) from e
    except AuditWriteError as e:
        raise fail(f"{e}; the pump was told to stop", os.EX_IOERR) from e
    except TransportError as e:
        raise fail(str(e), os.EX_UNAVAILABLE) from e
    except KetapumpError as e:
        raise fail(str(e), os.EX_DATAERR) from e
    finally:
        writer.close()
    verified = verify(log_path)
    summary = result.summary() | {
        "patient": setup.patient.patient_id,
        "log": str(log_path),
        "log_verified": verified.ok,
        "course_db": str(db_path),
    }
    thresholds = result.thresholds
    plots = report.write_plots(result.points, result.events, setup.out, thresholds=thresholds)
    summary_report = report.write_report(
        summary, result.points, result.events, setup.out, plots=plots, thresholds=thresholds
    )
    machine = {
        "session_id": result.session_id,
        "outcome": result.outcome,
        "programmed_mg": result.programmed_mg,
        "delivered_mg": result.delivered_mg,
        "error_pct": summary["error_pct"],
        "alarms": result.alarms,
        "pauses": result.pauses,
        "confirmations": result.confirmations,
        "observation_min": result.observation_min,
        "discharge_confirmed": result.discharge_confirmed,
        "log": str(log_path),
        "log_verified": verified.ok,
        "course_db": str(db_path),
        "report": str(summary_report),
        "plots": [str(p) for p in plots],
    }
    if json_output:
        sys.stdout.write(json.dumps(machine) + "\n")
    else:
        _print_summary(console, result, machine)
    if result.outcome != "complete" or not verified.ok:
        raise typer.Exit(EXIT_INTERLOCK)


def _with_progress(ctx: SessionContext, console: Console, *, quiet: bool) -> SessionResult:
    columns = (TextColumn("{task.description:<12}"), BarColumn(), TextColumn("{task.fields[detail]}"))
    with Progress(*columns, console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task("precheck", total=1.0, detail="")

        def on_progress(phase: str, done: float, total: float) -> None:
            unit = "min" if phase == "observation" else "mL"
            detail = f"{done:.1f} / {total:.1f} {unit}" if total else ""
            progress.update(task, description=phase, completed=done / total if total else 0.0, detail=detail)

        ctx.on_progress = on_progress
        return asyncio.run(_run_with_signals(ctx))


#: Operator commands by signal while a session runs.
SIGNAL_ACTIONS = {
    signal.SIGINT: ("stop", "SIGINT"),
    signal.SIGTERM: ("stop", "SIGTERM"),
    signal.SIGUSR1: ("pause", "SIGUSR1"),
    signal.SIGUSR2: ("resume", "SIGUSR2"),
}


async def _run_with_signals(ctx: SessionContext) -> SessionResult:
    """Runs the session with SIGINT/SIGTERM as an operator stop, SIGUSR1 pause and SIGUSR2 resume,
    each handed to the loop at its next tick (the session then observes and records as usual)."""
    loop = asyncio.get_running_loop()
    operator = ctx.operator
    assert isinstance(operator, ScriptedOperator)
    for sig, (kind, reason) in SIGNAL_ACTIONS.items():
        loop.add_signal_handler(sig, operator.push, kind, f"operator signal {reason}")
    try:
        return await Session(ctx).run()
    finally:
        for sig in SIGNAL_ACTIONS:
            loop.remove_signal_handler(sig)


def _print_summary(console: Console, result: SessionResult, machine: dict[str, Any]) -> None:
    r = result
    lines = [
        f"[bold]session {r.outcome}[/bold]  ({r.plan.protocol}, {r.plan.weight_kg:g} kg)",
        f"  programmed {r.programmed_mg:.2f} mg, delivered {r.delivered_mg:.2f} mg "
        f"({machine['error_pct']:+.2f} %)",
        "  phases: " + ", ".join(f"{p} @ {t / 60:.1f} min" for p, t in r.phases),
        f"  observation {r.observation_min:.0f} min; alarms: {len(r.alarms)}; pauses: {len(r.pauses)}",
        f"  audit log {machine['log']} ({'verified' if machine['log_verified'] else 'VERIFY FAILED'})",
        f"  report {machine['report']}; plots: {', '.join(Path(p).name for p in machine['plots'])}",
    ]
    for line in lines:
        console.print(line, highlight=False)


def register_cli(app: typer.Typer) -> None:
    app.command()(dose)
    app.command()(demo)
    app.command()(session)


__all__ = ["register_cli"]
