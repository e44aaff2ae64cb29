"""The clinical commands of the ``ketapump`` CLI: ``dose``, ``demo`` and ``session``.

``ketapump dose`` answers "what will this protocol give this patient, and which limits apply?" without
touching a pump or a record. ``ketapump demo`` runs a complete simulated ketamine session end to end —
limits, pre-check, take-up, infusion, observation, discharge — on the built-in simulator and writes the
audit log, the course history, a report and its plots; ``ketapump session`` runs one on any pump. Both are
adapters of :mod:`ketapump.clinical.runner` and the session engine: options in, signals and the
operator's keys (:mod:`ketapump.cli.keys`) as commands, events as a live chair card on a terminal, the
outcome as a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from ketapump.cli.common import (
    AUDIT_LOG_DEFAULT,
    COURSE_DB_DEFAULT,
    DEFAULT_PUMP,
    EXIT_ABORTED,
    EXIT_INTERLOCK,
    EXIT_LIMIT,
    EXIT_USAGE,
    OPERATOR_ENV,
    OPERATOR_HELP,
    PUMP_HELP,
    Command,
    Renamed,
    command_class,
    fail,
    operator_name,
    result_json,
)
from ketapump.cli.keys import TerminalKeys, operator_keys
from ketapump.clinical import (
    CONFIRMABLE,
    DEMO_OPERATOR,
    Patient,
    ScriptedOperator,
    Session,
    SessionAbortedError,
    SessionOutcome,
    SessionResult,
    SessionRunner,
    SessionSetup,
    Sitter,
    druglib,
    load_library,
    load_protocol,
    plan_dose,
    prepare_demo,
    prepare_session,
)
from ketapump.clock import VirtualClock, settled_heap
from ketapump.console import LiveCard
from ketapump.errors import (
    AuditWriteError,
    ConfigurationError,
    CourseError,
    CourseRecordNotFoundError,
    CourseStorageError,
    KetapumpError,
    LimitError,
    TransportError,
)
from ketapump.validation import OutputPathError, input_exit_code

Sex = Literal["female", "male"]


def dose(
    protocol: Annotated[str, typer.Option(help="Protocol file, or a shipped protocol's name.")],
    weight_kg: Annotated[float, typer.Option(help="Patient's actual body weight (kg).")],
    height_cm: Annotated[
        float | None, typer.Option(help="Height (cm): needed for ideal or adjusted weight.")
    ] = None,
    sex: Annotated[Sex | None, typer.Option(help="Needed for ideal or adjusted weight.")] = None,
    library: Annotated[
        Path | None,
        typer.Option(help="Drug library file.", show_default="the shipped ketapump/data/drug_library.toml"),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
) -> None:
    """Dose calculator: mg, mL, mL/h, duration, syringe fill, and every finding of the order.

    Every check is made and every finding listed, hard ones first: the drug library's limits (weight,
    height, BMI, dosing weight, dose, rate, concentration, duration, VTBI) and the syringe's capacity
    (with its remedies); each soft finding names the KIND that `session --confirm KIND=REASON` needs.
    Exit codes: 0 allowed (soft findings need a confirmation when the session runs), 2 usage, 6 refused
    by a hard finding, 65 invalid protocol, library or patient data, 66 protocol or library file (or
    shipped protocol name) not found.
    """
    try:
        proto = load_protocol(protocol)
        lib = load_library(library)
        patient = Patient("dose-calculator", weight_kg, height_cm, sex)
        plan = plan_dose(proto, patient)
        entry = lib.drug(plan.drug)
        findings = druglib.review(entry, plan, druglib.order_for(plan, patient, entry=entry))
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
        "needs_confirmation": [f.kind for f in findings if f.severity == "soft"],
    }
    if json_output:
        result_json(result)
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
    syringes = plan["syringes_needed"]
    fits = "" if syringes == 1 else f"; needs {syringes} syringes"
    echo(
        f"syringe fill    {plan['syringe_fill_ml']:.1f} mL in {plan['syringe']} "
        f"({plan['syringe_capacity_ml']:g} mL; includes the line prime{fits})"
    )
    echo(f"limits ({plan['drug']}, drug library):")
    for kind, bounds in result["limits"].items():
        echo(f"  {kind:<28} soft {_range(bounds, 'soft')}   hard {_range(bounds, 'hard')}  {bounds['unit']}")
    for f in result["findings"]:
        confirm = f"  [confirm as {f['kind']}=REASON]" if f["severity"] == "soft" else ""
        echo(f"{f['severity'].upper():<6}          {f['message']}{confirm}")
        for remedy in f["remedies"]:
            echo(f"                  remedy: {remedy}")
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
    time_scale: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Pump seconds per real second (default: as fast as possible, in virtual time); a scale "
            "the loop cannot hold is refused, naming the largest that works.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine summary on stdout.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for the log, history, report and plots.")] = Path(
        "ketapump-demo"
    ),
    seed: Annotated[int, typer.Option(min=0, help="Seed of the simulated pump and patient monitor.")] = 0,
    operator: Annotated[
        str, typer.Option(envvar=OPERATOR_ENV, help="The name the demo's scripted nurse acts in.")
    ] = DEMO_OPERATOR,
) -> None:
    """Run a complete simulated ketamine session (0.5 mg/kg over 40 min, 70 kg) end to end.

    Everything runs in-process on the built-in simulator: the pump (hw-sim physics and firmware, through
    the same driver a real pump uses), a scripted patient monitor and a scripted nurse (nausea at minute
    25: the infusion slowed to half and an antiemetic given, the plan's rate back at minute 35). Writes to
    OUT: audit.jsonl (the hash-chained audit log), course.sqlite3 (this demo's course history, recreated
    on each run), report.md, series.csv and four PNG plots. Exit 0 when the session completes, 65 for a
    time scale the loop cannot hold (refused before anything is written).
    """
    name = operator_name(operator)
    assert name is not None
    try:
        setup = prepare_demo(out=out, seed=seed, time_scale=time_scale, operator_name=name)
    except ConfigurationError as e:
        raise fail(str(e), os.EX_DATAERR) from e
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(f"cannot create {out}: {e.strerror}", os.EX_CANTCREAT) from e
    _execute(setup, json_output=json_output)


def session(
    protocol: Annotated[str, typer.Option(help="Protocol file, or a shipped protocol's name.")],
    patient: Annotated[str, typer.Option(help="Patient id in the course history.")],
    weight_kg: Annotated[float, typer.Option(help="Actual body weight (kg).")],
    pump: Annotated[str, typer.Option(help=PUMP_HELP)] = DEFAULT_PUMP,
    height_cm: Annotated[
        float | None, typer.Option(help="Height (cm), for ideal or adjusted weight.")
    ] = None,
    sex: Annotated[Sex | None, typer.Option(help="Needed for ideal or adjusted weight.")] = None,
    vitals: Annotated[
        str, typer.Option(help="Vitals feed: 'sim' (the demo patient), 'sim:SCRIPT.toml' or 'csv:PATH'.")
    ] = "sim",
    library: Annotated[
        Path | None,
        typer.Option(help="Drug library file.", show_default="the shipped ketapump/data/drug_library.toml"),
    ] = None,
    course_db: Annotated[
        Path | None,
        typer.Option(help="Course history (SQLite).", show_default=COURSE_DB_DEFAULT),
    ] = None,
    confirm: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND=REASON", help="Confirm a soft limit or course rule with a reason (repeatable)."
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            help=(
                "Answer every checklist item yes and, off a terminal or in virtual time, confirm each "
                "syringe change of a dose of several syringes (scripted runs); without it the items are "
                "asked on stdin and such a dose stops at its first change. On a terminal in real or "
                "scaled time the session waits at each change for the key l (next syringe loaded)."
            ),
        ),
    ] = False,
    out: Annotated[Path, typer.Option(help="Directory for the report and plots.")] = Path("ketapump-session"),
    log: Annotated[Path | None, typer.Option(help="Audit log file.", show_default=AUDIT_LOG_DEFAULT)] = None,
    time_scale: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Pump seconds per real second (must match a scaled hw-sim).",
            show_default="virtual time for sim://, else 1.0",
        ),
    ] = None,
    stop_after_min: Annotated[
        float,
        typer.Option(min=0.0, help="Stop an infusion vitals out of range have kept paused this long (min)."),
    ] = 30.0,
    json_output: Annotated[bool, typer.Option("--json", help="Machine summary on stdout.")] = False,
    operator: Annotated[str | None, typer.Option(envvar=OPERATOR_ENV, help=OPERATOR_HELP)] = None,
    sitter_name: Annotated[
        str | None, typer.Option(help="Who takes the patient home (with --sitter-phone), for the discharge.")
    ] = None,
    sitter_phone: Annotated[str | None, typer.Option(help="The sitter's phone number.")] = None,
    report_forms: Annotated[
        list[str] | None,
        typer.Option(
            "--report",
            metavar="FORM",
            help="The report's form in --out: md (with the plots beside it), html (one file) or pdf; "
            "repeatable (default: md).",
        ),
    ] = None,
) -> None:
    """Run a clinical session from a protocol on any pump, recorded in the audit log and course history.

    Everything given is validated before anything is written (exit 65, every problem listed). The
    operator's name (--operator or $KETAPUMP_OPERATOR) is recorded with every action and confirmation;
    a session cannot start without it unless the protocol allows anonymous QA runs (exit 2). Checklist
    items are asked on the terminal unless --yes; a soft limit or course rule proceeds only with
    --confirm KIND=REASON (also max_duration=REASON: continue an infusion past the protocol's maximum
    duration; observation_incomplete=REASON: discharge after an observation that ended with the vitals
    out of the band). The discharge asks that the sitter given by --sitter-name and --sitter-phone is
    present (without them it is not confirmed: an alarm). While it runs on a terminal, single keys act:
    p pause, r resume, s slow, R back to the plan's rate, x stop, o observation, m medication, a
    acknowledge (each asks for a reason), l the next syringe is loaded (when the session asks). For
    scripts, SIGUSR1 pauses and SIGUSR2 resumes the infusion; SIGINT or SIGTERM stops it (the session
    still observes and records). A vitals pause ends as the protocol says (vitals.resume). Exit codes: 0
    complete, 2 usage (no operator), 3 ended early (interlock, operator, vitals, maximum duration, link),
    6 refused by a limit or an unconfirmed soft limit, 7 aborted in the pre-check (also: a checklist item
    left unanswered, as when stdin is not a terminal and --yes is not given), 65 invalid data, 66 a file
    not found, 69 pump unreachable, 74 log unwritable.
    """
    name = operator_name(operator, required=False)
    try:
        reasons = _reasons(confirm or [])
        sitter = _sitter(sitter_name, sitter_phone)
        setup = prepare_session(
            protocol=protocol,
            patient=Patient(patient, weight_kg, height_cm, sex),
            operator=ScriptedOperator(),
            pump=pump,
            vitals=vitals,
            library=library,
            course_db=course_db,
            log=log,
            out=out,
            time_scale=time_scale,
            operator_name=name,
            sitter=sitter,
            report_formats=report_forms or ["md"],
        )
    except OutputPathError as e:
        raise fail(str(e), os.EX_CANTCREAT) from e
    except ConfigurationError as e:
        if e.field == "operator":  # the protocol wants a name and none was given
            raise fail(f"--operator NAME (or ${OPERATOR_ENV}): {e}", EXIT_USAGE) from e
        raise fail(str(e), input_exit_code(e)) from e
    except CourseError as e:
        raise fail(str(e), _error_code(e)) from e
    except OSError as e:
        raise fail(str(e), os.EX_NOINPUT) from e
    checklists = setup.protocol.checklists
    sitter_items = [sitter.item] if sitter is not None and checklists.sitter else []
    # The person at the terminal resumes a vitals pause themselves (a key, SIGUSR2), unless the protocol
    # lets the session resume it: no standing resume is made in their name.
    # A syringe change is a person's act: on a terminal in real (or scaled) time the session waits for
    # their `l` key; a script confirms it in advance with --yes (virtual time gives nobody time to act).
    asked_live = TerminalKeys.available() and not isinstance(setup.clock, VirtualClock)
    setup.operator = ScriptedOperator(
        answers={} if yes else _ask_checklist(checklists.pre + checklists.discharge + sitter_items),
        reasons=reasons,
        syringe_changes=None if asked_live else yes,
        resume_after_s=None,
        stop_after_s=stop_after_min * 60.0,
    )
    _execute(setup, json_output=json_output)


def _sitter(name: str | None, phone: str | None) -> Sitter | None:
    """The sitter from --sitter-name and --sitter-phone: both or neither, each checked."""
    if name is None and phone is None:
        return None
    if name is None or phone is None:
        missing = "--sitter-name" if name is None else "--sitter-phone"
        raise ConfigurationError(missing, "is needed too: the sitter is recorded by name and phone")
    try:
        return Sitter(name, phone)
    except ValueError as e:
        field = "--sitter-phone" if str(e).startswith("sitter phone") else "--sitter-name"
        raise ConfigurationError(field, str(e)) from None


def _reasons(confirm: list[str]) -> dict[str, str]:
    reasons = {}
    for item in confirm:
        kind, sep, reason = item.partition("=")
        if not sep or not reason.strip():
            raise ConfigurationError("--confirm", f"{item!r} is not KIND=REASON with a reason")
        if kind not in CONFIRMABLE:
            raise ConfigurationError("--confirm", f"{kind!r} is not a limit kind ({', '.join(CONFIRMABLE)})")
        reasons[kind] = reason.strip()
    return reasons


def _ask_checklist(items: list[str]) -> dict[str, bool]:
    """The terminal operator: every checklist item asked up front, before anything is written or the
    pump touched. An item left unanswered (stdin closed or not a terminal, or Ctrl-C at the prompt)
    aborts the pre-check (exit 7) with nothing written."""
    answers = {}
    for item in dict.fromkeys(items):
        try:
            answers[item] = typer.confirm(f"confirm: {item}?", default=False, err=True)
        except (typer.Abort, RuntimeError) as e:  # EOF or Ctrl-C; no stdin at all (lost sys.stdin)
            typer.echo(err=True)  # end the prompt's line
            interactive = sys.stdin is not None and sys.stdin.isatty()
            how = "the prompt was interrupted" if interactive else "stdin is not a terminal"
            raise fail(
                f"checklist item not answered: {item} ({how}; answer each item, or pass --yes to confirm "
                "them all in a scripted run); nothing was delivered",
                EXIT_ABORTED,
            ) from e
    return answers


def _execute(setup: SessionSetup, *, json_output: bool) -> None:
    """Opens the records, runs the session with its live card and the operator's signals, prints the
    summary (stdout) and exits with the session's code. Whatever ends the session, its summary is printed
    and its report written; the signal handlers stay in place until then, so no signal skips either."""
    console = Console(stderr=True)
    with _OperatorSignals() as signals:
        try:
            runner = SessionRunner.open(setup)
        except CourseError as e:
            raise fail(str(e), _error_code(e)) from e
        except (OSError, ValueError) as e:
            raise fail(f"cannot open the audit log {setup.log_path}: {e}", os.EX_IOERR) from e
        signals.attach(runner.session)
        with settled_heap():
            outcome = asyncio.run(_run_live(runner, console, quiet=json_output))
        machine = outcome.summary()
        if json_output:
            result_json(machine)
        else:
            _print_summary(outcome.result, machine)
        if signals.ignored:
            console.print(f"ignored after the session ended: {', '.join(signals.ignored)}", highlight=False)
    error = outcome.error
    if error is not None:
        message = f"{error}; the pump was told to stop" if isinstance(error, AuditWriteError) else str(error)
        if isinstance(error, CourseStorageError):
            message += "; the pump was stopped and the session ended (the audit log and report hold it)"
        raise fail(message, _error_code(error))
    if not outcome.complete:
        raise typer.Exit(EXIT_INTERLOCK)


def _error_code(error: Exception) -> int:
    """The documented exit code of what ended a session early (README, ``session`` exit codes)."""
    codes: list[tuple[type[Exception], int]] = [
        (SessionAbortedError, EXIT_ABORTED),
        (LimitError, EXIT_LIMIT),
        (AuditWriteError, os.EX_IOERR),
        (CourseRecordNotFoundError, os.EX_NOINPUT),
        (CourseStorageError, os.EX_IOERR),
        (TransportError, os.EX_UNAVAILABLE),
        (KetapumpError, os.EX_DATAERR),
    ]
    return next((code for kind, code in codes if isinstance(error, kind)), os.EX_SOFTWARE)


#: Operator commands by signal while a session runs.
SIGNAL_ACTIONS = {
    signal.SIGINT: ("stop", "SIGINT"),
    signal.SIGTERM: ("stop", "SIGTERM"),
    signal.SIGUSR1: ("pause", "SIGUSR1"),
    signal.SIGUSR2: ("resume", "SIGUSR2"),
}


class _OperatorSignals:
    """The operator's signals as session commands, installed before the records open and kept until
    the summary is printed: a signal is a command the session records and carries out or refuses (a
    second stop, a stop during the observation), never an interruption of the process. Before the
    session exists, or after it ended, a signal is noted and ignored."""

    def __init__(self) -> None:
        self._session: Session | None = None
        self._previous: dict[int, Any] = {}
        #: Signals that arrived when there was no running session to give them to.
        self.ignored: list[str] = []

    def attach(self, session: Session) -> None:
        self._session = session

    def _handle(self, signum: int, _frame: object) -> None:
        action, name = SIGNAL_ACTIONS[signal.Signals(signum)]
        session = self._session
        if session is None or session.outcome is not None:
            self.ignored.append(name)
            return
        session.command(action, f"operator signal {name}", source="signal")

    def __enter__(self) -> _OperatorSignals:
        for sig in SIGNAL_ACTIONS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


async def _run_live(runner: SessionRunner, console: Console, *, quiet: bool) -> SessionOutcome:
    """Runs the session with its chair card drawn live on a terminal (the card ``ketapump console``
    draws) and the operator's keys under it (each a command the session carries out at its next tick)."""
    session = runner.session
    live = LiveCard(runner, console) if console.is_terminal and not quiet else None
    with live or contextlib.nullcontext():
        redraw = live.redraw if live is not None else lambda: None
        with operator_keys(session, asyncio.get_running_loop(), runner.setup.operator_name, redraw) as keys:
            if live is not None and keys is not None:
                live.footer = lambda: (keys.message, keys.prompt)
                redraw()
            return await runner.run()


def _print_summary(result: SessionResult, machine: dict[str, Any]) -> None:
    """The session's result on stdout (the progress went to stderr)."""
    console = Console()
    r = result
    lines = [
        f"[bold]session {r.outcome}[/bold]  ({r.plan.protocol}, {r.plan.weight_kg:g} kg)",
        f"  programmed {r.programmed_mg:.2f} mg, delivered {r.delivered_mg:.2f} mg "
        f"({machine['error_pct']:+.2f} %)",
        "  phases: " + ", ".join(f"{p} @ {t / 60:.1f} min" for p, t in r.phases),
        f"  operator {r.operator or '(anonymous QA run)'}; actions: {len(r.actions)}; observations: "
        f"{len(r.observations)}; medications: {len(r.medications)}",
        f"  observation {r.observation_min:.0f} min; alarms: {len(r.alarms)}; pauses: {len(r.pauses)}",
        f"  audit log {machine['log']} ({'verified' if machine['log_verified'] else 'VERIFY FAILED'})",
        f"  report {machine['report']}; plots: {', '.join(Path(p).name for p in machine['plots'])}",
    ]
    for line in lines:
        console.print(line, highlight=False)


def register_cli(app: typer.Typer) -> None:
    app.command(cls=Command)(dose)
    app.command(cls=command_class(Renamed("--speed", "--time-scale")))(demo)
    app.command(cls=Command)(session)


__all__ = ["register_cli"]
