"""KP-40MIN closed loop (Rust vs the pure-Python reference model, same run), the Python→Rust call
boundary, the bridge's tick body on sim://, and closed-loop runs per second per core."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest

from conftest import QUICK
from ketapump import _core
from ketapump.bridge.loop import ControlLoop, InfusionPlan, NullLog
from ketapump.clock import VirtualClock
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.reference import KP40MIN_OVERRIDES, run_kp40min
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import RegisterTransport

FULL_TICKS = 2_400_000
# The Python reference model takes ~20 µs a tick: its full run (~50 s) is done once; quick mode runs a
# prefix, on which both implementations must agree just the same.
TICKS = 60_000 if QUICK else FULL_TICKS
SIM_SECONDS_PER_TICK = 0.001
RESULTS: dict[str, Any] = {}


def _report(benchmark: Any, key: str, ticks: int, outcome: dict[str, object]) -> None:
    stats = benchmark.stats.stats if benchmark.stats else None
    seconds = stats.median if stats else float("nan")
    RESULTS[key] = {"seconds": seconds, "outcome": outcome, "ticks": ticks}
    benchmark.extra_info.update(
        ticks=ticks,
        ns_per_tick=seconds / ticks * 1e9,
        times_real_time=ticks * SIM_SECONDS_PER_TICK / seconds,
        final_state=outcome["state"],
        first_alarm_tick=outcome["first_alarm_tick"],
    )


@pytest.mark.benchmark(group="kp40min")
def test_kp40min_rust(benchmark: Any) -> None:
    config = kernel_config(**KP40MIN_OVERRIDES)
    outcome = benchmark.pedantic(
        _core.run_kp40min, args=(config, TICKS), rounds=3 if QUICK else 7, iterations=1
    )
    _report(benchmark, "rust", TICKS, outcome)


@pytest.mark.benchmark(group="kp40min")
@pytest.mark.timeout(1800)  # ~40 s on an idle core; over the suite's 300 s on a loaded machine
def test_kp40min_python_reference(benchmark: Any) -> None:
    settings = default_kernel_settings() | KP40MIN_OVERRIDES
    outcome = benchmark.pedantic(run_kp40min, args=(settings, TICKS), rounds=1, iterations=1)
    _report(benchmark, "python", TICKS, outcome)


def test_kp40min_same_final_state_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """Both runs end in the same state: same alarms at the same tick, the same delivered volume and the
    same trace hash (the strict check: every 1 000th tick's command and every transition)."""
    if "rust" not in RESULTS or "python" not in RESULTS:
        pytest.skip("run together with the two KP-40MIN benchmarks")
    rust, python = RESULTS["rust"], RESULTS["python"]
    assert rust["outcome"] == python["outcome"]
    if QUICK:
        assert rust["outcome"]["ticks"] == TICKS
    else:
        assert rust["outcome"]["state"] == "alarm" and rust["outcome"]["alarms"] == ["occlusion_slope"]
    ratio = python["seconds"] / rust["seconds"]
    with capsys.disabled():
        print(
            f"\nKP-40MIN ({TICKS} ticks): Rust {rust['seconds'] / TICKS * 1e9:.1f} ns/tick, "
            f"Python reference {python['seconds'] / TICKS * 1e9:.0f} ns/tick, ratio {ratio:.0f}× "
            f"(target ≥ 300×); Rust {TICKS * SIM_SECONDS_PER_TICK / rust['seconds']:.0f}× real time"
        )


# ----- lockstep lanes ------------------------------------------------------------------------------

LANE_RUNS = 8  # the same work for every lane count: 8 whole KP-40MIN runs


@pytest.mark.benchmark(group="kp40min-lanes")
@pytest.mark.parametrize("lanes", [1, 2, 4, 8])
def test_kp40min_lanes(benchmark: Any, lanes: int) -> None:
    """8 independent KP-40MIN runs stepped in lockstep lanes of N: ns per tick per lane, and every lane
    ends exactly as the single run (the Rust one, itself asserted equal to the reference model)."""
    config = kernel_config(**KP40MIN_OVERRIDES)
    outcomes = benchmark.pedantic(
        _core.run_kp40min_lanes,
        args=(config, LANE_RUNS, lanes, TICKS),
        rounds=1 if QUICK else 3,
        iterations=1,
    )
    assert outcomes == [_core.run_kp40min(config, TICKS)] * LANE_RUNS
    if benchmark.stats:
        benchmark.extra_info.update(
            lanes=lanes, ns_per_tick_per_lane=benchmark.stats.stats.median / (LANE_RUNS * TICKS) * 1e9
        )


# ----- the boundary --------------------------------------------------------------------------------


def _noop(now_s: float, t_s: float, volume_ml: float, pressure_mmhg: float) -> None:
    return None


def _running_kernel() -> _core.SafetyKernel:
    kernel = _core.SafetyKernel(kernel_config(control_period_s=0.001))
    kernel.load(52.5, 35.0, take_up=False)
    kernel.step(0.0, 0.0, 0.0, 20.0)
    kernel.start()
    return kernel


@pytest.mark.benchmark(group="boundary")
def test_boundary_python_noop_call(benchmark: Any) -> None:
    """The same wrapper as the kernel step below, calling a Python function that does nothing."""
    clock = iter(range(1, 10**9))

    def tick() -> None:
        t = next(clock) * 0.001
        return _noop(t, t, 0.0, 20.0)

    benchmark(tick)


@pytest.mark.benchmark(group="boundary")
def test_boundary_kernel_step_from_python(benchmark: Any) -> None:
    kernel = _running_kernel()
    clock = iter(range(1, 10**9))

    def tick() -> _core.StepOutput:
        t = next(clock) * 0.001
        return kernel.step(t, t, 0.0, 20.0)

    benchmark(tick)


# ----- the bridge tick body on sim:// --------------------------------------------------------------


@pytest.mark.benchmark(group="bridge-tick")
def test_bridge_tick_body_on_sim(benchmark: Any) -> None:
    """read telemetry → kernel step → relay the command → log hook, on the in-process simulator (no
    sockets). The loop's scheduling and the audit file's fsync are not part of the body."""
    clock = VirtualClock()
    transport = open_transport("sim://", clock=clock)
    assert isinstance(transport, RegisterTransport)
    driver = ReferencePumpDriver(transport)
    loop = ControlLoop(driver, kernel_config(), clock, NullLog())
    aio = asyncio.new_event_loop()
    durations: list[float] = []

    async def prepare() -> None:
        await driver.connect()
        await driver.acknowledge_alarm()
        await driver.set_syringe(26.59)
        loop.kernel.load(52.5, 35.0, take_up=False)
        loop._step(clock.now(), await driver.read_telemetry())
        loop.kernel.start()

    async def ticks(n: int) -> None:
        for _ in range(n):
            await clock.sleep_until(clock.now() + 0.1)
            t = time.perf_counter()
            telemetry = await driver.read_telemetry()
            out = loop._step(clock.now(), telemetry)
            command = loop._announce(out)
            if command is not None:
                await loop._send(command)
            loop._drain_trace()
            durations.append(time.perf_counter() - t)

    aio.run_until_complete(prepare())
    n = 200 if QUICK else 2_000
    benchmark.pedantic(lambda: aio.run_until_complete(ticks(n)), rounds=3, iterations=1)
    aio.close()
    durations.sort()
    benchmark.extra_info.update(
        ticks=len(durations),
        p50_us=statistics.median(durations) * 1e6,
        p99_us=durations[int(len(durations) * 0.99)] * 1e6,
    )


# ----- closed-loop runs per second -----------------------------------------------------------------


@pytest.mark.benchmark(group="campaign")
def test_closed_loop_runs_per_second_per_core(benchmark: Any) -> None:
    """Whole simulated KP-40MIN infusions (40 min at 1 kHz, kernel + controller + plant in Rust, GIL
    released) per second on one core."""
    config = kernel_config(**KP40MIN_OVERRIDES)
    ticks = 60_000 if QUICK else FULL_TICKS
    benchmark.pedantic(_core.run_kp40min, args=(config, ticks), rounds=3 if QUICK else 5, iterations=1)
    if benchmark.stats:
        benchmark.extra_info["infusions_per_s_per_core"] = (ticks / FULL_TICKS) / benchmark.stats.stats.median


def test_a_plan_runs_on_the_bench_plant() -> None:
    """Guard: the tick benchmark's set-up matches what the bridge really runs."""
    clock = VirtualClock()
    transport = open_transport("sim://", clock=clock)
    assert isinstance(transport, RegisterTransport)
    loop = ControlLoop(ReferencePumpDriver(transport), kernel_config(), clock, NullLog())
    result = asyncio.run(loop.run(InfusionPlan(rate_ml_h=52.5, volume_ml=0.5, syringe_diameter_mm=26.59)))
    assert result.state == "complete"
