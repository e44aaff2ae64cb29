"""``ketapump log verify``: recompute an audit log's hash chain and name the first damaged line.

Exit codes follow sysexits: 0 intact, 65 (EX_DATAERR) damaged, 66 (EX_NOINPUT) missing or unreadable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ketapump.bridge import verify

log_app = typer.Typer(name="log", no_args_is_help=True, help="Inspect audit logs.")


@log_app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="Audit log (JSON lines) to check.")],
    expect_prev: Annotated[
        str | None,
        typer.Option(help="Final hash of the previous file, which the first record must continue."),
    ] = None,
) -> None:
    """Recompute the hash chain of FILE and name the first damaged line."""
    try:
        result = verify(file, expect_prev=expect_prev)
    except FileNotFoundError:
        typer.echo(f"{file}: no such file", err=True)
        raise typer.Exit(os.EX_NOINPUT) from None
    except OSError as exc:
        typer.echo(f"{file}: cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(os.EX_NOINPUT) from None
    if not result.ok:
        typer.echo(f"{file}: line {result.bad_line}: {result.reason}", err=True)
        raise typer.Exit(os.EX_DATAERR)
    typer.echo(f"OK: {result.records} records, final hash {result.final_hash}")
