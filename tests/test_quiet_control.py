"""A quiet loop: a 40-min session sends the pump a handful of rate commands, not one per tick, and the
pump always runs the rate the kernel accounts for (the loop adds no deadband of its own)."""

from __future__ import annotations

import asyncio

import pytest

from ketapump import _core
from ketapump.bridge import ControlLoop, InfusionPlan, syringe_spec
from ketapump.clock import VirtualClock
from ketapump.config import kernel_config
from ketapump.wire import PumpTelemetry, ReferencePumpDriver, SimTransport, open_transport
from test_bridge import Events

#: The issue's bound: at most this many rate commands in a 40-min session at any standard rate.
MAX_COMMANDS = 100


def forty_minutes(rate_ml_h: float, seed: int = 1) -> tuple[Events, list[tuple[float, float]], str]:
    """A 40-min infusion at ``rate_ml_h`` on the simulated pump with the shipped kernel settings.

    Returns the loop's events, and for every tick the rate the pump was running at the tick's start next
    to the rate the kernel commanded on the tick before."""
    clock = VirtualClock()
    capacity, diameter = syringe_spec("bd-plastipak-60")
    transport = open_transport(f"sim://?seed={seed}&syringe=bd-plastipak-60", clock=clock)
    assert isinstance(transport, SimTransport)
    config = kernel_config(
        syringe_diameter_mm=diameter, syringe_capacity_ml=capacity, syringe_fill_ml=capacity
    )
    events = Events()
    pairs: list[tuple[float, float]] = []
    commanded: list[float] = []

    def on_tick(out: _core.StepOutput, _telemetry: PumpTelemetry | None) -> None:
        if commanded:
            pairs.append((transport.pump.value("rate_ml_h"), commanded[0]))
        commanded[:] = [out.rate_ml_h] if out.direction == "forward" else []

    loop = ControlLoop(ReferencePumpDriver(transport), config, clock, events, on_tick=on_tick)
    plan = InfusionPlan(rate_ml_h=rate_ml_h, volume_ml=rate_ml_h * 40.0 / 60.0, syringe_diameter_mm=diameter)
    result = asyncio.run(loop.run(plan))
    return events, pairs, result.state


@pytest.mark.parametrize("rate_ml_h", [1.0, 5.0, 52.5])
def test_a_forty_minute_session_sends_at_most_100_rate_commands(rate_ml_h: float) -> None:
    events, _pairs, state = forty_minutes(rate_ml_h)
    assert state == "complete"
    commands = [f for f in events.named("command") if f["direction"] == "forward"]
    # Before the quiet controller: 23 927 at 5 mL/h, 8 078 at 52.5 mL/h (a command on almost every tick).
    assert 2 <= len(commands) <= MAX_COMMANDS, len(commands)
    assert commands[0]["rate_ml_h"] == 120.0  # the take-up, then the programmed rate
    assert commands[1]["rate_ml_h"] == rate_ml_h


def test_the_pump_runs_the_rate_the_kernel_commanded_on_every_tick() -> None:
    _events, pairs, _state = forty_minutes(5.0)
    assert len(pairs) > 20_000
    for running, commanded in pairs:
        # The rate register is an f32: equal to its precision.
        assert running == pytest.approx(commanded, rel=1e-6), (running, commanded)
