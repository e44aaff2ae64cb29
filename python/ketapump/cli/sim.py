"""``ketapump sim``: the simulated pump served over Modbus TCP, Modbus RTU and New Era ASCII (PTYs) until
SIGINT/SIGTERM."""

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
from ketapump.bridge import configure_diagnostics
from ketapump.cli.common import Command, fail, set_diagnostic_levels
from ketapump.clock import ScaledClock, settled_heap
from ketapump.errors import ConfigurationError
from ketapump.validation import input_exit_code


def sim(
    modbus_tcp: Annotated[bool, typer.Option(help="Serve Modbus TCP.")] = True,
    modbus_rtu: Annotated[bool, typer.Option(help="Serve Modbus RTU on a PTY.")] = True,
    nesp: Annotated[bool, typer.Option(help="Serve New Era ASCII on a PTY.")] = True,
    harvard: Annotated[
        bool, typer.Option(help="Serve the Harvard Apparatus Pump 11 Elite command set on a PTY.")
    ] = False,
    tcp_port: Annotated[int, typer.Option(min=0, max=65535, help="Modbus TCP port (0 = ephemeral).")] = 0,
    bind: Annotated[str, typer.Option(help="Address to bind Modbus TCP to.")] = "127.0.0.1",
    syringe: Annotated[str | None, typer.Option(help="Syringe from the catalogue.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Noise seed.")] = None,
    time_scale: Annotated[float, typer.Option(min=0.001, help="Pump seconds per real second.")] = 1.0,
    scenario: Annotated[Path | None, typer.Option(help="Scenario file (TOML): pump build, faults.")] = None,
    baud: Annotated[int, typer.Option(min=300, help="Serial baud rate the PTYs are paced at.")] = 19_200,
    debug: Annotated[
        bool, typer.Option("--debug", help="Trace every frame in and out in the diagnostics.")
    ] = False,
    register_map: Annotated[
        Path | None,
        typer.Option(
            help="Serve Modbus with this register map (TOML, docs/register-map.md: bring your own map).",
            show_default="the reference pump's",
        ),
    ] = None,
) -> None:
    """Run a simulated pump until SIGINT/SIGTERM.

    Prints one JSON line naming the endpoints (keys modbus_tcp, modbus_rtu_pty, nesp_pty, and harvard_pty
    with --harvard; null when not served). Modbus unit id 1 (or the --register-map's), New Era and
    Harvard address 0. Diagnostics (each rejected
    frame, rate-limited; every frame with --debug) go to stderr as JSON lines. Exit codes: 65 invalid
    scenario, register map or option, 66 scenario or register map not found, 69 cannot serve (e.g. the
    port is taken).
    """
    # The simulator's servers load only for this command, not for every command's start.
    from ketapump.sim import Scenario, load_scenario, serve_register_map  # noqa: PLC0415

    try:
        plan = load_scenario(scenario) if scenario else Scenario(schema_version=1)
        overrides = {k: v for k, v in {"syringe": syringe, "seed": seed}.items() if v is not None}
        if overrides:
            # Validated like the file itself (model_copy alone would not check the new values).
            plan = Scenario.model_validate(plan.model_dump() | {"pump": plan.pump.model_dump() | overrides})
        pump = plan.build_pump()
        if register_map is not None:
            if harvard:
                raise ConfigurationError(
                    "--harvard",
                    "serves the reference pump's registers: it cannot be combined with --register-map",
                )
            serve_register_map(pump, register_map)
    except ConfigurationError as e:
        raise fail(str(e), input_exit_code(e)) from e
    except ValueError as e:
        raise fail(str(e), os.EX_DATAERR) from e
    configure_diagnostics(sys.stderr)
    set_diagnostic_levels(debug)
    with settled_heap():
        asyncio.run(_serve(pump, time_scale, modbus_tcp, tcp_port, bind, modbus_rtu, nesp, harvard, baud))


async def _serve(
    pump: _core.SimPump,
    time_scale: float,
    modbus_tcp: bool,
    tcp_port: int,
    bind: str,
    rtu: bool,
    nesp: bool,
    harvard: bool,
    baud: int,
) -> None:
    from ketapump.sim import SimServer  # noqa: PLC0415 (see sim())

    server = SimServer(pump, ScaledClock(time_scale), baud=baud)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        endpoints = await server.start(
            modbus_tcp=modbus_tcp, tcp_port=tcp_port, bind=bind, modbus_rtu=rtu, nesp=nesp, harvard=harvard
        )
    except OSError as e:
        await server.stop()
        raise fail(f"cannot serve: {e}", os.EX_UNAVAILABLE) from e
    sys.stdout.write(json.dumps(endpoints) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.stop()


def register_cli(app: typer.Typer) -> None:
    app.command(cls=Command)(sim)


__all__ = ["register_cli"]
