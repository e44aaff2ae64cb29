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
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ketapump import audit, druglib, report
from ketapump.clock import Clock, ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings
from ketapump.course import CourseHistory
from ketapump.drivers.reference import ReferencePumpDriver
from ketapump.errors import ConfigurationError, KetapumpError
from ketapump.protocol import Patient, load_protocol, plan_dose
from ketapump.session import ScriptedOperator, Session, SessionAbortedError, SessionContext, SessionResult
from ketapump.transports import open_transport
from ketapump.transports.sim import SimTransport
from ketapump.vitals import ScriptedMonitor, demo_patient

#: The demo's patient: weight, height and the scripted monitor of ``data/patients/demo.toml``.
DEMO_PATIENT = Patient("demo-patient", weight_kg=70.0, height_cm=175.0, sex="male")
DEMO_PROTOCOL = "ketamine-depression"
#: Exit codes of the clinical commands (also in the README).
EXIT_INTERLOCK = 3
EXIT_LIMIT = 6  # refused by a hard limit, or a soft limit / course rule was not confirmed
EXIT_ABORTED = 7  # a pre-check item was not confirmed: nothing delivered


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"ketapump: {message}", err=True)
    return typer.Exit(code)


def dose(  # noqa: PLR0917 - typer declares one parameter per option
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
    hard limit, 65 invalid protocol, library or patient data, 66 protocol or library file not found.
    """
    if sex is not None and sex not in {"female", "male"}:
        raise _fail(f"--sex {sex!r}: use female or male", os.EX_USAGE)
    try:
        proto = load_protocol(protocol)
        lib = druglib.load_library(library)
        patient = Patient("dose-calculator", weight_kg, height_cm, sex)  # type: ignore[arg-type]
        plan = plan_dose(proto, patient)
        entry = lib.drug(plan.drug)
        findings = druglib.check(entry, druglib.order_for(plan, patient))
    except ConfigurationError as e:
        raise _fail(str(e), os.EX_DATAERR) from e
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
    echo("limits          " + "; ".join(result["limits"]))
    for f in result["findings"]:
        echo(f"{f['severity'].upper():<6}          {f['message']}")
    if not result["findings"]:
        echo("findings        none: within every limit")


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
    console = Console(stderr=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f"cannot create {out}: {e.strerror}", os.EX_CANTCREAT) from e
    log_path, db_path = out / "audit.jsonl", out / "course.sqlite3"
    for stale in (log_path, db_path, out / "course.sqlite3-wal", out / "course.sqlite3-shm"):
        stale.unlink(missing_ok=True)  # the demo's own files from an earlier run
    session_id = uuid.uuid4().hex
    clock: Clock = VirtualClock() if speed is None else ScaledClock(speed)
    transport = open_transport(f"sim://?syringe=bd-plastipak-50&seed={seed}", clock=clock)
    assert isinstance(transport, SimTransport)
    writer = audit.AuditWriter.open(log_path)
    events = audit.audit_logger(writer, session_id=session_id, pump="sim://", mode="demo")
    origin = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    try:
        with CourseHistory.open(db_path) as course:
            monitor = ScriptedMonitor(demo_patient())
            ctx = SessionContext(
                session_id=session_id,
                protocol=load_protocol(DEMO_PROTOCOL),
                patient=DEMO_PATIENT,
                driver=ReferencePumpDriver(transport),
                clock=clock,
                log=events,
                course=course,
                library=druglib.load_library(None),
                vitals=monitor,
                operator=ScriptedOperator(),
                calendar_origin=origin,
                audit_path=str(log_path),
                loop_settings={"control_period_s": float(default_kernel_settings()["control_period_s"])},
            )
            result = _with_progress(ctx, console, quiet=json_output)
    except (SessionAbortedError, KetapumpError) as e:
        writer.close()
        raise _fail(str(e), EXIT_ABORTED if isinstance(e, SessionAbortedError) else EXIT_LIMIT) from e
    finally:
        writer.close()
    verified = audit.verify(log_path)
    summary = result.summary() | {
        "patient": DEMO_PATIENT.patient_id,
        "log": str(log_path),
        "log_verified": verified.ok,
        "course_db": str(db_path),
    }
    plots = report.write_plots(result.points, result.events, out)
    report.write_series_csv(result.points, out / "series.csv")
    summary_report = report.write_report(summary, result.points, result.events, out)
    machine = {
        "session_id": result.session_id,
        "outcome": result.outcome,
        "programmed_mg": result.programmed_mg,
        "delivered_mg": result.delivered_mg,
        "error_pct": summary["error_pct"],
        "alarms": result.alarms,
        "pauses": result.pauses,
        "observation_min": result.observation_min,
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
        return asyncio.run(Session(ctx).run())


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


__all__ = ["register_cli"]
