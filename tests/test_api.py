"""The public Python API (docs/api.md): ``import ketapump`` stays cheap and lists its names, pumps opened
by URL (the in-process simulator, ``ketapump sim`` over Modbus TCP), timeouts and the project's errors,
the kernel-guarded infusion (the control loop of ``ketapump run``), protocol sessions, and the
examples in ``examples/``, each run against the simulator and type-checked strictly."""

from __future__ import annotations

import asyncio
import os
import pydoc
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ketapump
from ketapump import _core
from ketapump.bridge import verify
from simhelpers import serving, sim_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


# ----- the package's face ----------------------------------------------------------------------------


def test_import_is_cheap_and_help_shows_every_public_name() -> None:
    done = _python(
        "-c",
        "import sys, ketapump; print(sorted(m for m in sys.modules if m.startswith('ketapump')))",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['ketapump', 'ketapump._core']"
    shown = pydoc.render_doc(ketapump, renderer=pydoc.plaintext)
    for name in set(ketapump.__all__) - {"__version__"}:
        assert name in shown, name
    for name in ("open_pump", "open_pump_async", "infuse", "infuse_async", "Session", "simulate"):
        assert f"{name}(" in shown, name  # documented with its signature, not merely listed


def test_every_public_name_resolves_from_its_door_and_nothing_else_does() -> None:
    assert set(ketapump.__all__) - {"__version__"} == set(ketapump._HOMES)
    for name in ketapump.__all__:
        assert getattr(ketapump, name) is not None
    assert (ROOT / "python" / "ketapump" / "py.typed").exists()
    with pytest.raises(AttributeError, match="no attribute 'ControlLoop'"):
        ketapump.ControlLoop  # noqa: B018 - the bridge's internals are not public


def test_the_examples_type_check_strictly() -> None:
    done = _python("-m", "mypy", "--strict", *sorted(str(p) for p in EXAMPLES.glob("*.py")))
    assert done.returncode == 0, done.stdout + done.stderr


# ----- pumps -------------------------------------------------------------------------------------------


def test_direct_control_of_a_simulated_pump_and_close_stops_the_motor() -> None:
    sim = _core.SimPump("bd-plastipak-50", seed=3, slack_taken_up=True)
    with ketapump.open_pump("sim://", sim_pump=sim, virtual_time=True) as pump:
        assert pump.info.scheme == "sim" and pump.info.lacks == frozenset()
        assert pump.syringe_diameter_mm == pytest.approx(26.59, abs=0.01)
        assert "reset" in pump.telemetry().pump_alarms
        pump.acknowledge_alarms()
        assert pump.rate_ml_h is None
        pump.rate_ml_h = 60.0
        assert pump.rate_ml_h == 60.0
        pump.start()
        pump.sleep(120.0)  # virtual time, with the watchdog refreshed
        sample = pump.telemetry()
        assert sample.motor_running and not sample.pump_alarms
        # Two minutes at 60 mL/h with the slack taken up: 2 mL, as the simulator's own plunger says.
        assert pump.infused_ml == pytest.approx(2.0, rel=0.02)
        assert pump.infused_ml == pytest.approx(sim.value("infused_ml"), rel=1e-6)  # the counter, as read
        assert sim.run_mode == 1
    assert sim.run_mode == 0  # closing the handle stopped the motor


def test_refusals_and_bad_input_raise_the_projects_errors() -> None:
    with pytest.raises(ketapump.ConfigurationError, match="unknown scheme"):
        ketapump.open_pump("bogus://x")
    with pytest.raises(ketapump.ConfigurationError, match="syringe"):
        ketapump.open_pump("sim://", syringe="no-such-syringe")
    with pytest.raises(ketapump.ConfigurationError, match="time_scale"):
        ketapump.simulate(time_scale=0.0)  # refused, never taken for real time
    with pytest.raises(ketapump.ConfigurationError, match="virtual_time"):
        ketapump.open_pump("modbus-tcp://127.0.0.1:1", virtual_time=True)
    pump = ketapump.simulate()
    with pump:
        with pytest.raises(ketapump.PumpRefusedError) as refused:
            pump.rate_ml_h = 5_000.0  # above the pump's range: Modbus exception 3
        assert refused.value.code == 3 and isinstance(refused.value, ketapump.TransportError)
        assert pump.rate_ml_h is None  # a refused rate is not remembered as set
        with pytest.raises(ketapump.ConfigurationError, match="seconds"):
            pump.sleep(-1.0)
    with pytest.raises(ketapump.ConfigurationError, match="closed"):
        pump.telemetry()
    pump.close()  # twice is harmless


def test_an_unreachable_pump_fails_within_its_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(ketapump.TransportError):
        ketapump.open_pump("modbus-tcp://127.0.0.1:1?timeout=0.2&retries=1")
    assert time.monotonic() - started < 10.0  # the transport's 2 × 0.2 s, plus start-up; never a hang


def test_the_handle_keeps_the_watchdog_in_real_time_over_modbus_tcp() -> None:
    async def body() -> None:
        sim = _core.SimPump("bd-plastipak-50", seed=1, slack_taken_up=True)
        async with serving(sim, modbus_rtu=False, nesp=False) as server:
            url = f"modbus-tcp://{server.endpoints['modbus_tcp']}"
            async with await ketapump.open_pump_async(url) as pump:
                await pump.acknowledge_alarms()
                await pump.set_rate_ml_h(30.0)
                await pump.start()
                # Three times the pump's watchdog with no call of ours: the handle's keep-alive holds it.
                watchdog_s = (await pump.telemetry(), server.advanced().value("watchdog_ms"))[1] / 1000.0
                await asyncio.sleep(3 * watchdog_s)
                sample = await pump.telemetry()
                assert sample.motor_running and "watchdog" not in sample.pump_alarms
            assert server.advanced().run_mode == 0

    asyncio.run(body())


def test_close_ends_the_keep_alive_and_stops_the_motor_wherever_a_heartbeat_is_in_flight() -> None:
    """The close lands at each event-loop step of a heartbeat in flight (a heartbeat takes a few steps on
    loopback; twelve cover it with room). Where the cancellation meets the reply arriving, Python 3.11's
    ``asyncio.wait_for`` (inside pymodbus's client, which this link once used) drops it: the keep-alive
    must still end, and the close must still stop the motor within its own deadline (it once waited on
    that keep-alive forever)."""

    async def body() -> None:
        sim = _core.SimPump("bd-plastipak-50", seed=1, slack_taken_up=True)
        async with serving(sim, modbus_rtu=False, nesp=False) as server:
            url = f"modbus-tcp://{server.endpoints['modbus_tcp']}"
            for steps in range(12):
                pump = await ketapump.open_pump_async(url)
                await pump.acknowledge_alarms()
                await pump.set_rate_ml_h(30.0)
                await pump.start()
                assert server.advanced().run_mode == 1
                while not pump._lock.locked():  # the keep-alive's heartbeat holds the link
                    await asyncio.sleep(0)
                for _ in range(steps):
                    await asyncio.sleep(0)
                keepalive = pump._keepalive
                started = time.monotonic()
                async with asyncio.timeout(pump.close_deadline_s):  # (the old close swallowed this)
                    await pump.close()
                assert time.monotonic() - started < pump.close_deadline_s, steps
                assert keepalive is not None and keepalive.done(), steps
                assert server.advanced().run_mode == 0, steps

    asyncio.run(body())


def test_close_on_a_slow_link_stops_the_motor_after_the_heartbeat_in_flight() -> None:
    """Replies delayed to most of the transport's timeout: the close lands at points through a heartbeat
    in flight, waits for it, and the stop still gets its own deadline (it once shared one with that wait)."""

    async def body() -> None:
        sim = _core.SimPump("bd-plastipak-50", seed=1, slack_taken_up=True)
        async with serving(sim, modbus_rtu=False, nesp=False) as server:
            url = f"modbus-tcp://{server.endpoints['modbus_tcp']}"
            for into_heartbeat_s in (0.0, 0.05, 0.1, 0.14):
                pump = await ketapump.open_pump_async(url)
                await pump.acknowledge_alarms()
                await pump.set_rate_ml_h(30.0)
                await pump.start()
                sim.inject("fault_comm_delay_ms", 150)  # the transport's timeout is 0.2 s
                while not pump._lock.locked():
                    await asyncio.sleep(0)
                await asyncio.sleep(into_heartbeat_s)
                started = time.monotonic()
                async with asyncio.timeout(pump.close_deadline_s):
                    await pump.close()
                assert time.monotonic() - started < pump.close_deadline_s, into_heartbeat_s
                sim.inject("fault_comm_delay_ms", 0)
                assert server.advanced().run_mode == 0, into_heartbeat_s

    asyncio.run(body())


# ----- guarded infusions ------------------------------------------------------------------------------


def test_infuse_runs_the_kernel_guarded_loop_and_records_it(tmp_path: Path) -> None:
    ticks: list[ketapump.InfusionTick] = []
    log = tmp_path / "run.jsonl"
    with ketapump.simulate(seed=2) as pump:
        result = ketapump.infuse(pump, rate_ml_h=60.0, volume_ml=1.0, log=log, on_tick=ticks.append)
    assert (result.state, result.reason) == ("complete", "complete")
    assert result.delivered_ml == pytest.approx(1.0, rel=0.01)
    assert verify(log).ok
    assert [t.t_s for t in ticks] == sorted(t.t_s for t in ticks) and ticks[-1].state == "complete"
    assert max(t.rate_ml_h for t in ticks) <= 2 * 60.0  # the kernel's clamp, not a free-running motor
    records = log.read_text().count('"event":"command"')
    assert records >= 1  # the same audit records as `ketapump run`


def test_infuse_stops_on_an_interlock(tmp_path: Path) -> None:
    sim = _core.SimPump("bd-plastipak-50", seed=4)
    sim.schedule(30.0, "fault_occlusion", 1.0)
    with ketapump.open_pump("sim://", sim_pump=sim, virtual_time=True) as pump:
        result = ketapump.infuse(pump, rate_ml_h=60.0, volume_ml=5.0, log=tmp_path / "o.jsonl")
    assert result.state == "alarm" and result.reason == "interlock"
    assert result.delivered_ml < 5.0
    assert sim.run_mode in (0, 2)  # stopped (or retracting: the kernel's occlusion back-off)


def test_infuse_refuses_nonsense_before_anything_moves(tmp_path: Path) -> None:
    with ketapump.simulate() as pump:
        for rate, volume in (
            (0.0, 1.0),
            (float("nan"), 1.0),
            (60.0, -1.0),
            (True, 1.0),
            (60.0, float("inf")),
        ):
            with pytest.raises(ketapump.ConfigurationError):
                ketapump.infuse(pump, rate_ml_h=rate, volume_ml=volume, log=tmp_path / "x.jsonl")
        assert not (tmp_path / "x.jsonl").exists()
        assert pump.infused_ml == 0.0


def test_cancelling_an_async_infusion_stops_the_pump(tmp_path: Path) -> None:
    async def body() -> None:
        sim = _core.SimPump("bd-plastipak-50", seed=5, slack_taken_up=True)
        pump = await ketapump.open_pump_async("sim://", sim_pump=sim, virtual_time=True)
        started = asyncio.Event()

        def on_tick(tick: ketapump.InfusionTick) -> None:
            if tick.state == "running" and tick.delivered_ml > 0.1:
                started.set()

        async with pump:
            task = asyncio.create_task(
                ketapump.infuse_async(pump, 60.0, 10.0, log=tmp_path / "c.jsonl", on_tick=on_tick)
            )
            await started.wait()
            assert sim.run_mode == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert sim.run_mode == 0
        assert verify(tmp_path / "c.jsonl").ok

    asyncio.run(body())


def test_several_pumps_infuse_concurrently(tmp_path: Path) -> None:
    async def body() -> None:
        pumps = [await ketapump.simulate_async(seed=seed) for seed in range(3)]
        results = await asyncio.gather(
            *(
                ketapump.infuse_async(p, rate_ml_h=rate, volume_ml=0.5, log=tmp_path / f"{i}.jsonl")
                for i, (p, rate) in enumerate(zip(pumps, (30.0, 60.0, 90.0), strict=True))
            )
        )
        for pump in pumps:
            await pump.close()
        assert [r.state for r in results] == ["complete"] * 3
        assert all(r.delivered_ml == pytest.approx(0.5, rel=0.01) for r in results)

    asyncio.run(body())


# ----- sessions ---------------------------------------------------------------------------------------


def test_a_session_takes_api_commands_and_emits_events(tmp_path: Path) -> None:
    patient = ketapump.Patient("api-test", weight_kg=70.0, height_cm=175.0, sex="male")
    session = ketapump.Session(
        "ketamine-depression",
        patient,
        operator_name="Dr Example",
        log=tmp_path / "audit.jsonl",
        course_db=ketapump.init_course(tmp_path / "course.sqlite3"),
        out=tmp_path,
    )
    actions: list[ketapump.ActionTaken] = []

    def on_event(event: ketapump.SessionEvent) -> None:
        if isinstance(event, ketapump.Tick) and event.phase == "infusion" and event.phase_elapsed_s > 120:
            session.stop("the operator ends it early")
        elif isinstance(event, ketapump.ActionTaken):
            actions.append(event)

    session.subscribe(on_event)
    outcome = session.run()
    assert outcome.log_verified and not outcome.complete
    assert outcome.result.delivered_mg < outcome.result.programmed_mg
    assert actions and actions[0].action == "stop" and actions[0].source == "api" and actions[0].accepted
    with pytest.raises(RuntimeError, match="already run"):
        session.run()


def test_an_invalid_session_writes_nothing(tmp_path: Path) -> None:
    patient = ketapump.Patient("api-test", weight_kg=70.0)
    with pytest.raises(ketapump.ConfigurationError):
        ketapump.Session("no-such-protocol", patient, log=tmp_path / "a.jsonl", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----- the examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("read_telemetry.py", "pump alarms:       reset"),
        ("infuse_guarded.py", "complete: delivered 1.0"),
        ("concurrent_pumps.py", "sim://: complete, delivered 0.500 mL"),
        ("session_callback_vitals.py", "complete: 35.0 of 35.0 mg"),
    ],
)
def test_each_example_runs_on_the_in_process_simulator(script: str, expect: str, tmp_path: Path) -> None:
    args = [str(tmp_path)] if script == "session_callback_vitals.py" else []
    done = _python(str(EXAMPLES / script), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expect in done.stdout


def test_the_pump_examples_run_against_ketapump_sim() -> None:
    scale = "10"
    with (
        sim_process("--no-modbus-rtu", "--no-nesp", "--time-scale", scale, "--seed", "1") as (_, one),
        sim_process("--no-modbus-rtu", "--no-nesp", "--time-scale", scale, "--seed", "2") as (_, two),
    ):
        first, second = (f"modbus-tcp://{e['modbus_tcp']}" for e in (one, two))
        done = _python(str(EXAMPLES / "read_telemetry.py"), first)
        assert done.returncode == 0, done.stderr
        assert f"pump:              {first}" in done.stdout
        done = _python(str(EXAMPLES / "infuse_guarded.py"), first, scale)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "complete: delivered" in done.stdout
        done = _python(str(EXAMPLES / "concurrent_pumps.py"), "--time-scale", scale, first, second)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": complete, delivered") == 2


def test_an_unreachable_pump_example_exits_69() -> None:
    done = _python(str(EXAMPLES / "read_telemetry.py"), "modbus-tcp://127.0.0.1:1?timeout=0.2&retries=0")
    assert done.returncode == 69 and "pump unreachable" in done.stderr
    assert "Traceback" not in done.stderr
    assert os.EX_UNAVAILABLE == 69
