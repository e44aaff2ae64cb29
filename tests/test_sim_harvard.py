"""The Harvard Apparatus Pump 11 Elite family (docs/harvard-protocol.md): the simulator's Elite endpoint
on a PTY, byte for byte; its error replies mapped to the project's errors; every reply taken only as the
answer to its own request; a 10-minute guarded infusion through ``ketapump run`` within 1 %.

(The shared transport contract suite runs over this endpoint too: ``tests/test_contract.py``.)
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]
from pymodbus.client import AsyncModbusTcpClient

from ketapump import _core
from ketapump.bridge import audit
from ketapump.errors import ConfigurationError, PumpTimeoutError, TransportError
from ketapump.wire import HarvardDriver, HarvardTransport, PumpRefusedError, open_transport
from ketapump.wire.transports.harvard import split_reply
from simhelpers import ketapump, read, serving, sim_process


async def _infused_ml(endpoint: str) -> float:
    host, port = endpoint.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=1.0, retries=0)
    assert await client.connect()
    try:
        return await read(client, "infused_ml")
    finally:
        client.close()


def _exchange(path: str, request: bytes, expect_bytes: int) -> bytes:
    """Raw bytes in, raw bytes out, as any serial client sees them: reads until ``expect_bytes`` are in
    (then a little longer, so a reply with more bytes than expected shows), or 2 s for silence."""
    with serial.Serial(path, 115_200, timeout=0.05) as port:
        port.reset_input_buffer()
        port.write(request)
        got = b""
        end = time.monotonic() + (2.0 if expect_bytes else 0.5)
        while time.monotonic() < end and (not expect_bytes or len(got) < expect_bytes):
            got += port.read(256)
        return got + port.read(256)


def test_the_endpoint_answers_each_request_and_each_malformed_one_with_the_protocols_errors() -> None:
    async def body() -> None:
        pump = _core.SimPump("bd-plastipak-50", seed=1)
        async with serving(pump, modbus_tcp=False, modbus_rtu=False, nesp=False, harvard=True) as server:
            path = str(server.endpoints["harvard_pty"])
            cases = {
                b"0ver\r\n": b"\r\n00:11 ELITE I/W Single 3.0.4\r\n00:\r\n",
                b"0diameter 26.59\r\n": b"\r\n00:\r\n",
                b"0diameter\r\n": b"\r\n00:26.5900 mm\r\n00:\r\n",
                b"0irate 52.5 ml/h\r\n": b"\r\n00:\r\n",
                b"0irate\r\n": b"\r\n00:52.5 ml/hr\r\n00:\r\n",
                b"0\r\n": b"\r\n00:\r\n",
                b"0bogus\r\n": b"\r\n00:Unknown command\r\n00:\r\n",
                b"0irate fast ml/h\r\n": b"\r\n00:Argument error\r\n00:\r\n",
                b"0irate 5 l/week\r\n": b"\r\n00:Argument error\r\n00:\r\n",
                b"0irun now\r\n": b"\r\n00:Argument error\r\n00:\r\n",
                b"0irate 5000 ml/h\r\n": b"\r\n00:Out of range\r\n00:\r\n",  # above the pump's range
                b"0diameter 0.01\r\n": b"\r\n00:Out of range\r\n00:\r\n",
                b"0ir\xffate\r\n": b"\r\n00:Command error\r\n00:\r\n",  # not ASCII
                b"0IRATE\r\n": b"\r\n00:Command error\r\n00:\r\n",  # commands are lower case
                b"0" + b"x" * 100: b"\r\n00:Command error\r\n00:\r\n",  # a line that never ends
                b"7ver\r\n": b"",  # another address: silence, as on a daisy chain
            }
            for request, expected in cases.items():
                got = await asyncio.to_thread(_exchange, path, request, len(expected))
                assert got == expected, request
            # The rate the pump refused was not applied.
            assert pump.value("rate_ml_h") == pytest.approx(52.5)

    asyncio.run(body())


def test_the_drivers_operations_and_the_pumps_refusals_as_the_projects_errors() -> None:
    async def body() -> None:
        pump = _core.SimPump("bd-plastipak-50", seed=1, slack_taken_up=True)
        async with serving(
            pump, time_scale=20.0, modbus_tcp=False, modbus_rtu=False, nesp=False, harvard=True
        ) as server:
            transport = open_transport(f"harvard://{server.endpoints['harvard_pty']}?timeout=0.5")
            assert isinstance(transport, HarvardTransport)
            driver = HarvardDriver(transport)
            await driver.connect()
            assert await driver.identify() == {"model": "11 ELITE I/W Single", "firmware": "3.0.4"}
            with pytest.raises(PumpRefusedError) as refused:
                await driver.set_rate_ml_h(5000.0)
            assert refused.value.code == "Out of range"
            with pytest.raises(PumpRefusedError) as refused:
                await transport.exchange("irate 5 furlongs/h")
            assert refused.value.code == "Argument error"
            with pytest.raises(ValueError, match="no reply shape"):
                await transport.exchange("status")  # a request whose reply could not be checked
            await driver.set_rate_ml_h(0.5)  # below 1 mL/h: sent in µL/h
            assert pump.value("rate_ml_h") == pytest.approx(0.5)
            pump.inject("fault_motor_stall", 1)
            await driver.set_rate_ml_h(60.0)
            await driver.start()
            await asyncio.sleep(0.3)
            sample = await driver.read_telemetry()
            assert "motor_stall" in sample.pump_alarms and not sample.motor_running
            assert transport.discarded == 0 and transport.resyncs == 1  # refusals are answers, in step
            await driver.close()

    asyncio.run(body())


def test_url_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="needs a device path"):
        open_transport("harvard://")
    with pytest.raises(ConfigurationError, match="address"):
        open_transport("harvard:///dev/null?address=100")
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        open_transport("harvard:///dev/null?safe=5")


def test_reply_framing_is_strict() -> None:
    buf = bytearray(b"\r\n00>5 ml\r\n00>\r\n\r\n00:")
    reply = split_reply(buf)
    assert reply is not None and (reply.address, reply.prompt, reply.body) == (0, ">", ["5 ml"])
    assert split_reply(buf) is None and buf == bytearray(b"\r\n00:")  # incomplete: wait for more
    for garbage in (b"00:\r\n", b"\r\n0:\r\n", b"\r\n00:x\r\n01:\r\n", b"\r\n00#\r\n"):
        with pytest.raises(ValueError):
            split_reply(bytearray(garbage))


def test_replies_around_the_timeout_give_the_right_answer_or_a_timeout() -> None:
    """Replies delayed on either side of the transport's timeout: every answer taken is its own
    request's, never a late reply to another (no request id: the ver re-synchronisation keeps them out)."""
    expected = {"ver": "00:11 ELITE I/W Single 3.0.4", "irate": "00:52.5 ml/hr", "diameter": "00:26.5900 mm"}

    async def body() -> Counter[str]:
        pump = _core.SimPump("bd-plastipak-50", seed=1)
        rng = random.Random(7)
        outcomes: Counter[str] = Counter()
        async with serving(pump, modbus_tcp=False, modbus_rtu=False, nesp=False, harvard=True) as server:
            transport = HarvardTransport(
                "harvard://test", path=str(server.endpoints["harvard_pty"]), address=0, baud=115_200,
                timeout_s=0.3, retries=0,
            )  # fmt: skip
            await transport.connect()
            await transport.command("irate 52.5 ml/h")
            await transport.command("diameter 26.59")
            for _ in range(40):
                command = rng.choice(list(expected))
                late = rng.random() < 0.3
                # A re-synchronisation and its request share one attempt: two replies, each delayed.
                pump.inject("fault_comm_delay_ms", rng.randint(300, 450) if late else rng.randint(0, 50))
                try:
                    reply = await transport.command(command)
                except PumpTimeoutError:
                    outcomes["timeout"] += 1
                    continue
                except TransportError:
                    outcomes["failed"] += 1
                    continue
                assert reply == expected[command], f"{command!r} answered {reply!r}"
                outcomes["right"] += 1
            pump.inject("fault_comm_delay_ms", 0)
            await transport.close()
            assert transport.discarded > 0  # late replies came, and none was used
        return outcomes

    outcomes = asyncio.run(body())
    assert outcomes["right"] >= 15 and outcomes["timeout"] >= 5, outcomes


def test_a_ten_minute_guarded_infusion_delivers_within_one_percent(tmp_path: Path) -> None:
    """10 mL at 60 mL/h (10 min) through ``ketapump run`` on the simulator's Elite endpoint at 20×. The
    pump counts from its motor (no plunger sensor), so the drive's slack is taken up beforehand (as an
    operator primes): the pump's own counter and the bridge's figure both within 1 %."""
    scale = "20"
    scenario = tmp_path / "primed.toml"
    scenario.write_text("schema_version = 1\n[pump]\nseed = 3\nslack_taken_up = true\n")
    serve = ["--no-modbus-rtu", "--no-nesp", "--harvard", "--scenario", str(scenario)]
    with sim_process("--time-scale", scale, *serve) as (_proc, endpoints):
        url = f"harvard://{endpoints['harvard_pty']}?address=0"
        log = tmp_path / "run.jsonl"
        result = ketapump(
            "run", "--pump", url, "--rate-ml-h", "60", "--volume-ml", "10", "--time-scale", scale,
            "--json", "--log", str(log),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["state"] == "complete"
        assert summary["delivered_ml"] == pytest.approx(10.0, rel=0.01)
        # The pump's own counter, read over Modbus TCP from the same simulated pump.
        assert asyncio.run(_infused_ml(str(endpoints["modbus_tcp"]))) == pytest.approx(10.0, rel=0.01)
    assert audit.verify(log).ok


def test_the_public_api_opens_a_harvard_pump_and_says_what_it_lacks() -> None:
    root = Path(__file__).resolve().parents[1]
    with sim_process("--no-modbus-tcp", "--no-modbus-rtu", "--no-nesp", "--harvard") as (_proc, endpoints):
        url = f"harvard://{endpoints['harvard_pty']}"
        done = subprocess.run(
            [sys.executable, str(root / "examples" / "read_telemetry.py"), url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"pump:              {url}" in done.stdout
    assert "line pressure:     nan mmHg" in done.stdout
    assert "no pressure sensor: occlusion is detected by stall only" in done.stdout
