"""``ketapump run``: a plain infusion on any pump, every command through the Rust kernel, recorded in the
keyed, hash-chained audit log; ``--resume`` continues a session after a crash, bound to its record: the
record must verify, and the order and the pump must be the recorded ones."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.console import Console
from rich.progress import Progress

from ketapump import _core
from ketapump.bridge import (
    LINK_LOST,
    AuditWriter,
    ControlLoop,
    InfusionPlan,
    RecoveryError,
    RunResult,
    SessionRecord,
    audit_logger,
    check_order,
    configure_diagnostics,
    control_period_s,
    default_log_path,
    make_driver,
    read_session_record,
    resume_session,
    run_kernel_config,
    syringe_diameter_mm,
)
from ketapump.cli.common import (
    AUDIT_LOG_DEFAULT,
    DEFAULT_PUMP,
    EXIT_COMPLETE,
    EXIT_INTERLOCK,
    EXIT_LINK_LOST,
    EXIT_OPERATOR_STOP,
    OPERATOR_ENV,
    OPERATOR_HELP,
    PUMP_HELP,
    Command,
    fail,
    operator_name,
    progress_console,
    result,
    result_json,
    set_diagnostic_levels,
)
from ketapump.clock import Clock, ScaledClock, VirtualClock, settled_heap
from ketapump.config import default_kernel_settings
from ketapump.errors import AuditWriteError, ConfigurationError, TransportError
from ketapump.validation import OutputPathError, check_output_path
from ketapump.wire import PumpDriver, split_url

#: Seconds between telemetry summaries in the audit log (the recovery points of a resume).
SUMMARY_EVERY_S = 10.0


def run(
    rate_ml_h: Annotated[float, typer.Option(help="Programmed rate (mL/h).")],
    volume_ml: Annotated[float, typer.Option(help="Volume to infuse (mL).")],
    pump: Annotated[str, typer.Option(help=PUMP_HELP)] = DEFAULT_PUMP,
    syringe: Annotated[str, typer.Option(help="Syringe from the catalogue.")] = "bd-plastipak-50",
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    log: Annotated[Path | None, typer.Option(help="Audit log file.", show_default=AUDIT_LOG_DEFAULT)] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the session recorded in this log.")] = None,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="Pump seconds per real second (must match a scaled hw-sim).")
    ] = 1.0,
    take_up: Annotated[
        bool, typer.Option(help="Take up lead-screw slack before the programmed rate.")
    ] = True,
    period_s: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Control period (pump s).",
            show_default="the kernel's (kernel_defaults.toml), lengthened until a tick's requests fit in "
            "real time on this transport at this time scale",
        ),
    ] = None,
    diagnostics: Annotated[
        Path | None,
        typer.Option(
            help="Library diagnostics (JSON lines), never into the audit log.", show_default="stderr"
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Trace every frame the transports send and receive in diagnostics."),
    ] = False,
    operator: Annotated[
        str | None,
        typer.Option(envvar=OPERATOR_ENV, help=OPERATOR_HELP, show_default="none: an engineering run"),
    ] = None,
) -> None:
    """Run a plain infusion on any pump and record it in a hash-chained audit log (with the operator's
    name, when given: who started it, and who stopped it).

    Exit codes: 0 complete, 3 stopped by an interlock or pump alarm, 4 stopped by the operator,
    5 link lost mid-run (state link_lost), 2 usage, 65 invalid data or a resume its record does not
    support, 69 pump unreachable, 73 the audit log cannot be created, 74 audit log unwritable.
    """
    who = operator_name(operator, required=False)
    console = progress_console()
    path = log or default_log_path()
    try:
        scheme = split_url(pump)[0]
        diameter = syringe_diameter_mm(syringe)
        defaults = default_kernel_settings()
        # sim:// runs in virtual time here: its period needs no stretching for the time scale.
        scale = 1.0 if scheme == "sim" else time_scale
        period = control_period_s(scheme, scale, period_s, float(defaults["control_period_s"]))
        clock: Clock = VirtualClock() if scheme == "sim" else ScaledClock(time_scale)
        driver = make_driver(pump, clock, period, time_scale, period_requested=period_s is not None)
        config = run_kernel_config(driver, period)
        # The order passes the kernel's checks (rate, volume, syringe) before anything is opened.
        _core.SafetyKernel(config).load(rate_ml_h, volume_ml, take_up=take_up)
        check_output_path(path, option="--log", directory=False)
    except OutputPathError as e:
        raise fail(str(e), os.EX_CANTCREAT) from e
    except ConfigurationError as e:  # no input file here: every refusal is invalid data
        raise fail(str(e), os.EX_DATAERR) from e
    for line in driver.missing_features:
        console.print(f"pump: {line}")
    if period_s is None and period != float(defaults["control_period_s"]):
        console.print(f"control period {period:g} s of pump time: one tick's round trips at {time_scale:g}×")
    plan = InfusionPlan(
        rate_ml_h=rate_ml_h, volume_ml=volume_ml, syringe_diameter_mm=diameter, take_up=take_up
    )
    recorded: SessionRecord | None = None
    if resume is not None:
        try:
            if os.path.realpath(path) == os.path.realpath(resume):
                raise RecoveryError(f"--log {path} is the record being resumed: give the new run a new file")
            recorded = read_session_record(resume)
            check_order(recorded, plan)
        except RecoveryError as e:
            raise fail(f"cannot resume: {e}", os.EX_DATAERR) from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = AuditWriter.open(path, chain_from=resume)
    except (OSError, ValueError) as e:
        raise fail(f"cannot open the audit log {path}: {e}", os.EX_IOERR) from e
    session_id = recorded.session_id if recorded is not None else uuid.uuid4().hex
    configure_diagnostics(diagnostics if diagnostics else sys.stderr)
    set_diagnostic_levels(debug)
    events = audit_logger(writer, session_id=session_id, pump=pump)
    if who is not None:
        events.info("run_operator", operator=who)
    try:
        with settled_heap():
            main = _run(driver, config, clock, events, plan, recorded, console, json_output, who)
            outcome = asyncio.run(main)
    except ConfigurationError as e:
        raise fail(str(e), os.EX_DATAERR) from e
    except RecoveryError as e:
        raise fail(f"cannot resume: {e}", os.EX_DATAERR) from e
    except AuditWriteError as e:
        raise fail(f"{e}; the pump was told to stop", os.EX_IOERR) from e
    except TransportError as e:
        raise fail(str(e), os.EX_UNAVAILABLE) from e
    finally:
        writer.close()
    summary = {
        "state": outcome.state,
        "reason": outcome.reason,
        "stop_confirmed": outcome.stop_confirmed,
        "kernel_state": outcome.kernel_state,
        "delivered_ml": outcome.delivered_ml,
        "session_delivered_ml": outcome.session_delivered_ml,
        "alarms": list(outcome.alarms),
        "pump_alarms": list(outcome.pump_alarms),
        "log": str(path),
    }
    if json_output:
        result_json(summary)
    else:
        alarms = outcome.alarms + outcome.pump_alarms
        lost = ""
        if outcome.state == LINK_LOST:
            lost = (
                "; link to the pump lost, the pump confirmed the stop"
                if outcome.stop_confirmed
                else "; link to the pump lost, its stop is NOT confirmed: check the pump"
            )
        result(
            f"{outcome.state}: delivered {outcome.session_delivered_ml:.3f} of {volume_ml:g} mL"
            + lost
            + (f"; alarms: {', '.join(alarms)}" if alarms else "")
        )
        result(f"audit log: {path}")
    code = {
        "complete": EXIT_COMPLETE,
        "interlock": EXIT_INTERLOCK,
        "pump_alarm": EXIT_INTERLOCK,
        "operator": EXIT_OPERATOR_STOP,
        "transport": EXIT_LINK_LOST,
    }[outcome.reason]
    raise typer.Exit(code)


async def _run(
    driver: PumpDriver,
    config: _core.KernelConfig,
    clock: Clock,
    events: structlog.typing.FilteringBoundLogger,
    plan: InfusionPlan,
    recorded: SessionRecord | None,
    console: Console,
    quiet: bool,
    who: str | None = None,
) -> RunResult:
    recovered = 0.0
    if recorded is not None:
        recovered = await resume_session(driver, recorded, events, summary_every_s=SUMMARY_EVERY_S)
    with Progress(console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task("infusing", total=plan.volume_ml)

        def on_tick(out: _core.StepOutput, _telemetry: object) -> None:
            progress.update(task, completed=recovered + out.delivered_ml, description=out.state)

        loop = ControlLoop(driver, config, clock, events, on_tick=on_tick, summary_every_s=SUMMARY_EVERY_S)
        signals = (signal.SIGINT, signal.SIGTERM)
        aio = asyncio.get_running_loop()
        for sig in signals:
            aio.add_signal_handler(sig, functools.partial(loop.request_stop, who=who))
        try:
            return await loop.run(plan, recovered_ml=recovered)
        finally:
            for sig in signals:
                aio.remove_signal_handler(sig)
            await driver.close()


def register_cli(app: typer.Typer) -> None:
    app.command(cls=Command)(run)


__all__ = ["register_cli"]
