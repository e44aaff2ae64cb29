"""The ``ketapump`` command line."""

from __future__ import annotations

import asyncio
import json
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
from ketapump.bridge import audit
from ketapump.bridge.loop import (
    ControlLoop,
    InfusionPlan,
    NullLog,
    RecoveryError,
    RunResult,
    recover_delivered_ml,
)
from ketapump.bridge.runtime import control_period_s, default_log_path, loop_settings, make_driver
from ketapump.cli import clinical
from ketapump.clinical import course
from ketapump.clock import Clock, ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import AuditWriteError, ConfigurationError, TransportError
from ketapump.qa import accuracy, campaign, occlusion, trace
from ketapump.qa.balance import BalanceReplyError, SicsBalance
from ketapump.sim.scenario import Scenario, load_scenario
from ketapump.sim.server import SimServer
from ketapump.validation import input_exit_code
from ketapump.wire.drivers.base import PumpDriver
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport, split_url
from ketapump.wire.transports.sim import SimTransport

app = typer.Typer(
    name="ketapump",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Infusion-pump control bridge (engineering software, not a certified medical device).",
)


#: Seconds between telemetry summaries in the audit log (the recovery points of a resume).
SUMMARY_EVERY_S = 10.0

#: Exit codes of ``ketapump run`` (documented in the README).
EXIT_COMPLETE = 0
EXIT_INTERLOCK = 3  # stopped by a kernel interlock or a pump-side alarm
EXIT_OPERATOR_STOP = 4  # stopped by the operator (SIGINT/SIGTERM)
EXIT_TRANSPORT_LOST = 5  # the link to the pump was lost mid-run (the pump was told to stop)


@app.callback()
def _root() -> None:
    """Infusion-pump control bridge (engineering software, not a certified medical device)."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"ketapump: {message}", err=True)
    return typer.Exit(code)


@app.command()
def sim(
    modbus_tcp: Annotated[bool, typer.Option(help="Serve Modbus TCP.")] = True,
    modbus_rtu: Annotated[bool, typer.Option(help="Serve Modbus RTU on a PTY.")] = True,
    nesp: Annotated[bool, typer.Option(help="Serve New Era ASCII on a PTY.")] = True,
    tcp_port: Annotated[int, typer.Option(min=0, max=65535, help="Modbus TCP port (0 = ephemeral).")] = 0,
    bind: Annotated[str, typer.Option(help="Address to bind Modbus TCP to.")] = "127.0.0.1",
    syringe: Annotated[str | None, typer.Option(help="Syringe from the catalogue.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Noise seed.")] = None,
    time_scale: Annotated[float, typer.Option(min=0.001, help="Pump seconds per real second.")] = 1.0,
    scenario: Annotated[Path | None, typer.Option(help="Scenario file (TOML): pump build, faults.")] = None,
    baud: Annotated[int, typer.Option(min=300, help="Serial baud rate the PTYs are paced at.")] = 19_200,
) -> None:
    """Run a simulated pump until SIGINT/SIGTERM.

    Prints one JSON line naming the endpoints (keys modbus_tcp, modbus_rtu_pty, nesp_pty; null when not
    served). Modbus unit id 1, New Era address 0. Exit codes: 65 invalid scenario or option, 66 scenario
    file not found.
    """
    try:
        plan = load_scenario(scenario) if scenario else Scenario(schema_version=1)
        overrides = {k: v for k, v in {"syringe": syringe, "seed": seed}.items() if v is not None}
        if overrides:
            # Validated like the file itself (model_copy alone would not check the new values).
            plan = Scenario.model_validate(plan.model_dump() | {"pump": plan.pump.model_dump() | overrides})
        pump = plan.build_pump()
    except ConfigurationError as e:
        raise _fail(str(e), input_exit_code(e)) from e
    except ValueError as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    asyncio.run(_serve(pump, time_scale, modbus_tcp, tcp_port, bind, modbus_rtu, nesp, baud))


async def _serve(
    pump: _core.SimPump,
    time_scale: float,
    modbus_tcp: bool,
    tcp_port: int,
    bind: str,
    rtu: bool,
    nesp: bool,
    baud: int,
) -> None:
    server = SimServer(pump, ScaledClock(time_scale), baud=baud)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        endpoints = await server.start(
            modbus_tcp=modbus_tcp, tcp_port=tcp_port, bind=bind, modbus_rtu=rtu, nesp=nesp
        )
    except OSError as e:
        await server.stop()
        raise _fail(f"cannot serve: {e}", os.EX_UNAVAILABLE) from e
    sys.stdout.write(json.dumps(endpoints) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def session_of(record: Path) -> str:
    """The session id of an earlier run's audit record (a resumed run continues the same session)."""
    with record.open(encoding="utf-8") as f:
        for line in f:
            session = json.loads(line).get("session_id")
            if session:
                return str(session)
    raise ValueError("it names no session_id")


def syringe_diameter_mm(name: str) -> float:
    for entry, _capacity, diameter in _core.SimPump.catalogue():
        if entry == name:
            return diameter
    known = ", ".join(entry for entry, _, _ in _core.SimPump.catalogue())
    raise ConfigurationError("syringe", f"{name!r} is not in the catalogue ({known})")


@app.command()
def run(
    pump: Annotated[str, typer.Option(help="Pump URL: sim://, modbus-tcp://, modbus-rtu://, nesp://.")],
    rate_ml_h: Annotated[float, typer.Option(help="Programmed rate (mL/h).")],
    volume_ml: Annotated[float, typer.Option(help="Volume to infuse (mL).")],
    syringe: Annotated[str, typer.Option(help="Syringe from the catalogue.")] = "bd-plastipak-50",
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    log: Annotated[Path | None, typer.Option(help="Audit log file (default: see README).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the session recorded in this log.")] = None,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="Pump seconds per real second (must match a scaled hw-sim).")
    ] = 1.0,
    take_up: Annotated[
        bool, typer.Option(help="Take up lead-screw slack before the programmed rate.")
    ] = True,
    period_s: Annotated[
        float | None, typer.Option(min=0.001, help="Control period (pump s); default suits the transport.")
    ] = None,
    diagnostics: Annotated[
        Path | None,
        typer.Option(help="Library diagnostics (JSON lines); default stderr, never the audit log."),
    ] = None,
) -> None:
    """Run a plain infusion on any pump and record it in a hash-chained audit log.

    Exit codes: 0 complete, 3 stopped by an interlock or pump alarm, 4 stopped by the operator,
    5 link lost mid-run, 2 usage, 65 invalid data, 69 pump unreachable, 74 audit log unwritable.
    """
    console = Console(stderr=True)
    try:
        scheme = split_url(pump)[0]
        diameter = syringe_diameter_mm(syringe)
        defaults = default_kernel_settings()
        period = control_period_s(scheme, time_scale, period_s, float(defaults["control_period_s"]))
        clock: Clock = VirtualClock() if scheme == "sim" else ScaledClock(time_scale)
        driver = make_driver(pump, clock, period, time_scale)
        # A pump without a pressure sensor (New Era) leaves the kernel on stall and volume checks.
        sensor = "pressure_mmhg" not in driver.lacks
        config = kernel_config(**loop_settings(period, defaults), has_pressure_sensor=sensor)
    except ConfigurationError as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    path = log or default_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = audit.AuditWriter.open(path, chain_from=resume)
    except (OSError, ValueError) as e:
        raise _fail(f"cannot open the audit log {path}: {e}", os.EX_IOERR) from e
    try:
        session_id = session_of(resume) if resume else uuid.uuid4().hex
    except (OSError, ValueError) as e:
        writer.close()
        raise _fail(f"cannot read the session record {resume}: {e}", os.EX_DATAERR) from e
    audit.configure_diagnostics(diagnostics if diagnostics else sys.stderr)
    events = audit.audit_logger(writer, session_id=session_id, pump=pump)
    plan = InfusionPlan(
        rate_ml_h=rate_ml_h, volume_ml=volume_ml, syringe_diameter_mm=diameter, take_up=take_up
    )
    try:
        result = asyncio.run(_run(driver, config, clock, events, plan, resume, console, json_output))
    except ConfigurationError as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    except RecoveryError as e:
        raise _fail(f"cannot resume: {e}", os.EX_DATAERR) from e
    except AuditWriteError as e:
        raise _fail(f"{e}; the pump was told to stop", os.EX_IOERR) from e
    except TransportError as e:
        raise _fail(str(e), os.EX_UNAVAILABLE) from e
    finally:
        writer.close()
    summary = {
        "state": result.state,
        "reason": result.reason,
        "delivered_ml": result.delivered_ml,
        "session_delivered_ml": result.session_delivered_ml,
        "alarms": list(result.alarms),
        "pump_alarms": list(result.pump_alarms),
        "log": str(path),
    }
    if json_output:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        console.print(
            f"{result.state}: delivered {result.session_delivered_ml:.3f} of {volume_ml:g} mL"
            + (
                f"; alarms: {', '.join(result.alarms + result.pump_alarms)}"
                if result.alarms or result.pump_alarms
                else ""
            )
            + f"\naudit log: {path}"
        )
    code = {
        "complete": EXIT_COMPLETE,
        "interlock": EXIT_INTERLOCK,
        "pump_alarm": EXIT_INTERLOCK,
        "operator": EXIT_OPERATOR_STOP,
        "transport": EXIT_TRANSPORT_LOST,
    }[result.reason]
    raise typer.Exit(code)


async def _run(
    driver: PumpDriver,
    config: _core.KernelConfig,
    clock: Clock,
    events: structlog.typing.FilteringBoundLogger,
    plan: InfusionPlan,
    resume: Path | None,
    console: Console,
    quiet: bool,
) -> RunResult:

    recovered = 0.0
    if resume is not None:
        await driver.connect()
        telemetry = await driver.read_telemetry()
        recovered = recover_delivered_ml(
            resume,
            telemetry.infused_ml,
            telemetry.pump_alarms,
            # Between the last summary and the watchdog's stop, the pump ran at most at the ceiling.
            rate_ml_h=float(default_kernel_settings()["max_rate_ml_h"]),
            slack_s=SUMMARY_EVERY_S + 10.0,
        )
        events.info(
            "session_recovered",
            from_log=str(resume),
            recovered_ml=recovered,
            pump_infused_ml=telemetry.infused_ml,
        )
        unexpected = telemetry.pump_alarms - {"watchdog"}
        if unexpected:
            raise RecoveryError(
                f"the pump latched {', '.join(sorted(unexpected))}: resolve it before resuming"
            )
        if telemetry.pump_alarms:
            # Resuming is the operator's explicit decision: it acknowledges the watchdog alarm the pump
            # latched when the previous run died, and the record says so.
            await driver.acknowledge_alarm()
            events.info("pump_alarm_acknowledged", pump_alarms=sorted(telemetry.pump_alarms), why="resume")
    with Progress(console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task("infusing", total=plan.volume_ml)

        def on_tick(out: _core.StepOutput, _telemetry: object) -> None:
            progress.update(task, completed=recovered + out.delivered_ml, description=out.state)

        loop = ControlLoop(driver, config, clock, events, on_tick=on_tick, summary_every_s=SUMMARY_EVERY_S)
        signals = (signal.SIGINT, signal.SIGTERM)
        aio = asyncio.get_running_loop()
        for sig in signals:
            aio.add_signal_handler(sig, loop.request_stop)
        try:
            return await loop.run(plan, recovered_ml=recovered)
        finally:
            for sig in signals:
                aio.remove_signal_handler(sig)
            await driver.close()


audit.register_cli(app)
course.register_cli(app)
clinical.register_cli(app)

qa_app = typer.Typer(no_args_is_help=True, help="QA tools: IEC 60601-2-24 style tests.")
app.add_typer(qa_app, name="qa")
campaign.register_cli(qa_app)


@qa_app.command("accuracy")
def qa_accuracy(
    rate: Annotated[float, typer.Option(help="Set rate (mL/h).")],
    pump: Annotated[
        str | None, typer.Option(help="Pump URL to run (sim:// for the simulator's balance).")
    ] = None,
    syringe: Annotated[str, typer.Option(help="Syringe from the catalogue.")] = "bd-plastipak-50",
    duration: Annotated[
        str, typer.Option(help="Test period T, e.g. 120m; the second half is analysed.")
    ] = "120m",
    balance: Annotated[
        str,
        typer.Option(
            help="'sim' (the simulator's balance), 'csv:PATH' (t_s,grams) or 'sics:PORT[?baud=9600]' "
            "(an MT-SICS laboratory balance on a serial port, read every 30 s)."
        ),
    ] = "sim",
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for the report and plots.")] = Path("accuracy-report"),
) -> None:
    """Gravimetric accuracy (mean error A, trumpet Ep(max)/Ep(min)) against S1 and S2.

    With --balance sim the pump (sim://) is run through the bridge for the whole period; with
    --balance sics:PORT any pump is run and a serial balance weighed every 30 s; with --balance
    csv:PATH an existing recording is analysed. A period the syringe cannot hold is refused (exit 65).
    Exit codes: 0 analysed (the verdict is in the report), 65 invalid data, 66 no such file, 69 pump or
    balance unreachable, 76 the balance answered with an error or garbled bytes.
    """
    try:
        duration_min = float(duration.removesuffix("m"))
        if not duration_min > 0:
            raise ValueError("must be positive")
    except ValueError as e:
        raise _fail(f"--duration {duration!r}: {e}", os.EX_USAGE) from e
    try:
        if balance == "sim":
            if not pump or split_url(pump)[0] != "sim":
                raise ConfigurationError(
                    "balance", "'sim' needs --pump sim://… (the simulator's own balance)"
                )
            readings = asyncio.run(_accuracy_run(pump, rate, syringe, duration_min))
        elif balance.startswith("sics:"):
            if not pump:
                raise ConfigurationError("pump", "--balance sics:PORT needs the --pump to run")
            scale = SicsBalance.from_spec(balance.removeprefix("sics:"))
            readings = asyncio.run(_accuracy_run(pump, rate, syringe, duration_min, scale))
        elif balance.startswith("csv:"):
            readings = accuracy.readings_from_csv(Path(balance.removeprefix("csv:")))
        else:
            raise ConfigurationError("balance", f"{balance!r} is not 'sim', 'csv:PATH' or 'sics:PORT'")
        result = accuracy.analyse(readings, rate_ml_h=rate, duration_min=duration_min)
    except BalanceReplyError as e:
        raise _fail(str(e), os.EX_PROTOCOL) from e
    except TransportError as e:
        raise _fail(str(e), os.EX_UNAVAILABLE) from e
    except (ConfigurationError, ValueError) as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    except OSError as e:
        raise _fail(str(e), os.EX_NOINPUT) from e
    verdict = accuracy.verdict(result, rate)
    plots = accuracy.plot(result, rate, out, duration_min / 2)
    report = {
        "rate_ml_h": rate,
        "duration_min": duration_min,
        "mean_error_pct": result.mean_error_pct,
        "ep": {f"{p:g}": {"max": hi, "min": lo} for p, (hi, lo) in result.ep.items()},
        "s1_met": verdict.s1_mean_error,
        "s2_met": verdict.s2_trumpet,
        "plots": [str(p) for p in plots],
    }
    (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if json_output:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        typer.echo(
            f"A = {result.mean_error_pct:+.2f} %  (S1 {'met' if verdict.s1_mean_error else 'MISSED'})",
            err=True,
        )
        for p, (hi, lo) in result.ep.items():
            typer.echo(f"P = {p:>4g} min: Ep(max) {hi:+7.2f} %  Ep(min) {lo:+7.2f} %", err=True)
        typer.echo(f"S2 {'met' if verdict.s2_trumpet else 'MISSED'}; report and plots in {out}", err=True)


@qa_app.command("occlusion")
def qa_occlusion(
    pump: Annotated[str, typer.Option(help="Pump URL (sim:// closes the line by the simulator's fault).")],
    rate: Annotated[float, typer.Option(help="Set rate (mL/h).")],
    threshold: Annotated[float, typer.Option(help="Occlusion pressure threshold (mmHg).")] = 300.0,
    syringe: Annotated[str, typer.Option(help="Syringe from the catalogue.")] = "bd-plastipak-50",
    slope: Annotated[
        bool, typer.Option(help="Slope/model detectors on; --no-slope times the threshold alone.")
    ] = True,
    compliance: Annotated[
        float | None,
        typer.Option(
            min=1e-6,
            help="Plant compliance C (mL/mmHg) of the S5 bound; default: the simulator's nominal plant "
            "for sim://, the kernel's worst-case setting otherwise.",
        ),
    ] = None,
    settle: Annotated[float, typer.Option(min=0.0, help="Running time before the line is closed (s).")] = (
        occlusion.SETTLE_S
    ),
    release: Annotated[
        float, typer.Option(min=1.0, help="Free flow collected after opening, motor stopped (s).")
    ] = occlusion.RELEASE_S,
    balance: Annotated[
        str | None,
        typer.Option(help="For a real pump: 'sics:PORT' weighs the bolus (else it is not measured)."),
    ] = None,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="Pump seconds per real second (must match a scaled hw-sim).")
    ] = 1.0,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for the report and plot.")] = Path("occlusion-report"),
) -> None:
    """Occlusion test: time and pressure at alarm, automatic back-off, released bolus, against S5/S6.

    With sim:// the simulator closes and opens the line and measures the bolus; with a real pump the
    operator is asked (stderr) to close and open the clamp and presses Enter as they do. Exit codes:
    0 tested (the verdict is in the report), 65 invalid settings or a run that cannot be judged (e.g.
    an alarm before the line was closed), 69 pump or balance unreachable, 76 balance reply error.
    """
    try:
        scheme = split_url(pump)[0]
        if scheme == "sim":
            if balance is not None:
                raise ConfigurationError("balance", "sim:// measures the bolus itself")
            record = asyncio.run(
                occlusion.run_simulated(
                    open_sim_pump(sim_url_with_syringe(pump, syringe)),
                    rate_ml_h=rate,
                    threshold_mmhg=threshold,
                    slope_detector=slope,
                    syringe=syringe,
                    compliance_ml_per_mmhg=compliance or occlusion.SIM_COMPLIANCE_ML_PER_MMHG,
                    settle_s=settle,
                    release_s=release,
                )
            )
        else:
            if balance and not balance.startswith("sics:"):
                raise ConfigurationError("balance", f"{balance!r} is not 'sics:PORT'")
            scale = SicsBalance.from_spec(balance.removeprefix("sics:")) if balance else None
            record = asyncio.run(
                _occlusion_run(
                    pump, rate, threshold, slope, syringe, compliance, settle, release, scale, time_scale
                )
            )
        result = occlusion.analyse(record)
    except occlusion.OcclusionTestError as e:
        raise _fail(f"the occlusion test cannot be judged: {e}", os.EX_DATAERR) from e
    except BalanceReplyError as e:
        raise _fail(str(e), os.EX_PROTOCOL) from e
    except TransportError as e:
        raise _fail(str(e), os.EX_UNAVAILABLE) from e
    except (ConfigurationError, ValueError) as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    plot = occlusion.plot(record, result, out)
    summary = occlusion.report(record, result) | {"plot": str(plot)}
    (out / "occlusion.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if json_output:
        sys.stdout.write(json.dumps(summary) + "\n")
        return

    def met(ok: bool | None) -> str:
        return "not measured" if ok is None else "met" if ok else "MISSED"

    typer.echo(
        f"alarm ({', '.join(record.first_alarms)}) {result.time_to_alarm_s:.1f} s after closing at "
        f"{result.pressure_at_alarm_mmhg:.0f} mmHg (P0 {result.p0_mmhg:.0f} mmHg); S5 bound "
        f"{result.bound_s:.1f} s: {met(result.s5_met)}",
        err=True,
    )
    bolus = "not measured" if result.bolus_ml is None else f"{result.bolus_ml:.3f} mL"
    typer.echo(
        f"released bolus {bolus}: S6 (≤ {occlusion.S6_HARD_ML} mL) {met(result.s6_met)}, goal "
        f"(≤ {occlusion.S6_GOAL_ML} mL) {met(result.s6_goal_met)}; report and plot in {out}",
        err=True,
    )


def open_sim_pump(url: str) -> _core.SimPump:
    """The simulated pump a ``sim://`` URL describes (its parameters checked as for any run)."""
    transport = open_transport(url)
    assert isinstance(transport, SimTransport)
    return transport.pump


async def _occlusion_run(
    url: str,
    rate: float,
    threshold: float,
    slope: bool,
    syringe: str,
    compliance: float | None,
    settle_s: float,
    release_s: float,
    balance: SicsBalance | None,
    time_scale: float,
) -> occlusion.OcclusionRecord:
    """The occlusion test on a real pump (or a hw-sim process): the operator handles the clamp."""
    capacity, diameter = syringe_spec(syringe)
    defaults = default_kernel_settings()
    scheme = split_url(url)[0]
    period = control_period_s(scheme, time_scale, None, float(defaults["control_period_s"]))
    clock = ScaledClock(time_scale)
    driver = make_driver(url, clock, period, time_scale)
    if "pressure_mmhg" in driver.lacks:
        raise ConfigurationError("pump", f"{url} measures no line pressure: the occlusion test needs it")
    config = kernel_config(
        **loop_settings(period, defaults),
        syringe_diameter_mm=diameter,
        syringe_capacity_ml=capacity,
        syringe_fill_ml=capacity,
        **occlusion.occlusion_settings(threshold, slope),
    )
    c = compliance or float(defaults["compliance_ml_per_mmhg"])
    setup = occlusion.OcclusionSetup(
        rate_ml_h=rate,
        threshold_mmhg=threshold,
        slope_detector=slope,
        compliance_ml_per_mmhg=c,
        syringe_diameter_mm=diameter,
        volume_ml=min(capacity, occlusion.dose_for(rate, threshold, c, settle_s)),
        settle_s=settle_s,
        release_s=release_s,
    )
    meter = None
    if balance is not None:
        balance.open()
        scale = balance

        async def meter() -> float:
            return await asyncio.to_thread(scale.grams)  # water: 1 g per mL

    try:
        return await occlusion.run_occlusion(
            driver, clock, config, setup, occlusion.OperatorLine(), meter=meter
        )
    finally:
        await driver.close()
        if balance is not None:
            balance.close()


@qa_app.command("trace")
def qa_trace(
    register: Annotated[Path, typer.Option(help="Hazard register (TOML).")] = Path(
        "docs/safety/hazards.toml"
    ),
    root: Annotated[Path, typer.Option(help="Repository root the test ids are relative to.")] = Path(),
) -> None:
    """Print the hazard → control → requirement → test matrix; exit 65 if the chain is broken."""
    try:
        data = trace.load(register)
    except OSError as e:
        raise _fail(f"{register}: {e.strerror}", os.EX_NOINPUT) from e
    for hazard, control, requirement, test in trace.matrix(data):
        typer.echo(f"{hazard:<18} {control:<24} {requirement:<11} {test}")
    problems = trace.check(data, root)
    for problem in problems:
        typer.echo(f"{register}: {problem}", err=True)
    if problems:
        raise typer.Exit(os.EX_DATAERR)


def syringe_spec(name: str) -> tuple[float, float]:
    """``(capacity_ml, inner_diameter_mm)`` of a catalogue syringe."""
    for entry, capacity, diameter in _core.SimPump.catalogue():
        if entry == name:
            return capacity, diameter
    syringe_diameter_mm(name)  # raises, naming the catalogue
    raise AssertionError


def sim_url_with_syringe(url: str, syringe: str) -> str:
    """A ``sim://`` URL that builds the simulated pump with the test's syringe (a URL naming another
    syringe is refused: the run and the pump would disagree on its size)."""
    named = split_url(url)[2].get("syringe")
    if named is None:
        return f"{url}{'&' if '?' in url else '?'}syringe={syringe}"
    if named != syringe:
        raise ConfigurationError("syringe", f"--syringe {syringe} but the pump URL names {named}")
    return url


async def _accuracy_run(
    url: str, rate: float, syringe: str, duration_min: float, balance: SicsBalance | None = None
) -> list[tuple[float, float]]:
    """Runs the pump through the bridge for the period (plus one sample); returns the balance
    readings: the simulator's own, or those of ``balance`` read every 30 s of the pump's clock."""
    capacity, diameter = syringe_spec(syringe)
    volume = accuracy.check_period_fits(rate, duration_min, syringe, capacity)
    # The syringe is filled to its capacity (as the simulator fills it).
    syringe_settings = {
        "syringe_diameter_mm": diameter,
        "syringe_capacity_ml": capacity,
        "syringe_fill_ml": capacity,
    }
    plan = InfusionPlan(rate_ml_h=rate, volume_ml=volume, syringe_diameter_mm=diameter)
    scheme = split_url(url)[0]
    clock: Clock
    if scheme == "sim":
        clock = VirtualClock()
        transport = open_transport(sim_url_with_syringe(url, syringe), clock=clock)
        assert isinstance(transport, SimTransport)
        driver: PumpDriver = ReferencePumpDriver(transport)
        config = kernel_config(**syringe_settings)
        if balance is None:
            result = await ControlLoop(driver, config, clock, NullLog()).run(plan)
            if result.state != "complete":
                raise ConfigurationError("pump", f"the run ended {result.state} ({', '.join(result.alarms)})")
            # The balance weighs to the end of the period, as a rig's would: at 1 mL/h the take-up leaves
            # ~5 s of the 30 s margin, and the kernel ends the dose ~6 s early by the drive's release.
            transport.pump.advance_to(max(transport.pump.t_s, duration_min * 60.0))
            return transport.pump.balance_readings()
    else:
        if balance is None:
            raise ConfigurationError("balance", "'sim' needs --pump sim://… (the simulator's own balance)")
        defaults = default_kernel_settings()
        period = control_period_s(scheme, 1.0, None, float(defaults["control_period_s"]))
        clock = ScaledClock(1.0)
        driver = make_driver(url, clock, period, 1.0)
        sensor = "pressure_mmhg" not in driver.lacks
        config = kernel_config(
            **loop_settings(period, defaults), has_pressure_sensor=sensor, **syringe_settings
        )
    with balance:
        try:
            return await accuracy.record_period(driver, clock, config, plan, balance.grams)
        finally:
            await driver.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
