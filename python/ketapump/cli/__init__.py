"""The ``ketapump`` command line: one module per command group, adapters only.

Each module turns options into calls on the layers below (the session engine, the control loop, the QA
tests, the simulator) and their results into output; none holds clinical or control logic. It may import
every layer below it, each through its door; nothing imports it but ``ketapump.__main__``. Shared
conventions (README, "Command-line conventions"): results on stdout, progress and diagnostics on
stderr; failures are one ``ketapump: …`` line and an exit code from the README's tables
(:mod:`ketapump.cli.common`).
"""

from __future__ import annotations

import typer

from ketapump.cli import clinical, course, log, qa, run, sim

app = typer.Typer(
    name="ketapump",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Infusion-pump control bridge (engineering software, not a certified medical device).",
)


@app.callback()
def _root() -> None:
    """Infusion-pump control bridge (engineering software, not a certified medical device)."""


app.command()(sim.sim)
app.command()(run.run)
app.add_typer(log.log_app, name="log")
app.add_typer(course.course_app, name="course")
clinical.register_cli(app)
app.add_typer(qa.qa_app, name="qa")


def main() -> None:
    app()


__all__ = ["app", "main"]
