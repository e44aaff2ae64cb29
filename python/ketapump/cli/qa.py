"""``ketapump qa``: the IEC 60601-2-24 style accuracy and occlusion tests, seeded fault campaigns and the
hazard register's traceability check. Adapters only: the tests themselves live in :mod:`ketapump.qa`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ketapump import _core
from ketapump.cli.common import fail
from ketapump.errors import ConfigurationError, TransportError
from ketapump.qa import accuracy, campaign, occlusion, rig, trace
from ketapump.qa import balance as balances
from ketapump.validation import input_exit_code
from ketapump.wire import split_url

qa_app = typer.Typer(no_args_is_help=True, help="QA tools: IEC 60601-2-24 style tests.")


@qa_app.command("campaign")
def qa_campaign(
    spec: Annotated[
        str | None,
        typer.Argument(help="Spec file (TOML) or shipped name (e.g. 'default'); not with a replay file."),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Number of runs (seeds BASE … BASE+N−1).")] = 1_000,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 1,
    dask: Annotated[
        str | None, typer.Option(help="Dask scheduler address (tcp://HOST:8786): run there instead.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="First seed (BASE).")] = 0,
    replay_from: Annotated[
        str | None,
        typer.Option("--replay", help="A SEED to run again with SPEC, or a failing-seeds.json record."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for summary.json and failing-seeds.json.")] = Path(
        "campaign-report"
    ),
) -> None:
    """Seeded fault campaign: randomized closed-loop runs (kernel + hw-sim plant, in Rust) checked
    against S3 (overdose, cap, fault-free accuracy), S5 (missed occlusion) and S7 (latched alarms).

    Exit codes: 0 no violation, 1 violations found (seeds written to OUT/failing-seeds.json),
    2 usage, 65 invalid spec or record, 66 spec not found, 69 Dask unavailable, 70 a campaign.replay differs
    from its record.
    """
    if replay_from is not None and not replay_from.isdigit():
        _replay_file(Path(replay_from), spec, json_output)
        return
    if spec is None:
        raise fail(
            "SPEC is required (a file or a shipped name: " + ", ".join(campaign.shipped_specs()) + ")", 2
        )
    try:
        spec_, config = campaign.load_spec(spec)
    except campaign.CampaignSpecError as e:
        raise fail(str(e), input_exit_code(e)) from e
    if replay_from is not None:
        _replay_seed(spec_, config, int(replay_from), json_output)
        return
    seeds = list(range(seed, seed + runs))
    try:
        result = campaign.run_campaign(spec_, config, seeds, workers=workers, dask_address=dask)
    except ImportError as e:
        message = f"--dask needs the 'distributed' package (pip install 'ketapump[dask]'): {e}"
        raise fail(message, os.EX_UNAVAILABLE) from e
    except (OSError, TimeoutError) as e:
        raise fail(f"cannot reach the Dask scheduler {dask}: {e}", os.EX_UNAVAILABLE) from e
    report = campaign.summary(result, spec, seed)
    failing_path = out / "failing-seeds.json"
    campaign.write_record(failing_path, campaign.replay_record(spec_, config, result.failing()))
    report["failing_seeds"] = str(failing_path)
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if json_output:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print_summary(report)
    if result.violations:
        raise typer.Exit(campaign.EXIT_VIOLATIONS)


def _print_summary(report: dict[str, Any]) -> None:
    typer.echo(
        f"{report['runs']} runs ({report['backend']}) in {report['seconds']:.1f} s: "
        f"{report['runs_per_s']:.0f} runs/s, {report['simulated_h']:.0f} h simulated",
        err=True,
    )
    typer.echo(
        f"faults injected: {report['faults'] or 'none'}; fault-free runs {report['fault_free_runs']}; "
        f"bridge restarts {report['restarts']}; over-cap programs {report['over_cap_runs']} "
        f"({report['refused']} refused)",
        err=True,
    )
    typer.echo(f"end states: {report['states']}; alarms: {report['alarms'] or 'none'}", err=True)
    for v in report["violations"][:20]:
        typer.echo(f"VIOLATION seed {v['seed']} {v['invariant']}: {v['detail']}", err=True)
    if len(report["violations"]) > 20:
        typer.echo(f"… {len(report['violations']) - 20} more", err=True)
    verdict = "no violation" if not report["violations"] else f"{len(report['violations'])} violations"
    typer.echo(f"{verdict}; failing seeds in {report['failing_seeds']}", err=True)


def _emit_replays(replays: list[campaign.Replay], json_output: bool) -> None:
    if json_output:
        rows = [{"seed": r.seed, "identical": r.identical, "outcome": r.outcome} for r in replays]
        sys.stdout.write(json.dumps({"replays": rows}) + "\n")
        return
    for r in replays:
        o = r.outcome
        faults = ", ".join(f"{f['name']} at {f['at_s']:.1f} s" for f in o["faults"]) or "none"
        same = ""
        if r.recorded is not None:
            same = "; identical to the record" if r.identical else "; DIFFERS from the record"
        typer.echo(
            f"seed {r.seed}: {o['syringe']} {o['rate_ml_h']:.3f} mL/h, {o['programmed_ml']:.4f} mL "
            f"programmed, {o['delivered_ml']:.6f} mL delivered, ended {o['state']} "
            f"(alarms: {', '.join(o['alarms']) or 'none'}; faults: {faults}){same}",
            err=True,
        )
        for v in o["violations"]:
            typer.echo(f"  VIOLATION {v['invariant']}: {v['detail']}", err=True)


def _finish_replay(replays: list[campaign.Replay]) -> None:
    if not all(r.identical for r in replays):
        raise typer.Exit(campaign.EXIT_REPLAY_DIFFERS)
    if any(r.outcome["violations"] for r in replays):
        raise typer.Exit(campaign.EXIT_VIOLATIONS)


def _replay_seed(
    spec: campaign.CampaignSpec, config: _core.KernelConfig, seed: int, json_output: bool
) -> None:
    replays = campaign.replay(spec, config, [seed])
    _emit_replays(replays, json_output)
    _finish_replay(replays)


def _replay_file(path: Path, spec: str | None, json_output: bool) -> None:
    if spec is not None:
        raise fail("a campaign.replay file carries its own spec and kernel configuration: give no SPEC", 2)
    try:
        spec_, config, failing = campaign.load_record(path)
    except campaign.CampaignSpecError as e:
        raise fail(str(e), os.EX_DATAERR) from e
    except OSError as e:
        raise fail(f"{path}: {e.strerror}", os.EX_NOINPUT) from e
    replays = campaign.replay(spec_, config, [int(f["seed"]) for f in failing], failing)
    _emit_replays(replays, json_output)
    _finish_replay(replays)


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
        raise fail(f"--duration {duration!r}: {e}", os.EX_USAGE) from e
    try:
        if balance == "sim":
            if not pump or split_url(pump)[0] != "sim":
                raise ConfigurationError(
                    "balance", "'sim' needs --pump sim://… (the simulator's own balance)"
                )
            readings = asyncio.run(accuracy.run_accuracy(pump, rate, syringe, duration_min))
        elif balance.startswith("sics:"):
            if not pump:
                raise ConfigurationError("pump", "--balance sics:PORT needs the --pump to run")
            scale = balances.SicsBalance.from_spec(balance.removeprefix("sics:"))
            readings = asyncio.run(accuracy.run_accuracy(pump, rate, syringe, duration_min, scale))
        elif balance.startswith("csv:"):
            readings = accuracy.readings_from_csv(Path(balance.removeprefix("csv:")))
        else:
            raise ConfigurationError("balance", f"{balance!r} is not 'sim', 'csv:PATH' or 'sics:PORT'")
        result = accuracy.analyse(readings, rate_ml_h=rate, duration_min=duration_min)
    except balances.BalanceReplyError as e:
        raise fail(str(e), os.EX_PROTOCOL) from e
    except TransportError as e:
        raise fail(str(e), os.EX_UNAVAILABLE) from e
    except (ConfigurationError, ValueError) as e:
        raise fail(str(e), os.EX_DATAERR) from e
    except OSError as e:
        raise fail(str(e), os.EX_NOINPUT) from e
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
                    rig.open_sim_pump(rig.sim_url_with_syringe(pump, syringe)),
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
            scale = balances.SicsBalance.from_spec(balance.removeprefix("sics:")) if balance else None
            record = asyncio.run(
                occlusion.run_on_pump(
                    pump,
                    rate=rate,
                    threshold=threshold,
                    slope=slope,
                    syringe=syringe,
                    compliance=compliance,
                    settle_s=settle,
                    release_s=release,
                    balance=scale,
                    time_scale=time_scale,
                )
            )
        result = occlusion.analyse(record)
    except occlusion.OcclusionTestError as e:
        raise fail(f"the occlusion test cannot be judged: {e}", os.EX_DATAERR) from e
    except balances.BalanceReplyError as e:
        raise fail(str(e), os.EX_PROTOCOL) from e
    except TransportError as e:
        raise fail(str(e), os.EX_UNAVAILABLE) from e
    except (ConfigurationError, ValueError) as e:
        raise fail(str(e), os.EX_DATAERR) from e
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
        raise fail(f"{register}: {e.strerror}", os.EX_NOINPUT) from e
    for hazard, control, requirement, test in trace.matrix(data):
        typer.echo(f"{hazard:<18} {control:<24} {requirement:<11} {test}")
    problems = trace.check(data, root)
    for problem in problems:
        typer.echo(f"{register}: {problem}", err=True)
    if problems:
        raise typer.Exit(os.EX_DATAERR)
