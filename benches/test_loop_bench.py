"""A steady, quiet loop ([loop]): rate commands per 40-min session beside S1/S2, the demo's audit log and
fsyncs, the demo's wall time, and the loop's heartbeat gaps at 60× beside two busy cores.

Run (release build): ``python -m pytest benches/test_loop_bench.py -p no:randomly -s``; results and how
they were taken: docs/benchmarks.md ("A quiet loop"). Quick mode (CI): shorter accuracy periods, one
demo, a few seconds of 60×; every count and verdict is still checked.

rate-commands
    A 40-min infusion at 1, 5 and 52.5 mL/h through the bridge on the in-process simulator (virtual
    time, the shipped kernel settings): the rate writes the pump receives. Target ≤ 100 each.
accuracy
    ``ketapump qa accuracy``'s run (IEC 60601-2-24 trumpet method on the simulator's balance) at the
    same rates with the same kernel: S1 (mean error A) and S2 (Ep at P = 2 and 11 min) beside the counts.
demo
    ``ketapump demo --json`` as a user runs it (a fresh process: imports, session, report, plots): wall
    time (goal ≤ 3 s); then the same session in this process with ``os.fsync`` counted: audit log size
    (target ≤ 300 KB), records and fsyncs per session.
jitter
    The demo's loop at 60× real time (ScaledClock) beside ``tools/busy 2``: the longest gap between two
    heartbeats as the pump measured it (``heartbeat_age_ms``), against the watchdog the time-scale
    arithmetic gave it, and how late ticks started.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import QUICK, busy_cores
from ketapump import _core
from ketapump.bridge import ControlLoop, InfusionPlan, NullLog, control_period_s, make_driver, syringe_spec
from ketapump.bridge.runtime import JITTER_REAL_S, loop_timing
from ketapump.clock import ScaledClock, VirtualClock
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.qa.accuracy import analyse, run_accuracy, verdict
from ketapump.wire import PumpTelemetry, ReferencePumpDriver, SimTransport, open_transport

ROOT = Path(__file__).resolve().parents[1]
RATES = [1.0, 5.0, 52.5]
MAX_COMMANDS = 100
MAX_AUDIT_BYTES = 300_000


# ----- rate commands per 40-min session --------------------------------------------------------------


def forty_minute_session(rate_ml_h: float) -> dict[str, Any]:
    clock = VirtualClock()
    capacity, diameter = syringe_spec("bd-plastipak-60")
    transport = open_transport("sim://?seed=1&syringe=bd-plastipak-60", clock=clock)
    assert isinstance(transport, SimTransport)
    driver = ReferencePumpDriver(transport)
    writes: list[float] = []
    send = driver.set_rate_ml_h

    async def counted(rate: float) -> None:
        writes.append(rate)
        await send(rate)

    driver.set_rate_ml_h = counted  # type: ignore[method-assign,assignment]
    config = kernel_config(
        syringe_diameter_mm=diameter, syringe_capacity_ml=capacity, syringe_fill_ml=capacity
    )
    plan = InfusionPlan(rate_ml_h=rate_ml_h, volume_ml=rate_ml_h * 40.0 / 60.0, syringe_diameter_mm=diameter)
    result = asyncio.run(ControlLoop(driver, config, clock, NullLog()).run(plan))
    return {"state": result.state, "rate_commands": len(writes), "ticks": round(clock.now() / 0.1)}


@pytest.mark.benchmark(group="quiet-loop")
@pytest.mark.parametrize("rate_ml_h", RATES)
def test_rate_commands_per_40_min_session(benchmark: Any, rate_ml_h: float) -> None:
    outcome = benchmark.pedantic(forty_minute_session, args=(rate_ml_h,), rounds=1, iterations=1)
    benchmark.extra_info.update(outcome)
    assert outcome["state"] == "complete"
    assert outcome["rate_commands"] <= MAX_COMMANDS, outcome


@pytest.mark.benchmark(group="quiet-loop")
@pytest.mark.parametrize("rate_ml_h", RATES)
def test_s1_s2_beside_the_command_counts(benchmark: Any, rate_ml_h: float) -> None:
    # The method's T = 120 min (52.5 mL/h: the 68 min a 60 mL syringe holds, docs/qa.md).
    syringe = "bd-plastipak-60" if rate_ml_h > 50 else "bd-plastipak-50"
    minutes = (64.0 if QUICK else 68.0) if rate_ml_h > 50 else (64.0 if QUICK else 120.0)  # ≥ 2 × 31 min

    def measure() -> dict[str, Any]:
        readings = asyncio.run(run_accuracy("sim://?seed=1", rate_ml_h, syringe, minutes))
        result = analyse(readings, rate_ml_h=rate_ml_h, duration_min=minutes)
        judged = verdict(result, rate_ml_h)
        return {
            "duration_min": minutes,
            "mean_error_pct": round(result.mean_error_pct, 3),
            "ep_2_min": [round(v, 2) for v in result.ep[2.0]],
            "ep_11_min": [round(v, 2) for v in result.ep[11.0]],
            "s1_met": judged.s1_mean_error,
            "s2_met": judged.s2_trumpet,
        }

    outcome = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(outcome)
    assert outcome["s1_met"] and outcome["s2_met"], outcome


# ----- the demo ---------------------------------------------------------------------------------------


def demo_process(out: Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "ketapump", "demo", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - started
    assert run.returncode == 0, run.stderr
    return {"wall_s": wall, **json.loads(run.stdout)}


@pytest.mark.benchmark(group="demo")
@pytest.mark.parametrize("bytecode", ["cached", "compiled-each-start"])
def test_demo_wall_time(benchmark: Any, bytecode: str) -> None:
    """``cached``: as Python runs by default (the package's bytecode written on the first start, here in
    a folder of the benchmark's own, and read on the next: one warm-up round); ``compiled-each-start``:
    as with PYTHONDONTWRITEBYTECODE=1 and no bytecode beside the sources, every start compiles the
    package (an editable install on the project's machines, where the environment sets it)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        if bytecode == "cached":
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        outcome = benchmark.pedantic(
            demo_process,
            args=(Path(tmp) / "demo", env),
            rounds=1 if QUICK else 3,
            iterations=1,
            warmup_rounds=int(bytecode == "cached"),
        )
    benchmark.extra_info.update(wall_s=round(outcome["wall_s"], 2), outcome=outcome["outcome"])
    assert outcome["outcome"] == "complete" and outcome["log_verified"]


@pytest.fixture
def counted_fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    real = os.fsync
    synced: list[int] = []

    def counting(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    yield synced


@pytest.mark.benchmark(group="demo")
def test_demo_audit_log_and_fsyncs(benchmark: Any, counted_fsyncs: list[int], tmp_path: Path) -> None:
    from ketapump.cli.clinical import demo  # noqa: PLC0415 - the CLI's own entry point, in this process

    def session() -> dict[str, Any]:
        counted_fsyncs.clear()
        out = tmp_path / "demo"
        with pytest.raises(SystemExit) as done:
            try:
                demo(time_scale=None, json_output=True, out=out, seed=0)
            except BaseException as exit_:  # typer.Exit carries the exit code
                raise SystemExit(getattr(exit_, "exit_code", 0)) from exit_
            raise SystemExit(0)
        assert done.value.code == 0
        log = out / "audit.jsonl"
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        # os.fsync is the audit writer's alone (SQLite syncs in C, the writer's directory sync is left out).
        return {
            "audit_bytes": log.stat().st_size,
            "audit_records": len(records),
            "command_records": sum(r["event"] == "command" for r in records),
            "telemetry_records": sum(r["event"] == "telemetry" for r in records),
            "audit_fsyncs": len(counted_fsyncs),
        }

    outcome = benchmark.pedantic(session, rounds=1, iterations=1)
    benchmark.extra_info.update(outcome)
    assert outcome["audit_bytes"] <= MAX_AUDIT_BYTES, outcome


# ----- heartbeat gaps at 60× beside two busy cores ----------------------------------------------------


@pytest.fixture
def two_busy_cores() -> Iterator[None]:
    with busy_cores(2):
        yield


@pytest.mark.benchmark(group="jitter")
def test_heartbeat_gap_at_60x_beside_two_busy_cores(benchmark: Any, two_busy_cores: None) -> None:
    scale = 60.0
    real_s = 5.0 if QUICK else 60.0

    def run() -> dict[str, Any]:
        clock = ScaledClock(scale)
        capacity, diameter = syringe_spec("bd-plastipak-60")  # an hour at 52.5 mL/h fits
        pump = _core.SimPump("bd-plastipak-60", seed=0)
        defaults = default_kernel_settings()
        period = control_period_s("sim", scale, None, float(defaults["control_period_s"]))
        driver = make_driver("sim://", clock, period, scale, sim_pump=pump)
        assert isinstance(driver, ReferencePumpDriver)
        config = kernel_config(
            syringe_diameter_mm=diameter, syringe_capacity_ml=capacity, syringe_fill_ml=capacity
        )
        gaps_ms: list[float] = []
        starts: list[float] = []

        def on_tick(_out: _core.StepOutput, _telemetry: PumpTelemetry | None) -> None:
            gaps_ms.append(pump.value("heartbeat_age_ms"))  # since the previous tick's heartbeat
            starts.append(time.monotonic())

        loop = ControlLoop(driver, config, clock, NullLog(), period_s=period, on_tick=on_tick)
        rate = 52.5
        plan = InfusionPlan(
            rate_ml_h=rate, volume_ml=rate * real_s * scale / 3600.0, syringe_diameter_mm=diameter
        )
        result = asyncio.run(loop.run(plan))
        # How much longer than a period (real) the interval between two ticks' starts was.
        overrun_ms = sorted(
            max(0.0, (b - a) * 1_000.0 - period / scale * 1_000.0) for a, b in itertools.pairwise(starts)
        )
        timing = loop_timing(driver.transport, period, scale, virtual=False)
        return {
            "state": result.state,
            "ticks": len(gaps_ms),
            "watchdog_ms": driver.watchdog_ms,
            "jitter_allowance_real_ms": JITTER_REAL_S * 1_000.0,
            "heartbeat_gap_budget_s": timing.heartbeat_gap_s,
            "max_heartbeat_gap_pump_ms": max(gaps_ms),
            "max_heartbeat_gap_real_ms": max(gaps_ms) / scale,
            "tick_overrun_real_ms_p99": overrun_ms[int(0.99 * (len(overrun_ms) - 1))],
            "tick_overrun_real_ms_max": overrun_ms[-1],
        }

    outcome = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(outcome)
    assert outcome["state"] == "complete", outcome
    assert outcome["max_heartbeat_gap_pump_ms"] < outcome["watchdog_ms"], outcome
