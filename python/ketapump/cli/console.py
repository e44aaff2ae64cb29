"""``ketapump serve`` (the operator console: several chairs, live in a browser, with an HTTP API) and
``ketapump console URL`` (a terminal attached to one). Adapters of :mod:`ketapump.console`."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ketapump.cli.common import Command, fail, progress_console, result_json, warn
from ketapump.clock import settled_heap
from ketapump.console import (
    DEMO_TIME_SCALE,
    WEB_PACKAGES,
    AttachError,
    Clinic,
    ClinicConfig,
    StartRequest,
    attach_until_stopped,
    bind,
    check_bind,
    demo_clinic,
    load_clinic,
    serve,
)
from ketapump.errors import ConfigurationError, CourseError
from ketapump.validation import input_exit_code

TOKEN_HELP = (
    "Bearer token every API request must carry (required to bind beyond loopback). Prefer the "
    "KETAPUMP_TOKEN environment variable: a command line is visible to every user."
)


def _web_stack() -> None:
    missing = [name for name in WEB_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise fail(
            f"the console needs {', '.join(missing)}: install it with pip install 'ketapump[console]'",
            os.EX_UNAVAILABLE,
        )


def serve_command(
    config: Annotated[
        Path | None, typer.Option(help="Clinic file (TOML): the chairs, their pumps and vitals feeds.")
    ] = None,
    demo: Annotated[
        bool,
        typer.Option("--demo", help="Three simulated chairs whose sessions start at once (no --config)."),
    ] = False,
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback --token is required.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 8080,
    token: Annotated[str | None, typer.Option(envvar="KETAPUMP_TOKEN", help=TOKEN_HELP)] = None,
    time_scale: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Pump seconds per real second for sim:// chairs.",
            show_default=f"{DEMO_TIME_SCALE:g} with --demo, else the clinic file's (1.0)",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="--demo: the folder of its records (recreated on each run).")
    ] = Path("ketapump-serve-demo"),
) -> None:
    """Serve the operator console: every chair's session live in a browser, with an HTTP API.

    Each chair runs the same session engine as `ketapump session` (validation, limits, kernel, audit log,
    course history). Prints one JSON line on stdout once listening (`url`, `chairs`, `interrupted`: the
    sessions an earlier run left unfinished); serves until SIGINT or SIGTERM, which stop the running
    sessions' pumps. Exit codes: 0 stopped, 2 usage (also: a bind beyond loopback without --token),
    65 invalid clinic file, 66 clinic file not found, 69 cannot serve (address in use, the console
    extra missing), 73 the --demo folder cannot be created.
    """
    if demo == (config is not None):
        raise typer.BadParameter("give either --config FILE or --demo", param_hint="--config / --demo")
    try:
        check_bind(host, token)
    except ConfigurationError as e:
        raise typer.BadParameter(e.problem, param_hint="--token") from e
    _web_stack()
    starts: list[tuple[str, StartRequest]] = []
    if config is not None:
        try:
            clinic_config = load_clinic(config)
        except ConfigurationError as e:
            raise fail(str(e), input_exit_code(e)) from e
        if time_scale is not None:
            clinic_config = _scaled(clinic_config, time_scale)
    else:
        try:
            clinic_config, starts = demo_clinic(out, time_scale or DEMO_TIME_SCALE)
        except OSError as e:
            raise fail(f"cannot create {out}: {e.strerror or e}", os.EX_CANTCREAT) from e
        except CourseError as e:
            raise fail(f"cannot create the demo's course history: {e}", os.EX_CANTCREAT) from e
    try:
        sock = bind(host, port)
    except OSError as e:
        raise fail(f"cannot serve on {host}:{port}: {e.strerror or e}", os.EX_UNAVAILABLE) from e
    console = progress_console()

    def ready(info: dict[str, Any]) -> None:
        result_json(info)
        console.print(
            f"ketapump: serving {len(info['chairs'])} chairs at {info['url']} (Ctrl-C stops; "
            "running sessions' pumps are stopped)",
            highlight=False,
            soft_wrap=True,
        )
        if info["interrupted"]:
            warn(f"{info['interrupted']} interrupted session(s) never ended: see the console's front page")
        for failed in info["failed_to_start"]:
            warn(f"{failed['chair']}: {failed['message']}")

    # Imported now rather than when the server starts, so that they are settled with the rest.
    for name in WEB_PACKAGES:
        importlib.import_module(name)
    with settled_heap():
        asyncio.run(serve(Clinic(clinic_config), sock, token=token, starts=starts, on_ready=ready))


def _scaled(config: ClinicConfig, time_scale: float) -> ClinicConfig:
    settings = config.clinic.model_copy(update={"time_scale": time_scale})
    return config.model_copy(update={"clinic": settings})


def console_command(
    url: Annotated[str, typer.Argument(help="The console's address, e.g. http://127.0.0.1:8080/.")],
    token: Annotated[str | None, typer.Option(envvar="KETAPUMP_TOKEN", help=TOKEN_HELP)] = None,
) -> None:
    """Attach a live terminal view to a running `ketapump serve`: every chair's card, as in the browser.

    Draws on stdout until Ctrl-C (or SIGTERM), or until the console stops. Exit codes: 0 stopped or the
    console closed, 69 the console cannot be reached (or was lost), 76 what answered is not a ketapump
    console, 77 the token was refused.
    """
    _web_stack()
    try:
        # The live view is this command's result: it goes to stdout.
        why = asyncio.run(attach_until_stopped(url, token, Console()))
    except AttachError as e:
        code = {"unauthorized": os.EX_NOPERM, "protocol": os.EX_PROTOCOL}.get(e.why, os.EX_UNAVAILABLE)
        raise fail(str(e), code) from e
    if why != "stopped":
        warn(why)


def register_cli(app: typer.Typer) -> None:
    app.command("serve", cls=Command)(serve_command)
    app.command("console", cls=Command)(console_command)


__all__ = ["register_cli"]
