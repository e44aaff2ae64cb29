"""The bridge end to end against hw-sim: whole infusions, faults, a killed bridge and its resume,
the audit log of a real run, and unreachable endpoints."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from ketapump import _core
from ketapump.bridge import RecoveryError, audit, make_driver, recover_delivered_ml
from ketapump.bridge.loop import ControlLoop, InfusionPlan
from ketapump.clock import ScaledClock, VirtualClock
from ketapump.config import kernel_config
from ketapump.errors import AuditWriteError, ConfigurationError, TransportError
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport
from simhelpers import REGMAP, ketapump, serving, sim_process

EXIT_INTERLOCK = 3


async def pump_register(endpoint: str, name: str) -> float:
    host, port = endpoint.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=1)
    await client.connect()
    r = REGMAP[name]
    rr = await client.read_holding_registers(r.address, count=r.words, device_id=1)
    client.close()
    from ketapump.wire.regmap import decode  # noqa: PLC0415 - local helper import keeps the header short

    return decode(r, rr.registers)


async def acknowledge(endpoint: str) -> None:
    host, port = endpoint.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=1)
    await client.connect()
    await client.write_register(REGMAP["alarm_ack"].address, 1, device_id=1)
    client.close()


class Events:
    """Collects audit events in memory (for in-process runs whose record is not under test)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    warning = error = info

    def named(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self.events if e == event]


# ----- whole infusions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "scale"), [("modbus-tcp", "30"), ("nesp", "60")])
def test_forty_minute_infusion_delivers_within_one_percent(kind: str, scale: str, tmp_path: Path) -> None:
    """0.5 mg/kg over 40 min for 70 kg at 1 mg/mL: 35 mL at 52.5 mL/h, on hw-sim at 30× or 60× time."""
    serve = ["--no-modbus-rtu", "--no-nesp"] if kind == "modbus-tcp" else ["--no-modbus-rtu"]
    with sim_process("--time-scale", scale, *serve) as (_proc, endpoints):
        if kind == "modbus-tcp":
            # The pump's watchdog must outlast one retried request and a busy machine's jitter at this
            # scale: short attempts (0.05 s real) fit up to 38× (at 60× this was flaky under load: it
            # did not fit, and nothing said so; now it is refused up front).
            url = f"modbus-tcp://{endpoints['modbus_tcp']}?unit=1&timeout=0.05"
        else:
            url = f"nesp://{endpoints['nesp_pty']}?address=0&safe=0"
        log = tmp_path / "run.jsonl"
        result = ketapump(
            "run", "--pump", url, "--rate-ml-h", "52.5", "--volume-ml", "35", "--time-scale", scale,
            "--json", "--log", str(log),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["state"] == "complete"
        assert summary["delivered_ml"] == pytest.approx(35.0, rel=0.01)
        if kind == "modbus-tcp":
            # The pump's own counter, independent of the bridge's kernel.
            infused = asyncio.run(pump_register(str(endpoints["modbus_tcp"]), "infused_ml"))
            assert infused == pytest.approx(35.0, rel=0.01)
    assert audit.verify(log).ok
    assert ketapump("log", "verify", str(log)).returncode == 0


def test_rtu_at_20x_completes_with_the_timeout_the_readme_gives(tmp_path: Path) -> None:
    """README: at a high time scale give the URL a short timeout, e.g. timeout=0.05 over RTU at 20×
    (the default 0.2 s is refused there, naming the timeout)."""
    with sim_process("--time-scale", "20", "--no-modbus-tcp", "--no-nesp") as (_proc, endpoints):
        port = endpoints["modbus_rtu_pty"]
        args = ["--rate-ml-h", "52.5", "--volume-ml", "2", "--time-scale", "20", "--json"]
        refused = ketapump("run", "--pump", f"modbus-rtu://{port}", *args, "--log", str(tmp_path / "a.jsonl"))
        assert refused.returncode == os.EX_DATAERR and "shorter timeout" in refused.stderr
        log = tmp_path / "run.jsonl"
        result = ketapump("run", "--pump", f"modbus-rtu://{port}?timeout=0.05", *args, "--log", str(log))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["delivered_ml"] == pytest.approx(2.0, rel=0.01)
    assert audit.verify(log).ok


# ----- faults ------------------------------------------------------------------------------------


def test_occlusion_stops_the_pump_and_latches_within_the_kernel_bound() -> None:
    async def body() -> None:
        clock = VirtualClock()
        pump = _core.SimPump(seed=3, slack_taken_up=True)
        occluded_at = 600.0
        pump.schedule(occluded_at, "fault_occlusion", 1)
        transport = open_transport("sim://", clock=clock, pump=pump)
        assert isinstance(transport, RegisterTransport)
        events = Events()
        raised_at: list[float] = []
        before: list[float] = []

        def on_tick(out: _core.StepOutput, telemetry: Any) -> None:
            if clock.now() < occluded_at and telemetry is not None:
                before[:] = [telemetry.pressure_mmhg]
            if out.raised and not raised_at:
                raised_at.append(clock.now())

        loop = ControlLoop(ReferencePumpDriver(transport), kernel_config(), clock, events, on_tick=on_tick)
        result = await loop.run(InfusionPlan(rate_ml_h=5.0, volume_ml=5.0, syringe_diameter_mm=26.59))
        assert result.reason == "interlock"
        assert {"occlusion_pressure", "occlusion_slope"} & set(result.alarms)
        assert pump.run_mode == 0
        # S5: alarm and stop within C·(P_thr − P_0)/Q + 5 s (C of this plant: 2 µL/mmHg).
        bound = 0.002 * (300.0 - before[0]) / (5.0 / 3600.0) + 5.0
        assert raised_at[0] - occluded_at <= bound
        # Stop first, log second: the pump was stopped before the alarm record was written.
        names = [e for e, _ in events.events]
        assert names.index("alarm") > 0 and "session_ended" in names

    asyncio.run(body())


@pytest.mark.parametrize(
    ("endpoint", "fault"), [("tcp", "fault_comm_drop_pct"), ("rtu", "fault_comm_corrupt_pct")]
)
def test_lost_replies_end_in_a_transport_error_and_a_stopped_pump(endpoint: str, fault: str) -> None:
    async def body() -> None:
        pump = _core.SimPump(seed=5, slack_taken_up=True)
        async with serving(pump, time_scale=10.0) as server:
            clock = ScaledClock(10.0)
            server.clock = clock
            if endpoint == "tcp":
                url = f"modbus-tcp://{server.endpoints['modbus_tcp']}?timeout=0.2&retries=2"
            else:
                url = f"modbus-rtu://{server.endpoints['modbus_rtu_pty']}?timeout=0.2&retries=2"
            transport = open_transport(url)
            assert isinstance(transport, RegisterTransport)
            events = Events()
            loop = ControlLoop(
                ReferencePumpDriver(transport, watchdog_ms=2000),
                kernel_config(control_period_s=0.5, stale_after_s=2.5),
                clock,
                events,
            )
            pump.schedule(60.0, fault, 100)  # after a minute of pump time, every reply is lost
            result = await loop.run(InfusionPlan(rate_ml_h=60.0, volume_ml=10.0, syringe_diameter_mm=26.59))
            # Retries first, then a clear transport error naming the endpoint; the run ends in a safe stop,
            # by the kernel's staleness interlock or by the loop giving up on the link, whichever is first.
            failures = [f["error"] for f in events.named("telemetry_failed")]
            assert failures and all(url.split("?")[0] in e and "3 attempts" in e for e in failures)
            # (With the link dead the final stop cannot be confirmed either: reason "transport".)
            assert result.reason in {"transport", "interlock"}
            assert set(result.alarms) <= {"telemetry_stale"}
            # The pump is stopped: by the bridge's stop, or by its own watchdog when that was lost too.
            deadline = time.monotonic() + 2.0
            while pump.run_mode != 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pump.run_mode == 0

    asyncio.run(body())


def test_killed_bridge_stops_the_pump_by_its_watchdog_and_a_resume_recovers(tmp_path: Path) -> None:
    # Every endpoint served, as by default: the New Era port must not keep the Modbus watchdog fed.
    with sim_process() as (_proc, endpoints):
        endpoint = str(endpoints["modbus_tcp"])
        url = f"modbus-tcp://{endpoint}?unit=1"
        first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
        bridge = subprocess.Popen(
            [sys.executable, "-m", "ketapump", "run", "--pump", url, "--rate-ml-h", "120",
             "--volume-ml", "0.5", "--json", "--log", str(first)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # Wait until the pump is infusing for real (take-up done), then kill the bridge outright.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and asyncio.run(pump_register(endpoint, "infused_ml")) < 0.05:
                time.sleep(0.1)
            assert asyncio.run(pump_register(endpoint, "status")) == 1
            bridge.send_signal(signal.SIGKILL)
            bridge.wait()
            killed = time.monotonic()
            while asyncio.run(pump_register(endpoint, "status")) == 1 and time.monotonic() - killed < 5:
                time.sleep(0.02)
            stopped_after = time.monotonic() - killed
        finally:
            if bridge.poll() is None:
                bridge.kill()
        assert int(asyncio.run(pump_register(endpoint, "alarm_bits"))) & 0b10  # watchdog
        # Within the watchdog the bridge gave it (the heartbeat gap a retried request and a busy machine's
        # jitter can make at real time: 655 ms), plus this test's polling.
        watchdog_s = asyncio.run(pump_register(endpoint, "watchdog_ms")) / 1_000.0
        assert watchdog_s < 1.0
        assert stopped_after < watchdog_s + 0.5
        pump_counter = asyncio.run(pump_register(endpoint, "infused_ml"))
        line_mmhg = asyncio.run(pump_register(endpoint, "line_pressure_mmhg"))

        resumed = ketapump(
            "run", "--pump", url, "--rate-ml-h", "120", "--volume-ml", "0.5", "--json",
            "--log", str(second), "--resume", str(first),
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        summary = json.loads(resumed.stdout)
        assert summary["session_delivered_ml"] == pytest.approx(0.5, abs=0.01)
        records = [json.loads(line) for line in second.read_text().splitlines()]
        recovered = [r for r in records if r["event"] == "session_recovered"]
        # The resumed bridge read the pump's counter, not the record: at least what it was at the stop,
        # plus at most what the stopped pump still creeps on by while the line relaxes (the drive spring,
        # 0.41 µL/mmHg on this syringe, pushing the plunger until the line is back at rest; seconds on a
        # line with R·C ≈ 7 s).
        creep_ml = 0.41e-3 * max(line_mmhg, 0.0)
        assert recovered
        assert pump_counter - 1e-6 <= recovered[0]["pump_infused_ml"] <= pump_counter + creep_ml + 1e-3
        assert recovered[0]["recovered_ml"] > 0.04
        # The resumed run continues the same session, and the second file continues the first one's chain.
        first_session = {json.loads(line).get("session_id") for line in first.read_text().splitlines()[1:]}
        assert first_session == {r["session_id"] for r in records[1:-1]}
        assert records[-1]["event"] == "log_closed" and audit.verify(second).ok
        chained = audit.verify(second, expect_prev=audit.verify(first).final_hash)
        assert chained.ok, chained.reason


def _killed_run(endpoint: str, log: Path, *args: str) -> None:
    """``ketapump run`` on the pump at ``endpoint`` until it infuses for real, then killed outright (its
    record ends without its closing records, as a crash leaves it)."""
    bridge = subprocess.Popen(
        [sys.executable, "-m", "ketapump", "run", "--pump", f"modbus-tcp://{endpoint}?unit=1", "--json",
         "--log", str(log), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and asyncio.run(pump_register(endpoint, "infused_ml")) < 0.05:
            assert bridge.poll() is None, bridge.communicate()
            time.sleep(0.1)
        # A telemetry summary after the start (the recovery point, 10 s in) is in the record before the kill.
        while sum('"event":"telemetry"' in line for line in log.read_text().splitlines()) < 2:
            assert bridge.poll() is None, bridge.communicate()
            time.sleep(0.1)
    finally:
        bridge.kill()
        bridge.communicate()
    assert audit.verify(log).status == "closing_missing"


def test_a_resume_is_bound_to_its_record_order_and_pump(tmp_path: Path) -> None:
    """A resume continues exactly the recorded session on the recorded pump: every mismatch is refused
    with the field named (exit 65), before the pump is touched."""
    order = ("--rate-ml-h", "120", "--volume-ml", "1")
    with sim_process("--no-modbus-rtu", "--no-nesp") as (_proc, endpoints):
        endpoint = str(endpoints["modbus_tcp"])
        url = f"modbus-tcp://{endpoint}?unit=1"
        record = tmp_path / "first.jsonl"
        _killed_run(endpoint, record, *order)

        def resume(*args: str, record: Path = record) -> subprocess.CompletedProcess[str]:
            new = tmp_path / f"resume-{len(list(tmp_path.iterdir()))}.jsonl"
            return ketapump("run", "--pump", url, "--resume", str(record), "--log", str(new), *args)

        for args, field in (
            (("--rate-ml-h", "120", "--volume-ml", "50"), "volume_ml 50 is not the recorded 1"),
            (("--rate-ml-h", "60", "--volume-ml", "1"), "rate_ml_h 60 is not the recorded 120"),
            ((*order, "--syringe", "bd-plastipak-20"), "syringe_diameter_mm"),
        ):
            refused = resume(*args)
            assert refused.returncode == os.EX_DATAERR, refused.stderr
            assert "cannot resume: the order does not match the session record" in refused.stderr
            assert field in refused.stderr
        # An edited record: one telemetry summary's counter changed (the chain and the MAC catch it).
        edited = tmp_path / "edited.jsonl"
        lines = record.read_text().splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if '"event":"telemetry"' in line)
        lines[at] = lines[at].replace('"pump_infused_ml":', '"pump_infused_ml":1', 1)
        edited.write_text("".join(lines))
        refused = resume(*order, record=edited)
        assert refused.returncode == os.EX_DATAERR
        assert f"line {at + 1}: hash mismatch" in refused.stderr and "fails verification" in refused.stderr
        # Nothing above touched the pump: the record's own resume still recovers and completes.
        done = resume(*order, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["session_delivered_ml"] == pytest.approx(1.0, abs=0.02)


def test_a_resume_on_another_pump_or_a_fresh_one_is_refused(tmp_path: Path) -> None:
    order = ("--rate-ml-h", "120", "--volume-ml", "1")
    record = tmp_path / "first.jsonl"
    with sim_process("--no-modbus-rtu", "--no-nesp") as (_proc, endpoints):
        _killed_run(str(endpoints["modbus_tcp"]), record, *order)
    # Another session's record, continued on another pump (serial 2): refused by the pump's identity.
    scenario = tmp_path / "other-pump.toml"
    scenario.write_text("schema_version = 1\n[pump]\nserial = 2\n", encoding="utf-8")
    with sim_process("--no-modbus-rtu", "--no-nesp", "--scenario", str(scenario)) as (_proc, endpoints):
        url = f"modbus-tcp://{endpoints['modbus_tcp']}?unit=1"
        refused = ketapump(
            "run", "--pump", url, *order, "--resume", str(record), "--log", str(tmp_path / "b.jsonl")
        )
        assert refused.returncode == os.EX_DATAERR, refused.stderr
        assert "not the pump of the session record" in refused.stderr
        assert "serial_number 2 is not the recorded 1" in refused.stderr
    # The same model and serial, freshly powered: its counter is below the record.
    with sim_process("--no-modbus-rtu", "--no-nesp") as (_proc, endpoints):
        asyncio.run(acknowledge(str(endpoints["modbus_tcp"])))  # not a power loss: the counters are live
        url = f"modbus-tcp://{endpoints['modbus_tcp']}?unit=1"
        refused = ketapump(
            "run", "--pump", url, *order, "--resume", str(record), "--log", str(tmp_path / "c.jsonl")
        )
        assert refused.returncode == os.EX_DATAERR
        assert "below the record" in refused.stderr


def test_the_recovery_window_is_the_recorded_rate_not_the_new_one() -> None:
    records = [
        {"event": "session_started", "rate_ml_h": 6.0},
        {
            "event": "telemetry",
            "pump_infused_ml": 1.0,
            "pump_infused_ml_at_start": 0.0,
            "delivered_ml": 1.0,
            "session_delivered_ml": 1.0,
        },
    ]
    slack_s = 20.0
    # At 6 mL/h, 20 s deliver 0.033 mL: a counter 0.5 mL on is more than the recorded session could do.
    with pytest.raises(RecoveryError, match="exceeds what the session could have delivered"):
        recover_delivered_ml(records, 1.5, frozenset(), rate_ml_h=6.0, slack_s=slack_s)
    # (At the 1200 mL/h ceiling the same counter would pass: the window must come from the record.)
    assert recover_delivered_ml(records, 1.5, frozenset(), rate_ml_h=1200.0, slack_s=slack_s) == 1.5


# ----- the audit log of a real run ---------------------------------------------------------------


def test_log_verify_on_a_real_run_names_the_damaged_line(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    result = ketapump("run", "--pump", "sim://", "--rate-ml-h", "60", "--volume-ml", "1", "--log", str(log))
    assert result.returncode == 0, result.stderr
    assert ketapump("log", "verify", str(log)).returncode == 0
    lines = log.read_text().splitlines(keepends=True)
    events = [json.loads(line)["event"] for line in lines]
    for kind in ("session_started", "state_transition", "command", "telemetry", "session_ended"):
        assert kind in events
    damaged = {
        "edited": [*lines[:5], lines[5].replace('"info"', '"debug"'), *lines[6:]],
        "deleted": lines[:5] + lines[6:],
        "swapped": [*lines[:5], lines[6], lines[5], *lines[7:]],
    }
    for name, content in damaged.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text("".join(content))
        verdict = ketapump("log", "verify", str(bad))
        assert verdict.returncode == os.EX_DATAERR, name
        assert "line 6" in verdict.stderr, (name, verdict.stderr)


# ----- unreachable endpoints ---------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "url",
    [
        f"modbus-tcp://127.0.0.1:{_closed_port()}?timeout=0.3&retries=1",
        "modbus-rtu:///dev/pts/9999?timeout=0.3&retries=1",
        "nesp:///dev/pts/9999?timeout=0.3&retries=1",
    ],
    ids=["closed-port", "missing-rtu-pty", "missing-nesp-pty"],
)
def test_unreachable_endpoints_fail_fast_naming_the_endpoint(url: str, tmp_path: Path) -> None:
    t = time.monotonic()
    log = str(tmp_path / "l")
    result = ketapump("run", "--pump", url, "--rate-ml-h", "10", "--volume-ml", "1", "--log", log)
    elapsed = time.monotonic() - t
    assert result.returncode == os.EX_UNAVAILABLE, result.stderr
    assert url.split("?", maxsplit=1)[0] in result.stderr
    assert elapsed < 10  # interpreter start-up included; the transport's own bound is 0.6 s


def test_an_unresponsive_pump_fails_within_its_bound_with_reasons(tmp_path: Path) -> None:
    """A pump that accepts the connection and never answers: the run fails within timeout × (retries +
    1) + one control period (the old loop asked the silent pump to stop, a second full retry round), and
    every retry warning says why."""
    timeout_s, retries = 1.0, 2
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        url = f"modbus-tcp://127.0.0.1:{silent.getsockname()[1]}?timeout={timeout_s:g}&retries={retries}"
        clock = ScaledClock()
        config = kernel_config()
        period_s = float(config.as_dict()["control_period_s"])
        driver = make_driver(url, clock, period_s, 1.0)
        loop = ControlLoop(driver, config, clock, Events())

        async def body() -> float:
            start = time.monotonic()
            with pytest.raises(TransportError, match="no answer within 1 s after 3 attempts"):
                await loop.run(InfusionPlan(rate_ml_h=10.0, volume_ml=1.0, syringe_diameter_mm=26.59))
            return time.monotonic() - start

        elapsed = asyncio.run(body())
        bound = timeout_s * (retries + 1) + period_s
        assert timeout_s * (retries + 1) - 0.05 <= elapsed <= bound + 0.5, elapsed
        # The command line: exit 69 naming the endpoint, and no retry warning without its reason.
        done = ketapump(
            "run", "--pump", url, "--rate-ml-h", "10", "--volume-ml", "1", "--log", str(tmp_path / "l")
        )
    assert done.returncode == os.EX_UNAVAILABLE, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "failed (attempt" in line]
    assert len(warnings) == retries + 1
    assert all("no answer within 1 s" in line for line in warnings), warnings


def test_a_run_is_refused_before_the_pump_is_touched_naming_value_and_limit(tmp_path: Path) -> None:
    """A rate that would never end (1e-9 mL/h), a port out of range and an unwritable --log are each
    refused at once, naming the value and the limit, and nothing is written."""
    log = tmp_path / "run.jsonl"
    run = ["run", "--pump", "sim://", "--volume-ml", "1", "--log", str(log)]
    slow = ketapump(*run, "--rate-ml-h", "1e-9")
    assert slow.returncode == os.EX_DATAERR
    assert "rate_ml_h 1e-09 is below the minimum min_rate_ml_h (0.1)" in slow.stderr
    fast = ketapump(*run, "--rate-ml-h", "1000")
    assert "rate_ml_h 1000 is above the hard limit max_rate_ml_h (120)" in fast.stderr
    port = ketapump("run", "--pump", "modbus-tcp://127.0.0.1:99999", "--rate-ml-h", "10", "--volume-ml", "1")
    assert port.returncode == os.EX_DATAERR and "has port 99999, outside [1, 65535]" in port.stderr
    blocker = tmp_path / "a-file"
    blocker.touch()
    unwritable = ketapump(*run[:-1], str(blocker / "run.jsonl"), "--rate-ml-h", "10")
    assert unwritable.returncode == os.EX_CANTCREAT
    assert f"--log {blocker / 'run.jsonl'}: cannot create this file: {blocker} is not a directory" in (
        unwritable.stderr
    )
    assert not log.exists()


def test_wrong_new_era_address_times_out_naming_the_endpoint(tmp_path: Path) -> None:
    with sim_process("--no-modbus-tcp", "--no-modbus-rtu") as (_proc, endpoints):
        url = f"nesp://{endpoints['nesp_pty']}?address=5&safe=0&timeout=0.3&retries=1"
        t = time.monotonic()
        log = str(tmp_path / "l")
        result = ketapump("run", "--pump", url, "--rate-ml-h", "10", "--volume-ml", "1", "--log", log)
        elapsed = time.monotonic() - t
    assert result.returncode == os.EX_UNAVAILABLE, result.stderr
    assert "address=5" in result.stderr
    assert elapsed < 10


def test_an_audit_write_failure_stops_the_pump() -> None:
    """If the record cannot be written, the pump must not run on unrecorded."""

    class FailingLog(Events):
        def info(self, event: str, **fields: Any) -> None:
            if event == "telemetry" and self.named("telemetry"):
                raise AuditWriteError("/var/log/ketapump/run.jsonl", "No space left on device")
            super().info(event, **fields)

        warning = error = info

    async def body() -> None:
        clock = VirtualClock()
        pump = _core.SimPump(seed=8, slack_taken_up=True)
        transport = open_transport("sim://", clock=clock, pump=pump)
        assert isinstance(transport, RegisterTransport)
        loop = ControlLoop(ReferencePumpDriver(transport), kernel_config(), clock, FailingLog())
        with pytest.raises(AuditWriteError):
            await loop.run(InfusionPlan(rate_ml_h=60.0, volume_ml=10.0, syringe_diameter_mm=26.59))
        assert pump.run_mode == 0
        assert 0 < pump.value("infused_ml") < 1.0  # it had been infusing for ~10 s

    asyncio.run(body())


def test_records_carry_session_and_pump_ids(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    assert (
        ketapump(
            "run", "--pump", "sim://", "--rate-ml-h", "60", "--volume-ml", "0.2", "--log", str(log)
        ).returncode
        == 0
    )
    records = [json.loads(line) for line in log.read_text().splitlines()][1:]
    closing = records.pop()
    assert closing["event"] == "log_closed" and closing["records"] == len(records) + 2
    sessions = {r["session_id"] for r in records}
    assert len(sessions) == 1 and all(r["pump"] == "sim://" for r in records)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert all(r["timestamp"].endswith("Z") for r in records)


# ----- safety paths of the loop ------------------------------------------------------------------


def _sim_loop(
    pump: _core.SimPump, driver_class: type[ReferencePumpDriver] = ReferencePumpDriver, **settings: Any
):
    clock = VirtualClock()
    transport = open_transport("sim://", clock=clock, pump=pump)
    assert isinstance(transport, RegisterTransport)
    events = Events()
    return ControlLoop(driver_class(transport), kernel_config(**settings), clock, events), events


PLAN = InfusionPlan(rate_ml_h=60.0, volume_ml=5.0, syringe_diameter_mm=26.59)


@pytest.mark.parametrize(("by", "who"), [("operator", "eng A"), ("operator", None), ("protocol", None)])
def test_a_stop_is_recorded_and_ended_in_the_name_of_whoever_asked(by: str, who: str | None) -> None:
    loop, events = _sim_loop(_core.SimPump(seed=1, slack_taken_up=True))
    loop.on_tick = lambda out, _t: loop.request_stop(by, who=who) if out.delivered_ml > 0.5 else None
    result = asyncio.run(loop.run(PLAN))
    assert (result.state, result.reason) == ("stopped", by)
    (ended,) = events.named("session_ended")
    assert ended["reason"] == by
    if by == "operator":
        (stop,) = events.named("operator_stop")
        assert stop.get("operator") == who and not events.named("automatic_stop")
    else:
        # An automatic rule's stop never reads as an operator's.
        assert not events.named("operator_stop") and [e["by"] for e in events.named("automatic_stop")] == [by]


def test_run_records_its_operator_and_refuses_a_blank_name(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    args = ("run", "--pump", "sim://", "--rate-ml-h", "60", "--volume-ml", "0.2", "--log", str(log))
    named = ketapump(*args, "--operator", "eng A")
    assert named.returncode == 0, named.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["operator"] for r in records if r["event"] == "run_operator"] == ["eng A"]
    blank = ketapump(*args[:-1], str(tmp_path / "blank.jsonl"), "--operator", "  ")
    assert blank.returncode == 2 and "--operator" in blank.stderr and "Traceback" not in blank.stderr
    assert not (tmp_path / "blank.jsonl").exists()


def test_occlusion_back_off_retracts_before_the_run_ends() -> None:
    pump = _core.SimPump(seed=11, slack_taken_up=True)
    pump.schedule(120.0, "fault_occlusion", 1)
    loop, events = _sim_loop(pump)
    result = asyncio.run(loop.run(PLAN))
    assert result.reason == "interlock"
    retracts = [c for c in events.named("command") if c["direction"] == "retract"]
    assert retracts, "the kernel's back-off was never relayed"
    assert pump.value("withdrawn_ml") > 0.05
    assert pump.line_pressure_mmhg < 150.0  # relieved from the 300 mmHg alarm threshold
    assert pump.run_mode == 0


def test_interlock_before_start_never_starts_the_pump() -> None:
    pump = _core.SimPump(seed=12, slack_taken_up=True)
    pump.inject("fault_air", 1)
    loop, events = _sim_loop(pump)
    result = asyncio.run(loop.run(PLAN))
    assert (result.reason, result.alarms, result.detail) == ("interlock", ("air_in_line",), "before start")
    assert events.named("alarm") and pump.value("infused_ml") == 0.0


def test_a_pump_reset_mid_run_ends_the_run() -> None:
    pump = _core.SimPump(seed=13, slack_taken_up=True)
    pump.schedule(60.0, "fault_reset", 1)
    loop, events = _sim_loop(pump)
    result = asyncio.run(loop.run(PLAN))
    assert result.reason == "pump_alarm" and "reset" in result.pump_alarms
    assert events.named("pump_alarm") and pump.run_mode == 0


class _FailedPressureSensor(ReferencePumpDriver):
    """The reference pump whose pressure sensor fails after a minute (reads NaN), however the loop
    reads it (alone, or with the heartbeat in one transaction)."""

    def _failed(self, t: Any) -> Any:
        if self.transport.pump.t_s > 60.0:  # type: ignore[attr-defined]
            return dataclasses.replace(t, pressure_mmhg=math.nan)
        return t

    async def read_telemetry(self) -> Any:
        return self._failed(await super().read_telemetry())

    async def heartbeat_and_read_telemetry(self) -> Any:
        return self._failed(await super().heartbeat_and_read_telemetry())


def test_a_failed_pressure_sensor_is_a_telemetry_fault_not_zero_pressure() -> None:
    loop, _events = _sim_loop(_core.SimPump(seed=14, slack_taken_up=True), _FailedPressureSensor)
    result = asyncio.run(loop.run(PLAN))
    assert (result.reason, result.alarms) == ("interlock", ("telemetry_invalid",))


def test_a_pump_without_pressure_sensor_needs_a_kernel_configured_so() -> None:
    class _NoSensor(ReferencePumpDriver):
        lacks = frozenset({"pressure_mmhg"})

    with pytest.raises(ConfigurationError, match="has_pressure_sensor"):
        _sim_loop(_core.SimPump(), _NoSensor)
    loop, _ = _sim_loop(_core.SimPump(seed=15, slack_taken_up=True), _NoSensor, has_pressure_sensor=False)
    assert asyncio.run(loop.run(PLAN)).state == "complete"


class _StopNeverAcknowledged(ReferencePumpDriver):
    async def stop(self) -> None:
        if self.transport.pump.t_s > 10.0:  # type: ignore[attr-defined]
            raise TransportError(self.transport.url, "stop: no answer")
        await super().stop()


def test_an_unconfirmed_final_stop_is_not_reported_complete() -> None:
    loop, events = _sim_loop(_core.SimPump(seed=16, slack_taken_up=True), _StopNeverAcknowledged)
    result = asyncio.run(loop.run(InfusionPlan(rate_ml_h=60.0, volume_ml=0.5, syringe_diameter_mm=26.59)))
    assert result.reason == "transport" and result.detail == "the pump did not confirm the stop"
    assert events.named("pump_stop_unconfirmed")


class _RefusesRateChanges(ReferencePumpDriver):
    """A pump that starts refusing rate commands after ten seconds (e.g. a lower limit of its own)."""

    async def set_rate_ml_h(self, rate_ml_h: float) -> None:
        if self.transport.pump.t_s > 10.0:  # type: ignore[attr-defined]
            raise PumpRefusedError(self.transport.url, "write 2 at 20 refused: Modbus exception 3", 3)
        await super().set_rate_ml_h(rate_ml_h)


def test_a_refused_command_stops_the_run_at_once() -> None:
    loop, events = _sim_loop(_core.SimPump(seed=17, slack_taken_up=True), _RefusesRateChanges)
    result = asyncio.run(loop.run(PLAN))
    assert result.reason == "pump_alarm" and "exception 3" in result.detail
    assert len(events.named("command_refused")) == 1 and not events.named("command_failed")
    assert loop.driver.transport.pump.run_mode == 0  # type: ignore[attr-defined]
