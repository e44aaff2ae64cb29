"""Every answer the bridge takes is the answer to its own request: replies delayed around the
transport's timeout (the simulator's ``fault_comm_delay_ms``) give the right data or a timeout, never
another request's data, over Modbus RTU, Modbus TCP and New Era.

And the end states on a link that goes away: ``ketapump run`` ends ``link_lost`` (exit 5) on every
transport when the simulator is killed mid-run; a finished ``nesp://`` run leaves no safe-mode alarm.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ketapump import _core
from ketapump.errors import PumpTimeoutError, TransportError
from ketapump.wire import ModbusRtuTransport, ModbusTcpTransport, NespTransport, open_transport
from simhelpers import ketapump, serving, sim_process
from wirehelpers import open_pty, read_until_quiet

REQUESTS = 1_000
EXIT_LINK_LOST = 5


def _words(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


#: Reads of equal sizes at different addresses, and what each must return.
READS: dict[tuple[int, int], list[int]] = {
    (20, 2): _words(123.0),  # rate_ml_h
    (10, 2): _words(26.59),  # syringe_diameter_mm
    (0, 2): [0x4B50, 1],  # vendor_id, model
    (25, 1): [777],  # watchdog_ms
    (3, 1): [1],  # map_version
}


def _pump() -> _core.SimPump:
    pump = _core.SimPump("bd-plastipak-50", seed=21)
    assert pump.write_registers(20, _words(123.0)) == 0
    assert pump.write_registers(25, [777]) == 0
    return pump


async def _hammer(
    transport: ModbusRtuTransport | ModbusTcpTransport, pump: _core.SimPump, timeout_ms: int
) -> Counter[str]:
    """REQUESTS reads, each with a reply delay drawn around the timeout (most below it, many above);
    counts the outcomes and fails on any read that returns another request's data."""
    rng = random.Random(20_261_206)
    outcomes: Counter[str] = Counter()
    await transport.connect()
    for _ in range(REQUESTS):
        address, count = rng.choice(list(READS))
        late = rng.random() < 0.3
        delay_ms = (
            rng.randint(timeout_ms * 4 // 5, timeout_ms * 3 // 2) if late else rng.randint(2, timeout_ms // 2)
        )
        pump.inject("fault_comm_delay_ms", delay_ms)
        try:
            words = await transport.read_registers(address, count)
        except (PumpTimeoutError, TransportError) as e:
            outcomes["timeout" if isinstance(e, PumpTimeoutError) else "link error"] += 1
            continue
        assert words == READS[address, count], f"read {count} at {address} got another request's data {words}"
        outcomes["right"] += 1
    await transport.close()
    return outcomes


def test_rtu_replies_around_the_timeout_give_the_right_data_or_a_timeout() -> None:
    async def body() -> tuple[Counter[str], ModbusRtuTransport]:
        pump = _pump()
        async with serving(pump, pace=False, modbus_tcp=False, nesp=False) as server:
            path = str(server.endpoints["modbus_rtu_pty"])
            transport = open_transport(f"modbus-rtu://{path}?timeout=0.04&retries=0")
            assert isinstance(transport, ModbusRtuTransport)
            transport.sync_register = 24  # the heartbeat, as the reference driver sets it
            return await _hammer(transport, pump, 40), transport

    outcomes, transport = asyncio.run(body())
    # Both outcomes happened many times: the test did put replies on both sides of the timeout...
    assert outcomes["right"] >= 100 and outcomes["timeout"] >= 100, outcomes
    # ...and late replies reached the master, which discarded them.
    assert transport.discarded >= 20 and transport.resyncs >= 20, (transport.discarded, transport.resyncs)


def test_rtu_without_a_sync_register_drains_a_reply_late_by_less_than_half_an_attempt() -> None:
    """The fallback (no register to write a nonce to) waits for the line to stay silent for half the
    attempt's budget: a reply late by less than that is drained, not taken for the next answer."""

    async def body() -> None:
        pump = _pump()
        async with serving(pump, pace=False, modbus_tcp=False, nesp=False) as server:
            path = str(server.endpoints["modbus_rtu_pty"])
            transport = open_transport(f"modbus-rtu://{path}?timeout=0.1&retries=0")
            assert isinstance(transport, ModbusRtuTransport) and transport.sync_register is None
            await transport.connect()
            assert await transport.read_registers(10, 2) == READS[10, 2]
            for _ in range(5):
                pump.inject("fault_comm_delay_ms", 120)  # 20 ms after the attempt gave up
                with pytest.raises(PumpTimeoutError):
                    await transport.read_registers(10, 2)
                pump.inject("fault_comm_delay_ms", 0)
                assert await transport.read_registers(20, 2) == READS[20, 2]
            assert transport.discarded >= 5
            await transport.close()

    asyncio.run(body())


def test_tcp_replies_around_the_timeout_give_the_right_data_or_a_timeout() -> None:
    """Modbus TCP's transaction id (checked by the bridge's master) and the reconnect after a failed
    attempt keep late replies out."""

    async def body() -> Counter[str]:
        pump = _pump()
        async with serving(pump, pace=False, modbus_rtu=False, nesp=False) as server:
            transport = open_transport(
                f"modbus-tcp://{server.endpoints['modbus_tcp']}?timeout=0.04&retries=0"
            )
            assert isinstance(transport, ModbusTcpTransport)
            return await _hammer(transport, pump, 40)

    outcomes = asyncio.run(body())
    assert outcomes["right"] >= 100 and outcomes["timeout"] >= 100, outcomes


def test_new_era_replies_around_the_timeout_give_the_right_answer_or_a_timeout() -> None:
    expected = {
        "DIA": "00S26.59",
        "RAT": "00S52.50MH",
        "VOL": "00S0.000ML",
        "DIS": "00SI0.000W0.000ML",
        "DIR": "00SINF",
        "VER": "00SNE1000V3.928",
        "": "00S",
    }

    async def body() -> tuple[Counter[str], NespTransport]:
        pump = _core.SimPump("bd-plastipak-50", seed=22)
        async with serving(pump, pace=False, modbus_tcp=False, modbus_rtu=False) as server:
            transport = open_transport(f"nesp://{server.endpoints['nesp_pty']}?safe=0&timeout=0.04&retries=0")
            assert isinstance(transport, NespTransport)
            await transport.connect()
            assert (await transport.command("RAT52.5MH"))[2] == "A"  # the power-up alarm
            assert await transport.command("RAT52.5MH") == "00S"
            rng = random.Random(3)
            outcomes: Counter[str] = Counter()
            for _ in range(400):
                command = rng.choice(list(expected))
                late = rng.random() < 0.3
                pump.inject("fault_comm_delay_ms", rng.randint(32, 60) if late else rng.randint(2, 20))
                try:
                    reply = await transport.command(command)
                except TransportError:
                    outcomes["failed"] += 1
                    continue
                assert reply == expected[command], f"{command!r} answered {reply!r}"
                outcomes["right"] += 1
            await transport.close()
            return outcomes, transport

    outcomes, transport = asyncio.run(body())
    assert outcomes["right"] >= 40 and outcomes["failed"] >= 40, outcomes
    assert transport.discarded >= 10 and transport.resyncs >= 10


# ----- end states --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["modbus-tcp", "modbus-rtu", "nesp"])
def test_a_run_whose_simulator_is_killed_ends_link_lost(kind: str, tmp_path: Path) -> None:
    with sim_process() as (proc, endpoints):
        url = {
            "modbus-tcp": f"modbus-tcp://{endpoints['modbus_tcp']}",
            "modbus-rtu": f"modbus-rtu://{endpoints['modbus_rtu_pty']}",
            "nesp": f"nesp://{endpoints['nesp_pty']}",
        }[kind]
        log = tmp_path / "run.jsonl"
        returncode, stdout, stderr = _run_and_kill_the_simulator(proc, url, log, json_output=True)
    assert returncode == EXIT_LINK_LOST, stderr
    summary = json.loads(stdout)
    assert summary["state"] == "link_lost" and summary["reason"] == "transport"
    assert summary["stop_confirmed"] is False
    assert summary["kernel_state"] in {"running", "alarm"}
    assert 0 <= summary["delivered_ml"] < 10
    assert "Traceback" not in stderr
    # The record stays resumable: no session_ended, the loss and the unconfirmed stop are in it.
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "session_ended" not in events
    assert "transport_lost" in events or "pump_stop_unconfirmed" in events


def test_the_human_line_of_a_lost_link_says_so(tmp_path: Path) -> None:
    with sim_process("--no-modbus-rtu", "--no-nesp") as (proc, endpoints):
        url = f"modbus-tcp://{endpoints['modbus_tcp']}"
        returncode, stdout, stderr = _run_and_kill_the_simulator(
            proc, url, tmp_path / "run.jsonl", json_output=False
        )
    assert returncode == EXIT_LINK_LOST, stderr
    line = " ".join(stdout.split())  # the result goes to stdout
    assert "link_lost: delivered" in line
    assert "link to the pump lost, its stop is NOT confirmed: check the pump" in line
    assert "running:" not in line


def test_a_finished_new_era_run_leaves_the_pump_without_a_safe_mode_alarm(tmp_path: Path) -> None:
    """The run uses safe mode (5 s, the default); a pump left in it would latch A?T 5 s later. 5× is
    within what the loop accepts for safe=5 with the URL's default timeout (it refuses 10×)."""
    with sim_process("--no-modbus-tcp", "--no-modbus-rtu", "--time-scale", "5") as (_proc, endpoints):
        pty = str(endpoints["nesp_pty"])
        result = ketapump(
            "run", "--pump", f"nesp://{pty}", "--rate-ml-h", "60", "--volume-ml", "0.5",
            "--time-scale", "5", "--json", "--log", str(tmp_path / "run.jsonl"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "complete"
        time.sleep(2.0)  # 10 pump seconds: twice the safe-mode timeout
        fd = open_pty(pty)
        try:
            os.write(fd, b"0\r")
            assert read_until_quiet(fd, 0.3) == b"\x0200S\x03"  # stopped, basic mode, no alarm
        finally:
            os.close(fd)


def _run_and_kill_the_simulator(
    sim: subprocess.Popen[str], url: str, log: Path, *, json_output: bool
) -> tuple[int, str, str]:
    """Runs ``ketapump run`` on ``url`` and kills the simulator once the run is under way; returns the
    run's exit code, stdout and stderr."""
    args = ["run", "--pump", url, "--rate-ml-h", "120", "--volume-ml", "10", "--log", str(log)]
    run = subprocess.Popen(
        [sys.executable, "-m", "ketapump", *args, *(["--json"] if json_output else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(log, "telemetry", within_s=60)
        time.sleep(1.0)
        os.kill(sim.pid, signal.SIGKILL)
        sim.wait()
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    return run.returncode, stdout, stderr


def _wait_for(log: Path, event: str, *, within_s: float) -> None:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if log.exists() and f'"event":"{event}"' in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {event} in {log} within {within_s} s")
