"""The ``ketapump`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ketapump import _core
from ketapump.errors import ConfigurationError
from ketapump.sim.scenario import Scenario, load_scenario
from ketapump.sim.server import SimClock, SimServer

app = typer.Typer(
    name="ketapump",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Infusion-pump control bridge (engineering software, not a certified medical device).",
)


@app.callback()
def _root() -> None:
    """Infusion-pump control bridge (engineering software, not a certified medical device)."""


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"ketapump: {message}", err=True)
    return typer.Exit(code)


@app.command()
def sim(
    modbus_tcp: Annotated[bool, typer.Option(help="Serve Modbus TCP.")] = True,
    modbus_rtu: Annotated[bool, typer.Option(help="Serve Modbus RTU on a PTY.")] = True,
    nesp: Annotated[bool, typer.Option(help="Serve New Era ASCII on a PTY.")] = True,
    tcp_port: Annotated[int, typer.Option(min=0, max=65535, help="Modbus TCP port (0 = ephemeral).")] = 0,
    bind: Annotated[str, typer.Option(help="Address to bind Modbus TCP to.")] = "127.0.0.1",
    syringe: Annotated[str | None, typer.Option(help="Syringe from the catalogue.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Noise seed.")] = None,
    time_scale: Annotated[float, typer.Option(min=0.001, help="Pump seconds per real second.")] = 1.0,
    scenario: Annotated[Path | None, typer.Option(help="Scenario file (TOML): pump build, faults.")] = None,
    baud: Annotated[int, typer.Option(min=300, help="Serial baud rate the PTYs are paced at.")] = 19_200,
) -> None:
    """Run a simulated pump until SIGINT/SIGTERM.

    Prints one JSON line naming the endpoints (keys modbus_tcp, modbus_rtu_pty, nesp_pty; null when not
    served). Modbus unit id 1, New Era address 0.
    """
    try:
        plan = load_scenario(scenario) if scenario else Scenario(schema_version=1)
        overrides = {k: v for k, v in {"syringe": syringe, "seed": seed}.items() if v is not None}
        if overrides:
            plan = plan.model_copy(update={"pump": plan.pump.model_copy(update=overrides)})
            type(plan).model_validate(plan.model_dump())
        pump = plan.build_pump()
    except ConfigurationError as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    except ValueError as e:
        raise _fail(str(e), os.EX_DATAERR) from e
    asyncio.run(_serve(pump, time_scale, modbus_tcp, tcp_port, bind, modbus_rtu, nesp, baud))


async def _serve(
    pump: _core.SimPump,
    time_scale: float,
    modbus_tcp: bool,
    tcp_port: int,
    bind: str,
    rtu: bool,
    nesp: bool,
    baud: int,
) -> None:
    server = SimServer(pump, SimClock(time_scale), baud=baud)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        endpoints = await server.start(
            modbus_tcp=modbus_tcp, tcp_port=tcp_port, bind=bind, modbus_rtu=rtu, nesp=nesp
        )
    except OSError as e:
        await server.stop()
        raise _fail(f"cannot serve: {e}", os.EX_UNAVAILABLE) from e
    sys.stdout.write(json.dumps(endpoints) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
