"""``ketapump log verify``: recompute an audit log's hash chain and name the first damaged line.

Exit codes follow sysexits: 0 intact, 65 (EX_DATAERR) damaged, 66 (EX_NOINPUT) missing or unreadable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ketapump.bridge import verify
from ketapump.cli.common import Command, command_group, fail, result

log_app = command_group("log", help="Inspect audit logs.")


@log_app.command("verify", cls=Command)
def verify_command(
    file: Annotated[Path, typer.Argument(help="Audit log (JSON lines) to check.")],
    expect_prev: Annotated[
        str | None,
        typer.Option(help="Final hash of the previous file, which the first record must continue."),
    ] = None,
) -> None:
    """Recompute the hash chain of FILE and name the first damaged line.

    Exit codes: 0 intact, 2 usage, 65 damaged (the first damaged line named), 66 missing or unreadable.
    """
    try:
        checked = verify(file, expect_prev=expect_prev)
    except FileNotFoundError:
        raise fail(f"{file}: no such file", os.EX_NOINPUT) from None
    except OSError as exc:
        raise fail(f"{file}: cannot read: {exc.strerror or exc}", os.EX_NOINPUT) from None
    if not checked.ok:
        raise fail(f"{file}: line {checked.bad_line}: {checked.reason}", os.EX_DATAERR)
    result(f"OK: {checked.records} records, final hash {checked.final_hash}")
