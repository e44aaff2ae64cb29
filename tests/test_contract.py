"""One contract, every transport: the same tests drive the reference pump in-process (``sim://``),
over Modbus TCP and Modbus RTU (hw-sim served on loopback and on a PTY), and a New Era pump
(``nesp://``, hw-sim's NE-1000 emulation on a PTY), a Harvard Apparatus Pump 11 Elite (``harvard://``, the
simulator's Elite endpoint on a PTY), and a pump with a bring-your-own register map
(``examples/register-maps/acme-sp200.toml``: another unit, layout, scaling, word and byte order,
function codes, no pressure sensor) over Modbus TCP and RTU (``+map``).

All run at 20× time scale so minutes of pumping take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.sim import serve_register_map
from ketapump.wire.drivers.base import PumpDriver
from ketapump.wire.drivers.harvard import HarvardDriver
from ketapump.wire.drivers.nesp import NewEraDriver
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import PumpRefusedError, RegisterTransport
from ketapump.wire.transports.harvard import HarvardTransport
from ketapump.wire.transports.nesp import NespTransport
from simhelpers import serving

TIME_SCALE = 20.0
KINDS = ["sim", "modbus-tcp", "modbus-rtu", "nesp", "harvard", "modbus-tcp+map", "modbus-rtu+map"]
EXAMPLE_MAP = Path(__file__).resolve().parents[1] / "examples" / "register-maps" / "acme-sp200.toml"


@contextlib.asynccontextmanager
async def pump_under_test(kind: str) -> AsyncIterator[PumpDriver]:
    pump = _core.SimPump("bd-plastipak-50", seed=4, slack_taken_up=True)
    clock = ScaledClock(TIME_SCALE)
    if kind == "sim":
        transport = open_transport("sim://", clock=clock, pump=pump)
        assert isinstance(transport, RegisterTransport)
        yield ReferencePumpDriver(transport, watchdog_ms=5000)
        return
    if kind.endswith("+map"):
        serve_register_map(pump, EXAMPLE_MAP)
    async with serving(pump, time_scale=TIME_SCALE, harvard=kind == "harvard") as server:
        server.clock = clock
        if kind == "modbus-tcp":
            url = f"modbus-tcp://{server.endpoints['modbus_tcp']}?unit=1&timeout=0.5"
        elif kind == "modbus-rtu":
            url = f"modbus-rtu://{server.endpoints['modbus_rtu_pty']}?baud=19200&unit=1&timeout=0.5"
        elif kind == "modbus-tcp+map":  # the map's unit id (7) is the URL's default
            url = f"modbus-tcp://{server.endpoints['modbus_tcp']}?timeout=0.5&map={EXAMPLE_MAP}"
        elif kind == "modbus-rtu+map":
            url = (
                f"modbus-rtu://{server.endpoints['modbus_rtu_pty']}?baud=19200&timeout=0.5&map={EXAMPLE_MAP}"
            )
        elif kind == "harvard":
            url = f"harvard://{server.endpoints['harvard_pty']}?address=0&baud=115200&timeout=0.5"
        else:
            url = f"nesp://{server.endpoints['nesp_pty']}?address=0&baud=19200&safe=0&timeout=0.5"
        transport = open_transport(url)
        if kind == "nesp":
            assert isinstance(transport, NespTransport)
            yield NewEraDriver(transport)
        elif kind == "harvard":
            assert isinstance(transport, HarvardTransport)
            yield HarvardDriver(transport)
        else:
            assert isinstance(transport, RegisterTransport)
            yield ReferencePumpDriver(transport, watchdog_ms=5000)


async def pump_for(driver: PumpDriver, seconds: float) -> None:
    """Keeps the pump's heartbeat alive for ``seconds`` of real time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await driver.heartbeat()
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_power_up_alarm_is_seen_and_acknowledged(kind: str) -> None:
    async def body() -> None:
        async with pump_under_test(kind) as driver:
            await driver.connect()
            telemetry = await driver.read_telemetry()
            # New Era reports the power-up alarm once, as a reply the driver consumes; an Elite has none.
            if kind not in {"nesp", "harvard"}:
                assert "reset" in telemetry.pump_alarms
            await driver.acknowledge_alarm()
            assert (await driver.read_telemetry()).pump_alarms == frozenset()
            await driver.close()

    asyncio.run(body())


@pytest.mark.parametrize("kind", KINDS)
def test_set_syringe_rate_run_read_stop(kind: str) -> None:
    async def body() -> None:
        async with pump_under_test(kind) as driver:
            await driver.connect()
            await driver.acknowledge_alarm()
            await driver.set_syringe(26.59)
            await driver.set_rate_ml_h(120.0)
            before = await driver.read_telemetry()
            await driver.start()
            await pump_for(driver, 1.5)  # 30 pump seconds at 120 mL/h ≈ 1 mL
            during = await driver.read_telemetry()
            assert during.motor_running
            assert during.volume_ml - before.volume_ml == pytest.approx(1.0, abs=0.15)
            await driver.stop()
            await pump_for(driver, 0.2)
            after = await driver.read_telemetry()
            assert not after.motor_running
            delivered = await driver.read_delivered_ml()
            # The counter follows the plunger, which creeps on while the drive spring relaxes.
            assert delivered == pytest.approx(after.infused_ml, abs=0.02)
            await driver.close()

    asyncio.run(body())


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_rate_is_an_answer_not_a_retry(kind: str) -> None:
    async def body() -> None:
        async with pump_under_test(kind) as driver:
            await driver.connect()
            await driver.acknowledge_alarm()
            await driver.set_syringe(26.59)
            with pytest.raises(PumpRefusedError) as info:
                await driver.set_rate_ml_h(1900.0)  # above the pump's range
            assert "refused" in str(info.value) or info.value.code
            await driver.close()

    asyncio.run(body())


@pytest.mark.parametrize("kind", ["sim", "modbus-tcp", "modbus-rtu"])
def test_a_refusal_names_the_request_alike_on_every_register_link(kind: str) -> None:
    """The same refused request carries the same name on every register link. A write-then-read is
    one function 23 transaction over Modbus TCP, refused whole and named whole; elsewhere it is a write
    and a read, and the refusal names the half refused, which tells whether the write was applied."""
    unmapped, watchdog_ms = 999, 25

    async def body() -> None:
        async with pump_under_test(kind) as driver:
            assert isinstance(driver, ReferencePumpDriver)
            link = driver.transport
            await driver.connect()
            refused = f"{link.url}: %s refused: Modbus exception 2 (illegal data address)"
            one_transaction = kind == "modbus-tcp"
            [watchdog_before] = await link.read_registers(watchdog_ms, 1)
            cases = [
                (lambda: link.read_registers(unmapped, 2), "read 2 at 999"),
                (lambda: link.write_registers(unmapped, [1, 2]), "write 2 at 999"),
                (
                    lambda: link.write_and_read_registers(unmapped, [1], 32, 2),
                    "write 1 at 999 and read 2 at 32" if one_transaction else "write 1 at 999",
                ),
                (
                    lambda: link.write_and_read_registers(watchdog_ms, [watchdog_before + 100], unmapped, 2),
                    "write 1 at 25 and read 2 at 999" if one_transaction else "read 2 at 999",
                ),
            ]
            for request, name in cases:
                with pytest.raises(PumpRefusedError) as info:
                    await request()
                assert (str(info.value), info.value.code) == (refused % name, 2)
            # A transaction refused whole left the register alone; a write on its own was applied.
            applied = 0 if one_transaction else 100
            assert await link.read_registers(watchdog_ms, 1) == [watchdog_before + applied]
            await driver.close()

    asyncio.run(body())


@pytest.mark.parametrize("kind", KINDS)
def test_missing_telemetry_is_declared(kind: str) -> None:
    async def body() -> None:
        async with pump_under_test(kind) as driver:
            if kind in {"nesp", "harvard"} or kind.endswith("+map"):
                assert "pressure_mmhg" in driver.lacks
            else:
                assert driver.lacks == frozenset()

    asyncio.run(body())
