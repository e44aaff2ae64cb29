"""``ketapump qa``: the IEC 60601-2-24 style accuracy and occlusion tests, seeded fault campaigns and the
hazard register's traceability check. Adapters only: the tests themselves live in :mod:`ketapump.qa`."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# The QA modules load for their own command only, on first use (``qa.campaign``: the door loads a module
# when it is first read), not at every command's start; occlusion's defaults are in its options' help,
# so it loads with this module.
from ketapump import _core, qa
from ketapump.cli.common import (
    DEFAULT_PUMP,
    EXIT_USAGE,
    PUMP_HELP,
    Command,
    Renamed,
    command_class,
    command_group,
    fail,
    minutes,
    output_dir,
    progress_console,
    result,
    result_json,
    warn,
)
from ketapump.clock import settled_heap
from ketapump.errors import ConfigurationError, TransportError
from ketapump.validation import input_exit_code
from ketapump.wire import split_url

qa_app = command_group(help="QA tools: IEC 60601-2-24 style tests.")


@qa_app.command("campaign", cls=Command)
def qa_campaign(
    spec: Annotated[
        str | None,
        typer.Argument(help="Spec file (TOML) or shipped name (e.g. 'default'); not with a replay file."),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Number of runs (seeds BASE … BASE+N−1).")] = 1_000,
    workers: Annotated[
        int, typer.Option(min=1, help="Local worker threads (each batch runs in Rust, GIL released).")
    ] = 1,
    dask: Annotated[
        str | None, typer.Option(help="Dask scheduler address (tcp://HOST:8786): run there instead.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="First seed (BASE).")] = 0,
    replay_from: Annotated[
        str | None,
        typer.Option("--replay", help="A SEED to run again with SPEC, or a failing-seeds.json record."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    out: Annotated[
        Path, typer.Option(help="Directory for summary.json (and failing-seeds.json if a run failed).")
    ] = Path("campaign-report"),
) -> None:
    """Seeded fault campaign: randomized closed-loop runs (kernel + hw-sim plant, in Rust) checked
    against S3 (overdose, cap, fault-free accuracy), S5 (missed occlusion) and S7 (latched alarms).

    Exit codes: 0 no violation, 1 violations found (seeds written to OUT/failing-seeds.json),
    2 usage, 65 invalid spec or record, 66 spec not found, 69 Dask unavailable, 70 a campaign.replay differs
    from its record, 73 OUT cannot be written.
    """

    if replay_from is not None and not replay_from.isdigit():
        _replay_file(Path(replay_from), spec, json_output)
        return
    if spec is None:
        shipped = ", ".join(qa.campaign.shipped_specs())
        raise fail(f"SPEC is required (a file or a shipped name: {shipped})", EXIT_USAGE)
    try:
        spec_, config = qa.campaign.load_spec(spec)
    except qa.campaign.CampaignSpecError as e:
        raise fail(str(e), input_exit_code(e)) from e
    if replay_from is not None:
        _replay_seed(spec_, config, int(replay_from), json_output)
        return
    output_dir(out)
    seeds = list(range(seed, seed + runs))
    try:
        with _campaign_progress(runs) as on_progress:
            outcome = qa.campaign.run_campaign(
                spec_, config, seeds, workers=workers, dask_address=dask, on_progress=on_progress
            )
    except ImportError as e:
        message = f"--dask needs the 'distributed' package (pip install 'ketapump[dask]'): {e}"
        raise fail(message, os.EX_UNAVAILABLE) from e
    except (OSError, TimeoutError) as e:
        raise fail(f"cannot reach the Dask scheduler {dask}: {e}", os.EX_UNAVAILABLE) from e
    report = qa.campaign.summary(outcome, spec, seed)
    failing_path = out / "failing-seeds.json"
    report["failing_seeds"] = str(failing_path) if outcome.violations else None
    try:
        if outcome.violations:
            qa.campaign.write_record(
                failing_path, qa.campaign.replay_record(spec_, config, outcome.failing())
            )
        (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot write the campaign report in {out}: {e.strerror or e}", os.EX_CANTCREAT) from e
    if json_output:
        result_json(report)
    else:
        _print_summary(report, stale_record=failing_path.exists() and not outcome.violations)
    if outcome.violations:
        raise typer.Exit(qa.campaign.EXIT_VIOLATIONS)


@contextmanager
def _campaign_progress(runs: int) -> Iterator[Any]:
    """A progress bar on stderr while the runs go (drawn only on a terminal: nothing in a pipe or log)."""
    console = progress_console()
    columns = (
        TextColumn("campaign"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("campaign", total=runs)
        yield lambda done: progress.update(task, completed=done)


def _counts(title: str, counts: dict[str, int]) -> list[str]:
    """One section of the campaign table: a title and one aligned ``name  count`` row per entry."""
    if not counts:
        return [f"{title}: none"]
    width = max(len(name) for name in counts)
    return [f"{title}:"] + [f"  {name:<{width}}  {n:>7}" for name, n in sorted(counts.items())]


def _print_summary(report: dict[str, Any], *, stale_record: bool) -> None:
    lines = [
        f"campaign {report['spec']}, seeds {report['seed_base']}…{report['seed_base'] + report['runs'] - 1}",
        f"  {report['runs']} runs ({report['backend']}) in {report['seconds']:.1f} s: "
        f"{report['runs_per_s']:.0f} runs/s, {report['simulated_h']:.0f} h simulated",
        f"  fault-free runs {report['fault_free_runs']}, bridge restarts {report['restarts']}, "
        f"over-cap programs {report['over_cap_runs']} ({report['refused']} refused)",
        *_counts("faults injected", report["faults"]),
        *_counts("end states", report["states"]),
        *_counts("alarms", report["alarms"]),
        *_counts("violations by invariant", report["violations_by_invariant"]),
    ]
    lines += [
        f"VIOLATION seed {v['seed']} {v['invariant']}: {v['detail']}" for v in report["violations"][:20]
    ]
    if len(report["violations"]) > 20:
        lines.append(f"… {len(report['violations']) - 20} more (all in {report['failing_seeds']})")
    if report["violations"]:
        lines.append(f"{len(report['violations'])} violations; failing seeds in {report['failing_seeds']}")
    else:
        lines.append("no violation; no failing seeds")
    for line in lines:
        result(line)
    if stale_record:
        warn("the failing-seeds.json in the output directory is from an earlier campaign (left as it was)")


def _emit_replays(replays: list[qa.campaign.Replay], json_output: bool) -> None:
    if json_output:
        rows = [{"seed": r.seed, "identical": r.identical, "outcome": r.outcome} for r in replays]
        result_json({"replays": rows})
        return
    for r in replays:
        o = r.outcome
        faults = ", ".join(f"{f['name']} at {f['at_s']:.1f} s" for f in o["faults"]) or "none"
        same = ""
        if r.recorded is not None:
            same = "; identical to the record" if r.identical else "; DIFFERS from the record"
        result(
            f"seed {r.seed}: {o['syringe']} {o['rate_ml_h']:.3f} mL/h, {o['programmed_ml']:.4f} mL "
            f"programmed, {o['delivered_ml']:.6f} mL delivered, ended {o['state']} "
            f"(alarms: {', '.join(o['alarms']) or 'none'}; faults: {faults}){same}"
        )
        for v in o["violations"]:
            result(f"  VIOLATION {v['invariant']}: {v['detail']}")


def _finish_replay(replays: list[qa.campaign.Replay]) -> None:
    if not all(r.identical for r in replays):
        raise typer.Exit(qa.campaign.EXIT_REPLAY_DIFFERS)
    if any(r.outcome["violations"] for r in replays):
        raise typer.Exit(qa.campaign.EXIT_VIOLATIONS)


def _replay_seed(
    spec: qa.campaign.CampaignSpec, config: _core.KernelConfig, seed: int, json_output: bool
) -> None:
    replays = qa.campaign.replay(spec, config, [seed])
    _emit_replays(replays, json_output)
    _finish_replay(replays)


def _replay_file(path: Path, spec: str | None, json_output: bool) -> None:
    if spec is not None:
        message = "a campaign.replay file carries its own spec and kernel configuration: give no SPEC"
        raise fail(message, EXIT_USAGE)
    try:
        spec_, config, failing = qa.campaign.load_record(path)
    except qa.campaign.CampaignSpecError as e:
        raise fail(str(e), os.EX_DATAERR) from e
    except OSError as e:
        raise fail(f"{path}: {e.strerror}", os.EX_NOINPUT) from e
    replays = qa.campaign.replay(spec_, config, [int(f["seed"]) for f in failing], failing)
    _emit_replays(replays, json_output)
    _finish_replay(replays)


@qa_app.command(
    "accuracy",
    cls=command_class(Renamed("--rate", "--rate-ml-h"), Renamed("--duration", "--duration-min", minutes)),
)
def qa_accuracy(
    rate_ml_h: Annotated[float, typer.Option(help="Set rate (mL/h).")],
    pump: Annotated[
        str | None,
        typer.Option(
            help=PUMP_HELP + " With --balance sics:PORT, required (the pump on the balance); not used with "
            "--balance csv:PATH.",
            show_default=DEFAULT_PUMP,
        ),
    ] = None,
    syringe: Annotated[str, typer.Option(help="Syringe from the catalogue.")] = "bd-plastipak-50",
    duration_min: Annotated[
        float, typer.Option(min=0.0, help="Test period T (min); the second half is analysed.")
    ] = 120.0,
    balance: Annotated[
        str,
        typer.Option(
            help="'sim' (the simulator's balance; needs a sim:// pump), 'csv:PATH' (t_s,grams) or "
            "'sics:PORT[?baud=9600]' (an MT-SICS laboratory balance on a serial port, read every 30 s, "
            "under the pump given by --pump)."
        ),
    ] = "sim",
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    out: Annotated[Path, typer.Option(help="Directory for the report and plots.")] = Path("accuracy-report"),
) -> None:
    """Gravimetric accuracy (mean error A, trumpet Ep(max)/Ep(min)) against S1 and S2.

    With --balance sim the pump (sim://) is run through the bridge for the whole period; with
    --balance sics:PORT the pump at --pump is run and a serial balance weighed every 30 s; with --balance
    csv:PATH an existing recording is analysed. A period shorter than the method's minimum (62 min) is
    refused before the pump moves (exit 65), and on a real pump one the syringe cannot hold; on the
    simulator such a period runs over several syringes, the changes left out of the analysis (listed
    in the report as syringe_changes).
    Exit codes: 0 analysed (the verdict is in the report), 2 usage, 65 invalid data, 66 no such file,
    69 pump or balance unreachable, 73 OUT cannot be written, 76 the balance answered with an error or
    garbled bytes.
    """
    if not duration_min > 0:
        raise typer.BadParameter("must be more than 0", param_hint="--duration-min")
    changes: list[qa.accuracy.SyringeChange] = []
    try:
        qa.accuracy.check_duration(duration_min)  # before any pump moves or any file is read
        if balance == "sim":
            pump = pump or DEFAULT_PUMP
            if split_url(pump)[0] != "sim":
                raise ConfigurationError("balance", "'sim' weighs the simulator: it needs --pump sim://…")
            with settled_heap():
                readings = asyncio.run(
                    qa.accuracy.run_accuracy(pump, rate_ml_h, syringe, duration_min, changes=changes)
                )
        elif balance.startswith("sics:"):
            if pump is None:
                # No default here: a real balance weighing the simulator by mistake would look like a
                # pump that delivers nothing.
                raise ConfigurationError("pump", "--balance sics:PORT needs the --pump on the balance")
            scale = qa.balance.SicsBalance.from_spec(balance.removeprefix("sics:"))
            with settled_heap():
                readings = asyncio.run(
                    qa.accuracy.run_accuracy(pump, rate_ml_h, syringe, duration_min, scale)
                )
        elif balance.startswith("csv:"):
            readings = qa.accuracy.readings_from_csv(Path(balance.removeprefix("csv:")))
        else:
            raise ConfigurationError("balance", f"{balance!r} is not 'sim', 'csv:PATH' or 'sics:PORT'")
        analysis = qa.accuracy.analyse(readings, rate_ml_h=rate_ml_h, duration_min=duration_min)
    except qa.balance.BalanceReplyError as e:
        raise fail(str(e), os.EX_PROTOCOL) from e
    except TransportError as e:
        raise fail(str(e), os.EX_UNAVAILABLE) from e
    except (ConfigurationError, ValueError) as e:
        raise fail(str(e), os.EX_DATAERR) from e
    except OSError as e:
        raise fail(str(e), os.EX_NOINPUT) from e
    verdict = qa.accuracy.verdict(analysis, rate_ml_h)
    output_dir(out)
    try:
        plots = qa.accuracy.plot(analysis, rate_ml_h, out, duration_min / 2)
        report = {
            "rate_ml_h": rate_ml_h,
            "duration_min": duration_min,
            "mean_error_pct": analysis.mean_error_pct,
            "ep": {f"{p:g}": {"max": hi, "min": lo} for p, (hi, lo) in analysis.ep.items()},
            "s1_met": verdict.s1_mean_error,
            "s2_met": verdict.s2_trumpet,
            "plots": [str(p) for p in plots],
            # Each syringe change (the simulator over several syringes), and the samples left out.
            "syringe_changes": [
                {
                    "paused_min": c.paused_s / 60.0,
                    "resumed_min": c.resumed_s / 60.0,
                    "excluded_min": [k * qa.accuracy.SAMPLE_MIN for k in c.cut_slots()],
                }
                for c in changes
            ],
        }
        (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot write the report in {out}: {e.strerror or e}", os.EX_CANTCREAT) from e
    if json_output:
        result_json(report)
        return
    result(f"A = {analysis.mean_error_pct:+.2f} %  (S1 {'met' if verdict.s1_mean_error else 'MISSED'})")
    for p, (hi, lo) in analysis.ep.items():
        result(f"P = {p:>4g} min: Ep(max) {hi:+7.2f} %  Ep(min) {lo:+7.2f} %")
    result(f"S2 {'met' if verdict.s2_trumpet else 'MISSED'}; report and plots in {out}")


@qa_app.command(
    "occlusion",
    cls=command_class(
        Renamed("--rate", "--rate-ml-h"),
        Renamed("--threshold", "--threshold-mmhg"),
        Renamed("--compliance", "--compliance-ml-per-mmhg"),
        Renamed("--settle", "--settle-s"),
        Renamed("--release", "--release-s"),
    ),
)
def qa_occlusion(
    rate_ml_h: Annotated[float, typer.Option(help="Set rate (mL/h).")],
    pump: Annotated[
        str, typer.Option(help=PUMP_HELP + " sim:// closes the line by the simulator's fault.")
    ] = DEFAULT_PUMP,
    threshold_mmhg: Annotated[float, typer.Option(help="Occlusion pressure threshold (mmHg).")] = 300.0,
    syringe: Annotated[str, typer.Option(help="Syringe from the catalogue.")] = "bd-plastipak-50",
    slope: Annotated[
        bool, typer.Option(help="Slope/model detectors on; --no-slope times the threshold alone.")
    ] = True,
    compliance_ml_per_mmhg: Annotated[
        float | None,
        typer.Option(
            min=1e-6,
            help="Plant compliance C (mL/mmHg) of the S5 bound.",
            show_default=f"{qa.occlusion.SIM_COMPLIANCE_ML_PER_MMHG:g}, the simulator's nominal plant, for "
            "sim://; the kernel's worst-case setting otherwise",
        ),
    ] = None,
    settle_s: Annotated[
        float, typer.Option(min=0.0, help="Running time before the line is closed (s).")
    ] = qa.occlusion.SETTLE_S,
    release_s: Annotated[
        float, typer.Option(min=1.0, help="Free flow collected after opening, motor stopped (s).")
    ] = qa.occlusion.RELEASE_S,
    balance: Annotated[
        str | None,
        typer.Option(help="For a real pump: 'sics:PORT' weighs the bolus.", show_default="not measured"),
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
    0 tested (the verdict is in the report), 2 usage, 65 invalid settings or a run that cannot be judged
    (e.g. an alarm before the line was closed, or the operator's input closed), 69 pump or balance
    unreachable, 73 OUT cannot be written, 76 balance reply error.
    """
    try:
        scheme = split_url(pump)[0]
        if scheme == "sim":
            if balance is not None:
                raise ConfigurationError("balance", "sim:// measures the bolus itself")
            compliance = compliance_ml_per_mmhg or qa.occlusion.SIM_COMPLIANCE_ML_PER_MMHG
            with settled_heap():
                record = asyncio.run(
                    qa.occlusion.run_simulated(
                        qa.rig.open_sim_pump(qa.rig.sim_url_with_syringe(pump, syringe)),
                        rate_ml_h=rate_ml_h,
                        threshold_mmhg=threshold_mmhg,
                        slope_detector=slope,
                        syringe=syringe,
                        compliance_ml_per_mmhg=compliance,
                        settle_s=settle_s,
                        release_s=release_s,
                    )
                )
        else:
            if balance and not balance.startswith("sics:"):
                raise ConfigurationError("balance", f"{balance!r} is not 'sics:PORT'")
            scale = qa.balance.SicsBalance.from_spec(balance.removeprefix("sics:")) if balance else None
            with settled_heap():
                record = asyncio.run(
                    qa.occlusion.run_on_pump(
                        pump,
                        rate=rate_ml_h,
                        threshold=threshold_mmhg,
                        slope=slope,
                        syringe=syringe,
                        compliance=compliance_ml_per_mmhg,
                        settle_s=settle_s,
                        release_s=release_s,
                        balance=scale,
                        time_scale=time_scale,
                    )
                )
        analysis = qa.occlusion.analyse(record)
    except qa.occlusion.OcclusionTestError as e:
        raise fail(f"the occlusion test cannot be judged: {e}", os.EX_DATAERR) from e
    except qa.balance.BalanceReplyError as e:
        raise fail(str(e), os.EX_PROTOCOL) from e
    except TransportError as e:
        raise fail(str(e), os.EX_UNAVAILABLE) from e
    except (ConfigurationError, ValueError) as e:
        raise fail(str(e), os.EX_DATAERR) from e
    output_dir(out)
    try:
        plot = qa.occlusion.plot(record, analysis, out)
        summary = qa.occlusion.report(record, analysis) | {"plot": str(plot)}
        (out / "occlusion.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot write the report in {out}: {e.strerror or e}", os.EX_CANTCREAT) from e
    if json_output:
        result_json(summary)
        return

    def met(ok: bool | None) -> str:
        return "not measured" if ok is None else "met" if ok else "MISSED"

    result(
        f"alarm ({', '.join(record.first_alarms)}) {analysis.time_to_alarm_s:.1f} s after closing at "
        f"{analysis.pressure_at_alarm_mmhg:.0f} mmHg (P0 {analysis.p0_mmhg:.0f} mmHg); S5 bound "
        f"{analysis.bound_s:.1f} s: {met(analysis.s5_met)}"
    )
    bolus = "not measured" if analysis.bolus_ml is None else f"{analysis.bolus_ml:.3f} mL"
    result(
        f"released bolus {bolus}: S6 (≤ {qa.occlusion.S6_HARD_ML} mL) {met(analysis.s6_met)}, goal "
        f"(≤ {qa.occlusion.S6_GOAL_ML} mL) {met(analysis.s6_goal_met)}; report and plot in {out}"
    )


@qa_app.command("trace", cls=Command)
def qa_trace(
    register: Annotated[
        Path | None,
        typer.Option(
            help="Hazard register (TOML) to check instead of the shipped one.",
            show_default="the shipped ketapump/data/hazards.toml",
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="Repository checkout the register's test ids are checked against.",
            show_default="the checkout ketapump runs from, else the current directory if it is one",
        ),
    ] = None,
) -> None:
    """Print the hazard → control → requirement → test matrix and check the chain.

    The named tests are looked up in a ketapump checkout (its tests/ and rust/): without one (ketapump
    installed from a wheel, run elsewhere) every other link is checked and a warning says the test ids
    were not. Exit codes: 0 the chain is complete, 2 usage, 65 a broken link (each listed on stderr) or
    a register that is not valid TOML, 66 the register file not found or --root not a checkout.
    """
    name = str(register) if register is not None else "hazards.toml (shipped)"
    try:
        data = qa.trace.load(register)
    except OSError as e:
        raise fail(f"{register}: {e.strerror or e}", os.EX_NOINPUT) from e
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise fail(f"{register}: is not valid TOML: {e}", os.EX_DATAERR) from e
    if root is None:
        root = qa.trace.default_root()
    elif qa.trace.repository_root([root]) is None:
        raise fail(f"--root {root}: not a ketapump checkout (no pyproject.toml and tests/)", os.EX_NOINPUT)
    for hazard, control, requirement, test in qa.trace.matrix(data):
        result(f"{hazard:<18} {control:<24} {requirement:<11} {test}")
    problems = qa.trace.check(data, root)
    for problem in problems:
        typer.echo(f"{name}: {problem}", err=True)
    if root is None:
        warn(
            "the test ids were not checked: no ketapump checkout here (its tests are not installed "
            "with the package); run from a checkout or give --root CHECKOUT"
        )
    if problems:
        raise typer.Exit(os.EX_DATAERR)


def register_cli(app: typer.Typer) -> None:
    app.add_typer(qa_app, name="qa")


__all__ = ["register_cli"]
