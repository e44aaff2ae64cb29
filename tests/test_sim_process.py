"""The real `ketapump sim` process: endpoint line, an independent Modbus master (mbpoll), clean
shutdown, and the pump-side watchdog when a client is killed mid-run."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from ketapump import _core
from ketapump.sim.scenario import load_scenario
from simhelpers import REGMAP, ketapump, sim_process

MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(
    MBPOLL is None and not os.environ.get("KETAPUMP_REQUIRE_MBPOLL"),
    reason="mbpoll is not installed (apt-get install mbpoll; .ci/run installs it and requires it)",
)


def test_prints_one_endpoint_line_and_shuts_down_cleanly_on_sigterm() -> None:
    with sim_process() as (proc, endpoints):
        assert set(endpoints) == {"modbus_tcp", "modbus_rtu_pty", "nesp_pty"}
        host, port = str(endpoints["modbus_tcp"]).rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        ptys = [str(endpoints["modbus_rtu_pty"]), str(endpoints["nesp_pty"])]
        assert all(os.path.exists(p) for p in ptys)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line
    # No orphaned PTYs: the slave paths are gone once the process has closed both ends.
    assert not any(os.path.exists(p) for p in ptys)


def test_subset_of_endpoints_and_a_fixed_port() -> None:
    with sim_process("--no-modbus-rtu", "--no-nesp") as (proc, endpoints):
        assert endpoints["modbus_rtu_pty"] is None and endpoints["nesp_pty"] is None
        fixed = int(str(endpoints["modbus_tcp"]).rsplit(":", 1)[1])
    with sim_process("--no-modbus-rtu", "--no-nesp", "--tcp-port", str(fixed)) as (proc, endpoints):
        assert endpoints["modbus_tcp"] == f"127.0.0.1:{fixed}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_a_bad_scenario_is_refused_with_every_problem(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(
        'schema_version = 1\n[pump]\nsyringe = "nope"\nseed = -1\n'
        '[[fault]]\nat_s = 1.0\nname = "fault_gremlin"\nvalue = 1\n'
    )
    result = ketapump("sim", "--scenario", str(scenario), timeout=60)
    assert result.returncode == os.EX_DATAERR
    assert result.stdout == ""
    for problem in ("pump.syringe", "pump.seed", "fault.0.name"):
        assert problem in result.stderr, result.stderr


def _mbpoll(*args: str) -> subprocess.CompletedProcess[str]:
    assert MBPOLL is not None
    return subprocess.run([MBPOLL, *args], capture_output=True, text=True, timeout=30, check=False)


def _values(output: str) -> dict[int, str]:
    values = {}
    for line in output.splitlines():
        if line.startswith("[") and "]:" in line:
            address, value = line[1:].split("]:", 1)
            values[int(address)] = value.strip()
    return values


@needs_mbpoll
def test_mbpoll_reads_identity_and_telemetry_and_is_refused_read_only_writes() -> None:
    with sim_process() as (_proc, endpoints):
        port = str(endpoints["modbus_tcp"]).rsplit(":", 1)[1]
        pty = str(endpoints["modbus_rtu_pty"])
        tcp = ["-m", "tcp", "-p", port, "-a", "1", "-0", "-1"]
        rtu = ["-m", "rtu", "-b", "19200", "-P", "none", "-a", "1", "-0", "-1"]
        for mode, host in ((tcp, "127.0.0.1"), (rtu, pty)):
            identity = _mbpoll(*mode, "-t", "4", "-r", "0", "-c", "4", host)
            assert identity.returncode == 0, identity.stderr
            assert _values(identity.stdout) == {0: "19280", 1: "1", 2: "100", 3: "1"}
            address = str(REGMAP["line_pressure_mmhg"].address)
            pressure = _mbpoll(*mode, "-t", "4:float", "-B", "-r", address, "-c", "1", host)
            assert pressure.returncode == 0, pressure.stderr
            assert float(_values(pressure.stdout)[int(address)]) == pytest.approx(10.0, abs=1.0)
            refused = _mbpoll(*mode, "-t", "4", "-r", "0", host, "5")
            assert refused.returncode == 1
            assert "Illegal data address" in refused.stdout + refused.stderr


CLIENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from pymodbus.client import AsyncModbusTcpClient

    async def main(host, port):
        c = AsyncModbusTcpClient(host, port=port, timeout=1)
        await c.connect()
        await c.write_register(23, 1, device_id=1)            # alarm_ack
        await c.write_registers(20, c.convert_to_registers(60.0, c.DATATYPE.FLOAT32), device_id=1)
        await c.write_register(24, 1, device_id=1)            # heartbeat
        await c.write_register(22, 1, device_id=1)            # run_mode = infuse
        print("running", flush=True)
        beat = 2
        while True:
            await c.write_register(24, beat % 65536, device_id=1)
            beat += 1
            await asyncio.sleep(0.05)

    host, port = sys.argv[1].rsplit(":", 1)
    asyncio.run(main(host, int(port)))
    """
)


def test_pump_watchdog_stops_the_motor_when_the_client_is_killed_mid_run() -> None:
    with sim_process("--no-modbus-rtu", "--no-nesp") as (_proc, endpoints):
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(endpoints["modbus_tcp"])], stdout=subprocess.PIPE, text=True
        )
        try:
            assert client.stdout is not None and client.stdout.readline().strip() == "running"
            time.sleep(1.0)
            assert asyncio.run(_status(str(endpoints["modbus_tcp"]))) == (1, 0)  # infusing, no alarm
            client.send_signal(signal.SIGKILL)
            client.wait()
            killed_at = time.monotonic()
            status = asyncio.run(_wait_for_stop(str(endpoints["modbus_tcp"]), deadline_s=3.0))
            elapsed = time.monotonic() - killed_at
        finally:
            if client.poll() is None:
                client.kill()
    assert status == (3, 2)  # alarm; alarm bit 1 = watchdog
    # The motor stops within the 500 ms period (plus polling latency in this test).
    assert elapsed < 1.5


async def _status(endpoint: str) -> tuple[int, int]:
    host, port = endpoint.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=1)
    await client.connect()
    rr = await client.read_holding_registers(REGMAP["status"].address, count=2, device_id=1)
    client.close()
    return rr.registers[0], rr.registers[1]


async def _wait_for_stop(endpoint: str, deadline_s: float) -> tuple[int, int]:
    end = time.monotonic() + deadline_s
    status = await _status(endpoint)
    while status[0] == 1 and time.monotonic() < end:
        await asyncio.sleep(0.02)
        status = await _status(endpoint)
    return status


def test_scenario_schedules_faults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'schema_version = 1\n[pump]\nsyringe = "bd-plastipak-20"\nseed = 3\n'
        '[[fault]]\nat_s = 2.0\nname = "fault_air"\nvalue = 1\n'
    )
    pump = load_scenario(path).build_pump()
    assert isinstance(pump, _core.SimPump)
    pump.advance_to(1.9)
    assert pump.value("air_in_line") == 0
    pump.advance_to(2.1)
    assert pump.value("air_in_line") == 1
    assert pump.value("syringe_diameter_mm") == pytest.approx(19.13, rel=1e-6)
