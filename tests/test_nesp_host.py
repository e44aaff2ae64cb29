"""The host side of the New Era protocol: framing checked byte for byte against the protocol document,
URL parsing, and the driver against the simulator over a real PTY (the two sides share no codec)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import AsyncIterator

import pytest

from ketapump import _core
from ketapump.errors import ConfigurationError, PumpTimeoutError, TransportError
from ketapump.sim.server import SimServer
from ketapump.wire.drivers.nesp import NewEraDriver, format_number
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import PumpRefusedError
from ketapump.wire.transports.nesp import (
    URL_FORM,
    FrameError,
    NespTransport,
    crc16_xmodem,
    decode_frame,
    encode_basic,
    encode_safe,
    frame_size,
    parse_nesp_url,
)
from simhelpers import serving

pytestmark = pytest.mark.timeout(60)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)


# -- framing: the document's byte examples ---------------------------------------------------------


def test_crc_of_saf0_is_the_manual_value() -> None:
    assert crc16_xmodem(b"SAF0") == 0x5543
    assert encode_safe("SAF0") == hexbytes("02 08") + b"SAF0" + hexbytes("55 43 03")


def test_example_1_first_packet_safe_frame_in_basic_mode() -> None:
    assert encode_safe("0SAF0") == hexbytes("02 09 30 53 41 46 30 59 AD 03")


def test_example_2_power_up_alarm_basic() -> None:
    frame = hexbytes("02 30 30 41 3F 52 03")
    assert frame_size(frame) == len(frame)
    assert decode_frame(frame) == ("00A?R", False)


def test_example_3_status_basic() -> None:
    assert decode_frame(hexbytes("02 30 30 53 03")) == ("00S", False)


def test_example_4_basic_command() -> None:
    assert encode_basic("0RAT1200MH") == hexbytes("30 52 41 54 31 32 30 30 4D 48 0D")


def test_example_5_out_of_range_basic() -> None:
    assert decode_frame(hexbytes("02 30 30 53 3F 4F 4F 52 03")) == ("00S?OOR", False)


def test_example_6_enter_safe_mode_address_3() -> None:
    assert encode_safe("3SAF10") == hexbytes("02 0A 33 53 41 46 31 30 AD 5E 03")


def test_example_7_safe_reply() -> None:
    frame = hexbytes("02 07 30 33 53 FF F5 03")
    assert frame_size(frame) == len(frame)
    assert decode_frame(frame) == ("03S", True)


def test_example_8_safe_status_poll() -> None:
    # The CRC's low byte is 0x30 and a CRC byte can be 0x03: safe frames are read by length, not ETX.
    assert encode_safe("3") == hexbytes("02 05 33 06 30 03")


def test_example_9_safe_timeout_alarm() -> None:
    assert decode_frame(hexbytes("02 09 30 30 41 3F 54 05 40 03")) == ("00A?T", True)


def test_safe_frame_is_read_by_length_even_when_crc_contains_etx() -> None:
    crc = crc16_xmodem(b"00S")
    frame = encode_safe("00S")
    assert frame[-1] == 0x03 and len(frame) == 8
    assert frame_size(frame[:4]) is None
    assert decode_frame(frame) == ("00S", True), hex(crc)


@pytest.mark.parametrize(
    "frame",
    [
        hexbytes("02 07 30 33 53 FF F4 03"),  # bad CRC
        hexbytes("02 08 30 33 53 FF F5 03"),  # length byte disagrees
        hexbytes("02 30 30 53 04"),  # no ETX
        b"\x02\x30\x30\x01\x03",  # control character in the data
    ],
)
def test_bad_frames_are_rejected(frame: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(frame)


def test_garbage_fails_before_the_timeout() -> None:
    with pytest.raises(FrameError):
        frame_size(b"\xff\x02")
    with pytest.raises(FrameError):
        frame_size(b"\x02\x05")  # a safe length too short to hold a reply


@pytest.mark.parametrize(
    ("value", "text"),
    [(52.5, "52.50"), (1200, "1200"), (26.59, "26.59"), (0.5, "0.500"), (9.9996, "10.00"), (0, "0.000")],
)
def test_numbers_have_at_most_four_digits(value: float, text: str) -> None:
    assert format_number(value) == text


@pytest.mark.parametrize("value", [9999.5, 0.0004, -1.0, math.nan])
def test_numbers_that_do_not_fit_are_refused(value: float) -> None:
    with pytest.raises(ValueError):
        format_number(value)


# -- URL parsing ------------------------------------------------------------------------------------


def test_url_defaults_and_pyserial_paths() -> None:
    u = parse_nesp_url("nesp:///dev/pts/3")
    assert (u.path, u.address, u.baud, u.safe_s) == ("/dev/pts/3", 0, 19_200, 5)
    u = parse_nesp_url("nesp://socket://127.0.0.1:4001?address=12&baud=9600&safe=0")
    assert (u.path, u.address, u.baud, u.safe_s) == ("socket://127.0.0.1:4001", 12, 9600, 0)
    assert parse_nesp_url("nesp://loop://").path == "loop://"
    t = NespTransport("nesp:///dev/pts/3?timeout=0.2&retries=0")
    assert (t.timeout_s, t.retries) == (0.2, 0)
    assert NespTransport("nesp:///dev/pts/3?timeout=0.2", timeout_s=1.0).timeout_s == 1.0


def test_open_transport_builds_a_nesp_transport() -> None:
    t = open_transport("nesp:///dev/pts/3?address=7&safe=0&timeout=0.25&retries=3")
    assert isinstance(t, NespTransport)
    assert (t.path, t.address, t.safe_s, t.timeout_s, t.retries) == ("/dev/pts/3", 7, 0, 0.25, 3)


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("nesp:///dev/pts/3?address=x", "address"),
        ("nesp:///dev/pts/3?address=100", "address"),
        ("nesp:///dev/pts/3?baud=fast", "baud"),
        ("nesp:///dev/pts/3?safe=256", "safe"),
        ("nesp:///dev/pts/3?safe=-1", "safe"),
        ("nesp:///dev/pts/3?parity=E", "parity"),
        ("nesp:///dev/pts/3?timeout=0", "timeout"),
        ("nesp:///dev/pts/3?retries=-1", "retries"),
        ("nesp:///dev/pts/3?address=1&address=2", "address"),
        ("modbus:///dev/pts/3", "url"),
        ("nesp://?address=0", "url"),
    ],
)
def test_url_errors_name_the_key_and_the_valid_form(url: str, field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        NespTransport(url)
    assert info.value.field == field
    assert URL_FORM in str(info.value)


# -- against the simulator over a PTY ---------------------------------------------------------------


class CountingTransport(NespTransport):
    """Counts attempts that reach the wire, to prove refusals are not retried."""

    attempts: dict[str, int]

    async def _command(self, text: str) -> str:
        self.attempts = getattr(self, "attempts", {})
        self.attempts[text] = self.attempts.get(text, 0) + 1
        return await super()._command(text)


def nesp_url(server: SimServer, **query: int) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"nesp://{server.endpoints['nesp_pty']}?{q}"


@contextlib.asynccontextmanager
async def _sim() -> AsyncIterator[SimServer]:
    pump = _core.SimPump("bd-plastipak-50", seed=1, slack_taken_up=True)
    async with serving(pump, time_scale=5.0, modbus_tcp=False, modbus_rtu=False) as server:
        yield server


@pytest.mark.parametrize("safe_s", [0, 5], ids=["basic", "safe"])
def test_driver_runs_the_simulated_pump(safe_s: int) -> None:
    async def body() -> None:
        async with _sim() as server:
            transport = CountingTransport(nesp_url(server, address=0, safe=safe_s), timeout_s=0.5)
            driver = NewEraDriver(transport)
            await driver.connect()
            assert transport.attempts[f"SAF{safe_s}"] == 2  # the power-up alarm, then the real answer
            assert transport.safe_mode is (safe_s > 0)
            assert (driver.model, driver.firmware) == ("NE1000", "3.928")

            await driver.set_syringe(26.59)
            await driver.set_rate_ml_h(100.0)
            first = await driver.read_telemetry()
            assert not first.motor_running
            assert first.pump_alarms == frozenset()  # the expected power-up alarm is not news
            assert math.isnan(first.pressure_mmhg)

            await driver.start()
            samples = []
            for _ in range(4):
                await asyncio.sleep(0.3)
                await driver.heartbeat()
                samples.append(await driver.read_telemetry())
            assert all(s.motor_running for s in samples)
            assert all(not s.pump_alarms for s in samples)
            volumes = [s.volume_ml for s in samples]
            assert volumes == sorted(volumes) and volumes[-1] > volumes[0] > 0

            await driver.set_rate_ml_h(50.0)  # same units while pumping: accepted
            await driver.stop()
            stopped = await driver.read_telemetry()
            assert not stopped.motor_running
            delivered = await driver.read_delivered_ml()
            # The plunger creeps on for a moment after STP while the drive spring relaxes: allow a few µL.
            assert delivered == pytest.approx(stopped.infused_ml, abs=5e-3)
            assert delivered >= volumes[-1] > 0
            await asyncio.sleep(0.2)
            assert await driver.read_delivered_ml() == pytest.approx(delivered, abs=5e-3)  # settling only

            # Below 1 mL/h, while stopped: µL/h keeps four significant digits.
            await driver.set_rate_ml_h(0.5)
            assert transport.attempts["RAT500.0UH"] == 1
            await driver.acknowledge_alarm()
            await driver.close()

    asyncio.run(body())


def test_refused_rate_is_not_retried() -> None:
    async def body() -> None:
        async with _sim() as server:
            transport = CountingTransport(nesp_url(server, safe=0), timeout_s=0.5, retries=2)
            driver = NewEraDriver(transport)
            await driver.connect()
            await driver.set_syringe(26.59)
            with pytest.raises(PumpRefusedError) as info:
                await driver.set_rate_ml_h(5000.0)
            assert info.value.code == "?OOR"
            assert transport.url in str(info.value)
            assert transport.attempts["RAT5000MH"] == 1
            await driver.close()

    asyncio.run(body())


def test_safe_mode_watchdog_alarm_is_reported() -> None:
    async def body() -> None:
        async with _sim() as server:
            driver = NewEraDriver(NespTransport(nesp_url(server, safe=1), timeout_s=0.5))
            await driver.connect()
            await driver.set_syringe(26.59)
            await driver.set_rate_ml_h(100.0)
            await driver.start()
            await asyncio.sleep(0.5)  # 2.5 pump seconds without a packet: past the 1 s watchdog
            sample = await driver.read_telemetry()
            assert "timeout" in sample.pump_alarms
            assert not sample.motor_running
            await asyncio.sleep(0.5)  # and again: a new alarm is pending
            with pytest.raises(PumpRefusedError) as info:
                await driver.start()  # refused, not forced past the alarm
            assert info.value.code == "A?T"
            await driver.stop()
            await driver.close()

    asyncio.run(body())


# -- unreachable endpoints ---------------------------------------------------------------------------

TIMEOUT_S = 0.3
RETRIES = 1
SLACK_S = 1.0


def test_missing_pty_fails_at_connect_naming_the_endpoint() -> None:
    url = "nesp:///dev/pts/does-not-exist?safe=0"

    async def body() -> None:
        driver = NewEraDriver(NespTransport(url, timeout_s=TIMEOUT_S, retries=RETRIES))
        t0 = time.monotonic()
        with pytest.raises(TransportError) as info:
            await driver.connect()
        assert time.monotonic() - t0 < TIMEOUT_S * (RETRIES + 1) + SLACK_S
        assert url in str(info.value)
        assert info.value.endpoint == url

    asyncio.run(body())


def test_wrong_address_is_silence_and_times_out_naming_the_url() -> None:
    async def body() -> None:
        async with _sim() as server:
            url = nesp_url(server, address=5, safe=0)
            transport = CountingTransport(url, timeout_s=TIMEOUT_S, retries=RETRIES)
            driver = NewEraDriver(transport)
            t0 = time.monotonic()
            with pytest.raises(PumpTimeoutError) as info:
                await driver.connect()
            elapsed = time.monotonic() - t0
            assert elapsed < TIMEOUT_S * (RETRIES + 1) + SLACK_S
            assert elapsed >= TIMEOUT_S * (RETRIES + 1) * 0.8  # it did wait for each attempt
            assert url in str(info.value)
            assert transport.attempts["SAF0"] == RETRIES + 1
            await driver.close()

    asyncio.run(body())


def test_closed_tcp_port_fails_fast_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"nesp://socket://127.0.0.1:{port}?safe=0"

    async def body() -> None:
        driver = NewEraDriver(NespTransport(url, timeout_s=TIMEOUT_S, retries=RETRIES))
        t0 = time.monotonic()
        with pytest.raises(TransportError) as info:
            await driver.connect()
        assert time.monotonic() - t0 < TIMEOUT_S
        assert url in str(info.value)

    asyncio.run(body())


def test_garbage_and_foreign_replies_are_link_failures() -> None:
    """A reply for another address or garbage is retried as a link failure, then reported."""

    async def body() -> None:
        url = "nesp://loop://?safe=0"
        transport = NespTransport(url, timeout_s=TIMEOUT_S, retries=0)
        await transport.connect()
        # loop:// echoes the request: "0VER\r" does not start with STX.
        t0 = time.monotonic()
        with pytest.raises(TransportError) as info:
            await transport.command("VER")
        assert not isinstance(info.value, PumpTimeoutError)
        assert time.monotonic() - t0 < TIMEOUT_S
        assert url in str(info.value)
        await transport.close()
        assert transport._check_reply("RUN", "00I") == "00I"
        with pytest.raises(TransportError, match="address 01"):
            transport._check_reply("VER", "01S")
        # A reply of the wrong shape for its command (a late reply to another command) is not used.
        for text, data in (
            ("VER", "00S"),
            ("DIS", "00S26.59"),
            ("", "00SI0.000W0.000ML"),
            ("RAT10MH", "00S"),
        ):
            if text == "RAT10MH":
                assert transport._check_reply(text, data) == data
            else:
                with pytest.raises(TransportError, match="does not answer"):
                    transport._check_reply(text, data)
        with pytest.raises(TransportError):
            transport._check_reply("VER", "00S?COM")
        with pytest.raises(PumpRefusedError) as refused:
            transport._check_reply("VER", "00S?NA")
        assert refused.value.code == "?NA"

    asyncio.run(body())
