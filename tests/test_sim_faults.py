"""Every fault kind, injected through its fault register, shows its effect on the wire.

A coverage test keeps this honest: every register of the fault block must have a case here.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import pytest
from pymodbus.exceptions import ModbusIOException

from ketapump import _core
from ketapump.sim.server import SimServer
from simhelpers import (
    REGMAP,
    Client,
    keep_alive,
    read,
    rtu_client,
    serving,
    start_infusing,
    tcp_client,
    write,
)

Case = Callable[[SimServer, Client], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


async def inject(client: Client, name: str, value: float) -> None:
    rr = await write(client, name, value)
    assert not rr.isError(), (name, rr)


async def running(client: Client, rate_ml_h: float = 60.0) -> None:
    await inject(client, "watchdog_ms", 10_000)
    await start_infusing(client, rate_ml_h)


@case("fault_occlusion")
async def _occlusion(server: SimServer, client: Client) -> None:
    await running(client, 100.0)
    await keep_alive(client, 1.0)
    before = await read(client, "line_pressure_mmhg")
    await inject(client, "fault_occlusion", 1)
    await keep_alive(client, 1.0)  # 60 pump seconds
    risen = await read(client, "line_pressure_mmhg") - before
    # Q/C with C = 2 µL/mmHg: 100 mL/h → 13.9 mmHg/s; expect well over 100 mmHg in a minute.
    assert risen > 100, risen
    await inject(client, "fault_occlusion", 0)


@case("fault_air")
async def _air(server: SimServer, client: Client) -> None:
    assert await read(client, "air_in_line") == 0
    await inject(client, "fault_air", 1)
    assert await read(client, "air_in_line") == 1


@case("fault_motor_stall")
async def _stall(server: SimServer, client: Client) -> None:
    await running(client, 100.0)
    await inject(client, "fault_motor_stall", 1)
    counts = await read(client, "encoder_counts")
    await keep_alive(client, 1.5)
    assert await read(client, "encoder_counts") == counts
    assert int(await read(client, "alarm_bits")) & 0b100  # motor stall
    assert await read(client, "status") == 3


@case("fault_encoder_slip_pct")
async def _slip(server: SimServer, client: Client) -> None:
    await running(client, 100.0)
    await keep_alive(client, 0.5)
    await inject(client, "fault_encoder_slip_pct", 100)
    counts = await read(client, "encoder_counts")
    delivered = server.pump.delivered_ml
    await keep_alive(client, 1.0)
    assert await read(client, "encoder_counts") == counts  # the encoder misses the motion
    assert server.pump.delivered_ml > delivered + 0.5  # while the drug still flows
    assert await read(client, "status") == 1


@case("fault_sensor_freeze")
async def _freeze(server: SimServer, client: Client) -> None:
    await running(client, 100.0)
    await keep_alive(client, 0.5)
    await inject(client, "fault_sensor_freeze", 1)
    frozen = (await read(client, "encoder_counts"), await read(client, "line_pressure_mmhg"))
    await keep_alive(client, 1.0)
    assert (await read(client, "encoder_counts"), await read(client, "line_pressure_mmhg")) == frozen
    await inject(client, "fault_sensor_freeze", 0)
    assert await read(client, "encoder_counts") > frozen[0]


@case("fault_pressure_offset_mmhg")
async def _offset(server: SimServer, client: Client) -> None:
    base = await read(client, "line_pressure_mmhg")
    await inject(client, "fault_pressure_offset_mmhg", 123.0)
    assert await read(client, "line_pressure_mmhg") == pytest.approx(base + 123.0, abs=0.5)


@case("fault_pressure_noise_mmhg")
async def _noise(server: SimServer, client: Client) -> None:
    await inject(client, "fault_pressure_noise_mmhg", 5.0)
    samples = []
    for _ in range(40):
        samples.append(await read(client, "line_pressure_mmhg"))
        await asyncio.sleep(0.012)  # past one ticker period, so each read sees a new noise sample
    assert 2.5 < statistics.stdev(samples) < 8.0, samples


@case("fault_unclamped")
async def _unclamped(server: SimServer, client: Client) -> None:
    # A siphon: pump 1 m above the patient, plunger clamp released, motor stopped.
    await inject(client, "fault_head_height_cm", 100.0)
    await inject(client, "fault_unclamped", 1)
    counts = await read(client, "encoder_counts")
    await asyncio.sleep(1.0)  # 60 pump seconds
    assert await read(client, "run_mode") == 0
    assert await read(client, "encoder_counts") > counts + 100  # the plunger moves on its own


@case("fault_head_height_cm")
async def _head(server: SimServer, client: Client) -> None:
    base = await read(client, "line_pressure_mmhg")
    await inject(client, "fault_head_height_cm", -50.0)
    await asyncio.sleep(1.0)  # let the line settle (60 pump seconds)
    # Lowering the pump 50 cm below the patient: the line pressure at the syringe rises by ρgh.
    assert await read(client, "line_pressure_mmhg") == pytest.approx(base + 50 * 0.7355, abs=3.0)


@case("fault_syringe_removed")
async def _removed(server: SimServer, client: Client) -> None:
    await inject(client, "fault_syringe_removed", 1)
    assert await read(client, "syringe_present") == 0


@case("fault_reset")
async def _reset(server: SimServer, client: Client) -> None:
    await running(client, 60.0)
    await keep_alive(client, 0.3)
    assert await read(client, "infused_ml") > 0
    await inject(client, "fault_reset", 1)
    assert await read(client, "alarm_bits") == 1  # reset alarm
    assert await read(client, "run_mode") == 0
    assert await read(client, "rate_ml_h") == 0
    # Counters cleared; the plunger may creep a count or two as the drive spring relaxes after the stop.
    assert await read(client, "infused_ml") < 0.002
    assert await read(client, "watchdog_ms") == 500


@case("fault_comm_drop_pct")
async def _drop(server: SimServer, client: Client) -> None:
    await inject(client, "fault_comm_drop_pct", 100)
    with pytest.raises(ModbusIOException):
        await read(client, "vendor_id")
    server.pump.inject("fault_comm_drop_pct", 0)


@case("fault_comm_delay_ms")
async def _delay(server: SimServer, client: Client) -> None:
    await inject(client, "fault_comm_delay_ms", 300)
    t = time.perf_counter()
    await read(client, "vendor_id")
    assert time.perf_counter() - t >= 0.3


@case("fault_comm_corrupt_pct")
async def _corrupt(server: SimServer, client: Client) -> None:
    # TCP carries no checksum to corrupt: this fault acts on the serial endpoints (CRC of RTU frames).
    rtu = await rtu_client(server, timeout=0.3)
    assert await read(rtu, "vendor_id") == 0x4B50
    await inject(client, "fault_comm_corrupt_pct", 100)
    with pytest.raises(ModbusIOException):
        await read(rtu, "vendor_id")
    rtu.close()


@case("fault_comm_silent")
async def _silent(server: SimServer, client: Client) -> None:
    rtu = await rtu_client(server, timeout=0.3)
    await inject(client, "fault_comm_silent", 1)
    for c in (client, rtu):
        with pytest.raises(ModbusIOException):
            await read(c, "vendor_id")
    rtu.close()


@case("fault_load_syringe")
async def _load_syringe(server: SimServer, client: Client) -> None:
    await running(client, 600.0)
    await keep_alive(client, 0.3)  # 18 pump seconds: 3 mL out of the barrel
    left = await read(client, "syringe_volume_ml")
    assert left < 50.0 - 2.0
    refused = await write(client, "fault_load_syringe", 1)  # never into a running pump
    assert refused.isError() and refused.exception_code == 4
    await inject(client, "run_mode", 0)
    at = await read(client, "plunger_volume_ml")
    await inject(client, "fault_load_syringe", 1)
    assert abs(await read(client, "syringe_volume_ml") - 50.0) < 0.01  # a new full syringe
    # The encoder counts on (the stopped drive's spring may still relax the plunger a count or two).
    assert abs(await read(client, "plunger_volume_ml") - at) < 0.01


def test_every_fault_register_has_a_wire_test() -> None:
    assert set(CASES) == {r.name for r in REGMAP.block("fault")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fault_effect_on_the_wire(name: str) -> None:
    async def body() -> None:
        pump = _core.SimPump("bd-plastipak-50", seed=2, slack_taken_up=True)
        async with serving(pump, time_scale=60.0) as server:
            client = await tcp_client(server, timeout=0.5)
            try:
                await CASES[name](server, client)
            finally:
                client.close()

    asyncio.run(body())
