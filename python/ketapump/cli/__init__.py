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
from typing import Annotated

import typer

from ketapump import _core
from ketapump.cli import clinical, console, course, log, qa, run, sim
from ketapump.cli.common import Command, command_group, result

app = command_group(
    "ketapump",
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


app.command(cls=Command)(sim.sim)
app.command(cls=Command)(run.run)
app.add_typer(log.log_app, name="log")
app.add_typer(course.course_app, name="course")
clinical.register_cli(app)
console.register_cli(app)
app.add_typer(qa.qa_app, name="qa")


def main() -> None:
    app()


__all__ = ["app", "main"]
