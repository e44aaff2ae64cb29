"""Operator requests to a running control loop (pause, resume, rate change), against the in-process
simulated pump: each reaches the pump through the kernel at the next tick, and a request the kernel
refuses is never forced."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from ketapump import _core
from ketapump.bridge.loop import ControlLoop, InfusionPlan, RunResult
from ketapump.clock import VirtualClock
from ketapump.config import default_kernel_settings, kernel_config
from ketapump.errors import TransportError
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.sim import SimTransport
from test_bridge import Events

RATE = 30.0
VOLUME = 2.0


def make_loop(events: Events, **settings: float) -> tuple[ControlLoop, SimTransport, VirtualClock]:
    clock = VirtualClock()
    transport = open_transport("sim://?seed=1", clock=clock)
    assert isinstance(transport, SimTransport)
    loop = ControlLoop(ReferencePumpDriver(transport), kernel_config(**settings), clock, events)
    return loop, transport, clock


def plan() -> InfusionPlan:
    return InfusionPlan(rate_ml_h=RATE, volume_ml=VOLUME, syringe_diameter_mm=26.59)


def test_pause_stops_the_pump_within_one_tick_and_resume_completes_the_dose() -> None:
    events = Events()
    loop, transport, clock = make_loop(events)
    seen: dict[str, float] = {}

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        t = clock.now()
        if "paused_at" not in seen and t >= 60.0:
            loop.request_pause("test: operator pause")
            seen["paused_at"] = t
        if "paused_at" in seen and out.state == "paused" and "stopped_at" not in seen:
            seen["stopped_at"] = t
            seen["infused_at_pause"] = transport.pump.value("infused_ml")
        if "stopped_at" in seen and "resumed_at" not in seen and t >= seen["stopped_at"] + 120.0:
            # Two minutes paused: the motor is off. The plunger creeps on only while the drive and the
            # line relax the pressure they stored (the plant, not the pump): far below the 1 mL the
            # programmed rate would have given.
            seen["moved_while_paused"] = transport.pump.value("infused_ml") - seen["infused_at_pause"]
            seen["motor_running"] = transport.pump.value("motor_running")
            loop.request_resume("test: operator resume")
            seen["resumed_at"] = t

    loop.on_tick = on_tick
    result = asyncio.run(loop.run(plan()))
    assert result.state == "complete", result
    assert seen["stopped_at"] - seen["paused_at"] <= 0.1 + 1e-9  # the next tick
    assert abs(seen["moved_while_paused"]) < 0.1 * RATE * 120.0 / 3600.0
    assert seen["motor_running"] == 0
    assert math.isclose(result.delivered_ml, VOLUME, rel_tol=0.02)
    assert [f["reason"] for f in events.named("paused")] == ["test: operator pause"]
    assert [f["reason"] for f in events.named("resumed")] == ["test: operator resume"]
    # The pause lengthened the run by the time paused: no catch-up above the programmed rate.
    assert clock.now() > VOLUME / RATE * 3600.0 + 110.0


def test_a_rate_request_changes_the_pump_rate() -> None:
    events = Events()
    loop, transport, clock = make_loop(events)
    rates: list[float] = []

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        if clock.now() >= 30.0 and not rates:
            loop.request_rate(2 * RATE, "test: phase")
            rates.append(out.rate_ml_h)
        elif rates and clock.now() >= 90.0 and len(rates) == 1:
            rates.append(transport.pump.value("rate_ml_h"))

    loop.on_tick = on_tick
    result = asyncio.run(loop.run(plan()))
    assert result.state == "complete"
    assert events.named("rate_changed")[0]["rate_ml_h"] == 2 * RATE
    assert math.isclose(rates[1], 2 * RATE, rel_tol=0.15)  # the pump was told the new rate


def test_a_refused_rate_latches_an_alarm_and_ends_the_run() -> None:
    events = Events()
    loop, _transport, clock = make_loop(events)

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        if clock.now() >= 30.0 and not events.named("request_refused"):
            loop.request_rate(math.nan, "test: corrupt schedule")

    loop.on_tick = on_tick
    result = asyncio.run(loop.run(plan()))
    assert result.reason == "interlock"
    assert "rate_command_invalid" in result.alarms
    assert events.named("request_refused")[0]["alarm"] == "rate_command_invalid"


def test_a_request_the_state_does_not_allow_is_logged_and_dropped() -> None:
    events = Events()
    loop, _transport, clock = make_loop(events)

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        if clock.now() >= 30.0 and not events.named("request_refused"):
            loop.request_resume("test: resume while running")

    loop.on_tick = on_tick
    result = asyncio.run(loop.run(plan()))
    assert result.state == "complete"
    refused = events.named("request_refused")[0]
    assert refused == {"request": "resume", "state": "running"}


def test_small_steps_in_one_direction_add_up_and_reach_the_pump() -> None:
    """Each requested step is below the loop's deadband; their sum is not, and the pump must follow.
    (Feed-forward only, so the kernel's output moves exactly by the requested steps.)"""
    events = Events()
    loop, transport, clock = make_loop(events, kp_per_s=0.0, ki_per_s2=0.0)
    rates: list[float] = []
    target = RATE * 0.8

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        t = clock.now()
        if t >= 30.0 and not rates:
            rate = RATE * (1 - 0.002 * round((t - 30.0) / 0.1))  # 0.2 % less per tick
            if rate > target:
                loop.request_rate(rate, "test: slow taper")
            else:
                rates.append(transport.pump.value("rate_ml_h"))

    loop.on_tick = on_tick
    asyncio.run(loop.run(plan()))
    assert rates, "the taper did not finish"
    assert math.isclose(rates[0], target, rel_tol=0.03)


#: A high-resistance line (hw-sim ``HIGH_RESISTANCE_MMHG_S_PER_ML``: 4× the nominal 1 mmHg per mL/h).
HIGH_RESISTANCE_MMHG_S_PER_ML = 14_400.0


def pause_at_90_ml_h(resistance: float | None, **settings: float) -> tuple[RunResult, dict[str, float]]:
    """The heaviest standard protocol's rate (0.5 mg/kg over 40 min at 1 mg/mL, 120 kg: 90 mL/h) on a
    60 mL syringe: the operator pauses after 10 min (the line pressure has settled) for 2 min, then
    resumes to the end of a 20 mL dose."""
    capacity, diameter = next((c, d) for name, c, d in _core.SimPump.catalogue() if name == "bd-plastipak-60")
    clock = VirtualClock()
    plant = {} if resistance is None else {"resistance_mmhg_s_per_ml": resistance}
    pump = _core.SimPump("bd-plastipak-60", seed=1, **plant)
    transport = open_transport("sim://", clock=clock, pump=pump)
    config = kernel_config(
        syringe_diameter_mm=diameter, syringe_capacity_ml=capacity, syringe_fill_ml=capacity, **settings
    )
    loop = ControlLoop(ReferencePumpDriver(transport), config, clock, Events())
    seen: dict[str, float] = {}

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        t = clock.now()
        if "paused_at" not in seen and t >= 600.0:
            loop.request_pause("test: operator pause")
            seen["paused_at"] = t
            seen["pressure_at_pause_mmhg"] = telemetry.pressure_mmhg
            seen["infused_at_pause_ml"] = pump.value("infused_ml")
        if "paused_at" in seen and "resumed_at" not in seen and t >= seen["paused_at"] + 120.0:
            seen["moved_while_paused_ml"] = pump.value("infused_ml") - seen["infused_at_pause_ml"]
            loop.request_resume("test: operator resume")
            seen["resumed_at"] = t

    loop.on_tick = on_tick
    result = asyncio.run(loop.run(InfusionPlan(rate_ml_h=90.0, volume_ml=20.0, syringe_diameter_mm=diameter)))
    return result, seen


def test_a_two_minute_pause_at_90_ml_h_raises_no_alarm() -> None:
    # The nominal line runs at ~100 mmHg at 90 mL/h: under the default 300 mmHg threshold, and the drive
    # that relaxes once the motor stops pushes the plunger on by C_d·Δp ≈ 0.41 µL/mmHg × 90 mmHg
    # ≈ 0.04 mL, which the kernel expects while holding (uncommanded_volume_ml counts beyond it).
    result, seen = pause_at_90_ml_h(None)
    assert result.state == "complete" and not result.alarms, result
    assert "resumed_at" in seen
    assert 90.0 <= seen["pressure_at_pause_mmhg"] <= 110.0
    assert 0.02 < seen["moved_while_paused_ml"] < 0.1
    assert math.isclose(result.delivered_ml, 20.0, rel_tol=0.02)


def test_a_two_minute_pause_at_90_ml_h_on_a_high_resistance_line_raises_no_alarm() -> None:
    # The threshold is raised above the line's ~370 mmHg working pressure so the run can go on at all.
    # The drive relaxing after the pause pushes the plunger on by C_d·Δp ≈ 0.15 mL, three times
    # uncommanded_volume_ml (0.05 mL): the kernel expects that release while holding (it alarmed before).
    result, seen = pause_at_90_ml_h(HIGH_RESISTANCE_MMHG_S_PER_ML, occlusion_threshold_mmhg=500.0)
    assert seen["pressure_at_pause_mmhg"] > 350.0
    assert result.state == "complete" and not result.alarms, result


@pytest.mark.parametrize("failed_reads", [0, 1, 3])
def test_a_resume_asked_with_the_new_syringe_waits_for_its_first_sample(failed_reads: int) -> None:
    """The operator loads the new syringe and resumes at once (both in one tick): the resume reaches
    the kernel once a sample has given the new plunger's position — the next tick, or after the reads
    that failed on the way — and the dose completes over the two syringes without a refusal or an
    alarm."""
    events = Events()
    loop, transport, clock = make_loop(events)
    stage: list[str] = []
    applied: dict[str, float] = {}
    failing = [0]
    for name in ("read_telemetry", "heartbeat_and_read_telemetry"):
        read = getattr(loop.driver, name)

        async def flaky(read: Any = read) -> Any:
            if failing[0] > 0:
                failing[0] -= 1
                raise TransportError("sim", "test: the read after loading failed")
            return await read()

        setattr(loop.driver, name, flaky)

    def on_tick(out, telemetry) -> None:  # type: ignore[no-untyped-def]
        if not stage and out.delivered_ml >= VOLUME / 2 and out.state == "running":
            loop.request_pause("test: syringe spent")
            stage.append("pausing")
        elif stage == ["pausing"] and out.state == "paused" and out.direction == "hold":
            loop.request_syringe_change("test: syringe spent")
            stage.append("changing")
        elif stage[-1:] == ["changing"] and out.state == "syringe_change":
            transport.pump.inject("fault_load_syringe", 1)
            loop.request_syringe_loaded(default_kernel_settings()["syringe_fill_ml"], "test: loaded")
            loop.request_resume("test: resumed with it")
            failing[0] = failed_reads
            applied["asked_at"] = clock.now()
            stage.append("asked")
        elif stage[-1:] == ["asked"] and out.state == "running":
            applied["running_at"] = clock.now()
            stage.append("running")
        elif clock.now() > 3 * VOLUME / RATE * 3600.0:
            loop.request_stop(by="protocol")  # never resumed: end the run

    loop.on_tick = on_tick
    result = asyncio.run(loop.run(InfusionPlan(RATE, VOLUME, 26.59, syringes=2)))
    assert result.state == "complete", result
    assert not events.named("request_refused")
    assert not events.named("alarm")
    assert [f["reason"] for f in events.named("resumed")] == ["test: resumed with it"]
    # Loaded at the tick after the request, resumed at the one after the first fresh sample.
    waited = 0.2 + 0.1 * failed_reads
    assert math.isclose(applied["running_at"] - applied["asked_at"], waited, abs_tol=1e-9), applied
    assert len(events.named("request_waits")) == failed_reads  # one per tick it waited
    assert math.isclose(result.delivered_ml, VOLUME, rel_tol=0.02)
