"""The third-party contract suite: unmodified clients drive ``ketapump sim`` on their own endpoints.

Modbus: mbpoll (TCP, RTU), minimalmodbus (RTU), modbus-tk (TCP, RTU), uModbus (TCP, RTU), pymodbus's
own clients (TCP, RTU). Each reads the identity and telemetry, is refused a read-only write
(exception 2), an out-of-range value (3) and a start with the power-up alarm latched (4), then
acknowledges, writes the rate, starts with heartbeats, stops, starts again and stops sending
heartbeats: the pump's watchdog stops it. New Era: nesp-lib in basic and safe mode (in a child process
with a timeout: nesp-lib reads without one).

The simulator runs at 2× time, so its watchdog (set to 2 s) acts after 1 s of real silence.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Protocol

import pytest

from simhelpers import sim_process
from wirehelpers import open_pty, read_until_quiet

MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(
    MBPOLL is None and not os.environ.get("KETAPUMP_REQUIRE_MBPOLL"),
    reason="mbpoll is not installed (apt-get install mbpoll; .ci/run installs it and requires it)",
)
TIME_SCALE = 2.0
WATCHDOG_MS = 2_000
BAUD = 19_200


class RefusedError(Exception):
    """A Modbus exception reply, as whichever client reported it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exception {code}")
        self.code = code


class Client(Protocol):
    def read(self, address: int, count: int) -> list[int]: ...

    def write(self, address: int, values: list[int]) -> None:
        """Function 6 for one value, 16 for several."""

    def close(self) -> None: ...


def f32(value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", value)))


# ----- adapters: each client library as it is meant to be used ----------------------------------------


class Pymodbus:
    def __init__(self, endpoint: str, rtu: bool) -> None:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient  # noqa: PLC0415
        from pymodbus.framer import FramerType  # noqa: PLC0415

        if rtu:
            self.client: ModbusSerialClient | ModbusTcpClient = ModbusSerialClient(
                endpoint, framer=FramerType.RTU, baudrate=BAUD, timeout=1, retries=0
            )
        else:
            host, port = endpoint.rsplit(":", 1)
            self.client = ModbusTcpClient(host, port=int(port), timeout=1, retries=0)
        assert self.client.connect()

    def _answer(self, rr: object) -> object:
        if rr.isError():  # type: ignore[attr-defined]
            raise RefusedError(int(rr.exception_code))  # type: ignore[attr-defined]
        return rr

    def read(self, address: int, count: int) -> list[int]:
        rr = self._answer(self.client.read_holding_registers(address, count=count, device_id=1))
        return list(rr.registers)  # type: ignore[attr-defined]

    def write(self, address: int, values: list[int]) -> None:
        if len(values) == 1:
            self._answer(self.client.write_register(address, values[0], device_id=1))
        else:
            self._answer(self.client.write_registers(address, values, device_id=1))

    def close(self) -> None:
        self.client.close()


#: Exception codes by the words client libraries print for them.
CODE_WORDS = {
    "illegal function": 1,
    "illegal data address": 2,
    "illegal data value": 3,
    "device failure": 4,  # minimalmodbus: "Slave reported device failure"
    "slave device or server failure": 4,  # libmodbus (mbpoll)
}


def _code_in(text: str) -> int:
    codes = [code for words, code in CODE_WORDS.items() if words in text.lower()]
    assert codes, text
    return codes[0]


class MinimalModbus:
    def __init__(self, endpoint: str, rtu: bool) -> None:
        import minimalmodbus  # noqa: PLC0415

        assert rtu, "minimalmodbus speaks RTU and ASCII only"
        self.errors = (minimalmodbus.IllegalRequestError, minimalmodbus.SlaveReportedException)
        self.instrument = minimalmodbus.Instrument(endpoint, 1)
        self.instrument.serial.baudrate = BAUD
        self.instrument.serial.timeout = 1.0

    def _call(self, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except self.errors as e:
            raise RefusedError(_code_in(str(e))) from e

    def read(self, address: int, count: int) -> list[int]:
        return list(self._call(lambda: self.instrument.read_registers(address, count, functioncode=3)))  # type: ignore[call-overload]

    def write(self, address: int, values: list[int]) -> None:
        if len(values) == 1:
            self._call(lambda: self.instrument.write_register(address, values[0], functioncode=6))
        else:
            self._call(lambda: self.instrument.write_registers(address, values))

    def close(self) -> None:
        self.instrument.serial.close()


class ModbusTk:
    def __init__(self, endpoint: str, rtu: bool) -> None:
        import serial  # type: ignore[import-untyped]  # noqa: PLC0415
        from modbus_tk import defines, modbus, modbus_rtu, modbus_tcp  # noqa: PLC0415

        self.defines, self.error = defines, modbus.ModbusError
        if rtu:
            self.master = modbus_rtu.RtuMaster(serial.Serial(endpoint, BAUD, timeout=1))
        else:
            host, port = endpoint.rsplit(":", 1)
            self.master = modbus_tcp.TcpMaster(host, int(port), timeout_in_sec=1.0)
        self.master.set_timeout(1.0)

    def _execute(self, *args: object, **kwargs: object) -> tuple[int, ...]:
        try:
            return tuple(self.master.execute(1, *args, **kwargs))
        except self.error as e:
            raise RefusedError(e.get_exception_code()) from e

    def read(self, address: int, count: int) -> list[int]:
        return list(self._execute(self.defines.READ_HOLDING_REGISTERS, address, count))

    def write(self, address: int, values: list[int]) -> None:
        if len(values) == 1:
            self._execute(self.defines.WRITE_SINGLE_REGISTER, address, output_value=values[0])
        else:
            self._execute(self.defines.WRITE_MULTIPLE_REGISTERS, address, output_value=values)

    def close(self) -> None:
        self.master.close()


class UModbus:
    def __init__(self, endpoint: str, rtu: bool) -> None:
        import serial  # noqa: PLC0415
        from umodbus.client import tcp  # noqa: PLC0415
        from umodbus.client.serial import rtu as umodbus_rtu  # noqa: PLC0415
        from umodbus.exceptions import ModbusError  # noqa: PLC0415

        self.error = ModbusError
        if rtu:
            self.proto, self.link = umodbus_rtu, serial.Serial(endpoint, BAUD, timeout=1)
        else:
            host, port = endpoint.rsplit(":", 1)
            self.proto, self.link = tcp, socket.create_connection((host, int(port)), timeout=1)

    def _send(self, adu: bytes) -> object:
        try:
            return self.proto.send_message(adu, self.link)
        except self.error as e:
            raise RefusedError(int(e.error_code)) from e

    def read(self, address: int, count: int) -> list[int]:
        return list(self._send(self.proto.read_holding_registers(1, address, count)))  # type: ignore[call-overload]

    def write(self, address: int, values: list[int]) -> None:
        if len(values) == 1:
            self._send(self.proto.write_single_register(1, address, values[0]))
        else:
            self._send(self.proto.write_multiple_registers(1, address, values))

    def close(self) -> None:
        self.link.close()


class Mbpoll:
    """The Debian command-line master (libmodbus), one process per request."""

    def __init__(self, endpoint: str, rtu: bool) -> None:
        assert MBPOLL is not None
        if rtu:  # mbpoll's RTU parity defaults to even: always -P none
            self.args = [MBPOLL, "-m", "rtu", "-b", str(BAUD), "-P", "none", "-a", "1", "-0", "-1", "-o", "1"]
            self.target = endpoint
        else:
            host, port = endpoint.rsplit(":", 1)
            self.args = [MBPOLL, "-m", "tcp", "-p", port, "-a", "1", "-0", "-1", "-o", "1"]
            self.target = host

    def _run(self, *args: str) -> str:
        result = subprocess.run([*self.args, *args], capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RefusedError(_code_in(result.stdout + result.stderr))
        return result.stdout

    def read(self, address: int, count: int) -> list[int]:
        out = self._run("-t", "4:hex", "-r", str(address), "-c", str(count), self.target)
        values = {}
        for line in out.splitlines():
            if line.startswith("[") and "]:" in line:
                at, value = line[1:].split("]:", 1)
                values[int(at)] = int(value.strip(), 16)
        return [values[address + i] for i in range(count)]

    def write(self, address: int, values: list[int]) -> None:
        self._run("-t", "4", "-r", str(address), self.target, *(str(v) for v in values))

    def close(self) -> None:
        pass


CLIENTS: dict[str, tuple[type, bool]] = {
    "pymodbus-tcp": (Pymodbus, False),
    "pymodbus-rtu": (Pymodbus, True),
    "minimalmodbus-rtu": (MinimalModbus, True),
    "modbus_tk-tcp": (ModbusTk, False),
    "modbus_tk-rtu": (ModbusTk, True),
    "umodbus-tcp": (UModbus, False),
    "umodbus-rtu": (UModbus, True),
    "mbpoll-tcp": (Mbpoll, False),
    "mbpoll-rtu": (Mbpoll, True),
}


def _refused(code: int, fn: Callable[[], object]) -> None:
    with pytest.raises(RefusedError) as info:
        fn()
    assert info.value.code == code


def _heartbeats(client: Client, seconds: float, first: int) -> int:
    """Writes the heartbeat every 0.1 s of real time for ``seconds``; returns the next beat."""
    end = time.monotonic() + seconds
    beat = first
    while time.monotonic() < end:
        client.write(24, [beat % 65_536])
        beat += 1
        time.sleep(0.1)
    return beat


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=needs_mbpoll) if n.startswith("mbpoll") else n for n in CLIENTS],
)
def test_an_unmodified_modbus_client_drives_the_simulator(name: str) -> None:
    kind, rtu = CLIENTS[name]
    if kind is not Mbpoll:
        pytest.importorskip(
            {Pymodbus: "pymodbus", MinimalModbus: "minimalmodbus", ModbusTk: "modbus_tk", UModbus: "umodbus"}[
                kind
            ]
        )
    serve = ["--no-modbus-tcp"] if rtu else ["--no-modbus-rtu"]
    with sim_process("--no-nesp", *serve, "--time-scale", str(TIME_SCALE)) as (_proc, endpoints):
        client: Client = kind(str(endpoints["modbus_rtu_pty" if rtu else "modbus_tcp"]), rtu)
        try:
            # Identity and telemetry; the pump powers up with its reset alarm latched.
            assert client.read(0, 4) == [0x4B50, 1, 100, 1]
            telemetry = client.read(30, 19)
            assert (telemetry[37 - 30], telemetry[41 - 30]) == (1, 1)  # syringe present, reset alarm
            # Refusals with the documented exceptions; nothing is written.
            _refused(2, lambda: client.write(0, [7]))  # read-only
            _refused(3, lambda: client.write(20, f32(5_000.0)))  # above the pump's 1 200 mL/h
            _refused(4, lambda: client.write(22, [1]))  # start with an alarm latched
            assert client.read(20, 2) == f32(0.0)
            # Acknowledge, configure, start with heartbeats.
            client.write(23, [1])
            client.write(25, [WATCHDOG_MS])
            client.write(20, f32(60.0))
            assert client.read(20, 2) == f32(60.0)
            client.write(24, [1])
            client.write(22, [1])
            beat = _heartbeats(client, 1.0, 2)
            assert client.read(39, 3) == [1, 1, 0]  # motor running, infusing, no alarm
            # Stop.
            client.write(22, [0])
            assert client.read(39, 3) == [0, 0, 0]
            # Start again, then fall silent: the watchdog stops the pump and latches its alarm.
            client.write(24, [beat])
            client.write(22, [1])
            assert client.read(40, 1) == [1]
            time.sleep(WATCHDOG_MS / 1000 / TIME_SCALE + 0.6)
            assert client.read(39, 3) == [0, 3, 0b10]  # stopped, alarm, watchdog bit
        finally:
            client.close()


# ----- New Era: nesp-lib ------------------------------------------------------------------------------

NESP_LIB = textwrap.dedent(
    """
    import json, sys, time
    import nesp_lib
    from nesp_lib.exceptions import StateException, StatusAlarmException

    path, safe = sys.argv[1], int(sys.argv[2])
    port = nesp_lib.Port(path, 19200)
    pump = nesp_lib.Pump(port, safe_mode_timeout_s=safe)  # meets and handles the power-up alarm
    out = {"model": pump.model_number, "version": list(pump.firmware_version)}
    out["safe"] = pump.safe_mode_timeout_s
    pump.syringe_diameter_mm = 26.59
    pump.pumping_direction = nesp_lib.PumpingDirection.INFUSE
    pump.pumping_volume_ml = 10.0
    refused = {}
    try:
        pump.pumping_rate_ml_per_min = 20.0  # above the range for this syringe: ?OOR
    except ValueError:
        refused["rate_out_of_range"] = "ValueError"
    pump.pumping_rate_ml_per_min = 2.0
    out["rate"] = pump.pumping_rate_ml_per_min
    pump.volume_infused_clear()
    before_run = time.monotonic()
    pump.run(wait_while_running=False)
    start = time.monotonic()
    while time.monotonic() - start < 1.5:  # status polls: the heartbeat safe mode needs
        assert pump.running
        time.sleep(0.05)
    before_dis = time.monotonic()
    out["infused_after_1_5_s"] = pump.volume_infused_ml
    out["motion_s"] = [before_dis - start, time.monotonic() - before_run]  # at least, at most
    try:
        pump.syringe_diameter_mm = 20.0  # not while pumping: ?NA
    except StateException:
        refused["diameter_while_running"] = "StateException"
    out["refused"] = refused
    pump.stop()
    out["running_after_stop"] = pump.running
    if safe:
        # Running again, kept alive by nesp-lib's own heartbeat thread; the test kills this process.
        pump.run(wait_while_running=False)
        print(json.dumps(out), flush=True)
        time.sleep(3 * safe)
        out["still_running"] = pump.running
        print(json.dumps(out), flush=True)
        time.sleep(3600)
    pump.safe_mode_timeout_s = 0
    port.close()
    print(json.dumps(out), flush=True)
    """
)


@pytest.mark.parametrize("safe_s", [0, 2], ids=["basic", "safe"])
def test_nesp_lib_drives_the_new_era_emulation(safe_s: int) -> None:
    """In safe mode nesp-lib's heartbeat keeps the pump running; when the client is killed, the pump's
    safe-mode watchdog stops it and latches A?T (basic mode has no watchdog: a New Era pump's only one
    is safe mode's)."""
    pytest.importorskip("nesp_lib", reason="nesp-lib is a test dependency: pip install -e '.[test]'")
    with sim_process("--no-modbus-tcp", "--no-modbus-rtu") as (_proc, endpoints):
        pty = str(endpoints["nesp_pty"])
        client = subprocess.Popen(
            [sys.executable, "-c", NESP_LIB, pty, str(safe_s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # nesp-lib has no read timeout: a silent pump fails the test here instead of hanging it.
            out = json.loads(_line_within(client, 60))
            if safe_s:
                out = json.loads(_line_within(client, 30))
                assert out["still_running"] is True  # 3 × the timeout, on nesp-lib's heartbeats
                client.kill()
                client.wait()
                time.sleep(safe_s + 1.0)
                assert _raw_status(pty) == "00A?T"  # stopped by the watchdog, alarm latched
            else:
                assert client.wait(timeout=30) == 0, client.stderr.read() if client.stderr else ""
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            for stream in (client.stdout, client.stderr):
                if stream is not None:
                    stream.close()
    assert (out["model"], out["version"], out["safe"]) == (1000, [3, 928], safe_s)
    assert out["rate"] == pytest.approx(2.0)
    # A real NE-1000 counts stepper motion: 1.5 s at 2 mL/min is 0.05 mL, even though the plunger has
    # not moved yet (the lead-screw slack takes the first ~0.17 mL).
    least_s, most_s = out["motion_s"]
    assert 2 / 60 * least_s - 0.002 <= out["infused_after_1_5_s"] <= 2 / 60 * most_s + 0.002, out
    assert out["refused"] == {"diameter_while_running": "StateException", "rate_out_of_range": "ValueError"}
    assert out["running_after_stop"] is False


def _line_within(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(
            f"no line from nesp-lib within {timeout_s} s: {proc.stderr.read() if proc.stderr else ''}"
        )
    return line


def _raw_status(pty: str) -> str:
    """A status query written to the PTY by hand; the reply's data (either framing)."""
    fd = open_pty(pty)
    try:
        os.write(fd, b"0\r")
        reply = read_until_quiet(fd, 0.3)
    finally:
        os.close(fd)
    assert reply[:1] == b"\x02" and reply[-1:] == b"\x03", reply
    return (reply[2:-3] if reply[1] < 0x30 else reply[1:-1]).decode()
