"""The ``ketapump`` command line: one module per command group, adapters only.

Each module turns options into calls on the layers below (the session engine, the control loop, the QA
tests, the simulator) and their results into output; none holds clinical or control logic. It may import
every layer below it, each through its door; nothing imports it but ``ketapump.__main__``. Shared
conventions (README, "Command-line conventions"): results on stdout, progress and diagnostics on
stderr; failures are one ``ketapump: …`` line and an exit code from the README's tables
(:mod:`ketapump.cli.common`).
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Annotated, Final

import typer

from ketapump import _core
from ketapump.cli.common import command_group, lazy_group, result

#: Each command and the module that registers it (``register_cli``), in the help's order: a module is
#: imported only when one of its commands runs or the help lists them.
COMMAND_MODULES: Final = {
    "sim": "ketapump.cli.sim",
    "run": "ketapump.cli.run",
    "dose": "ketapump.cli.clinical",
    "demo": "ketapump.cli.clinical",
    "session": "ketapump.cli.clinical",
    "serve": "ketapump.cli.console",
    "console": "ketapump.cli.console",
    "log": "ketapump.cli.log",
    "course": "ketapump.cli.course",
    "qa": "ketapump.cli.qa",
}

app = command_group(
    "ketapump",
    cls=lazy_group(COMMAND_MODULES),
    pretty_exceptions_show_locals=False,
    help="Infusion-pump control bridge (engineering software, not a certified medical device).",
)


def version_text() -> str:
    """The package's version and the compiled core's: its version, build profile and file (which of
    several builds on a machine is the one loaded)."""
    try:
        package = metadata.version("ketapump")
    except metadata.PackageNotFoundError:
        package = "(not installed)"
    return (
        f"ketapump {package}\n"
        f"core {_core.__version__} ({_core.BUILD_PROFILE} build, {_core.__file__})\n"
        f"Python {platform.python_version()}"
    )


def _print_version(requested: bool) -> None:
    if requested:
        result(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_print_version,
            help="Print the package's and the core's versions and exit.",
        ),
    ] = False,
) -> None:
    """Infusion-pump control bridge (engineering software, not a certified medical device)."""


def main() -> None:
    app()


__all__ = ["COMMAND_MODULES", "app", "main"]
