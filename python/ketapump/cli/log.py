"""``ketapump log verify``: recompute an audit log's hash chain and MACs, and say what is wrong and where.

Exit codes follow sysexits: 0 authentic and complete (or ending where its writer marked a failed write),
65 (EX_DATAERR) edited, forged, reordered, truncated, closing records missing, or not authenticable with
this installation's key; 66 (EX_NOINPUT) missing, unreadable or not a regular file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ketapump.bridge import AuditKeyError, Seal, VerifyResult, load_key, read_records, verify
from ketapump.cli.common import Command, command_group, fail, result
from ketapump.clinical import CourseHistory
from ketapump.errors import CourseError
from ketapump.validation import FileReadError

log_app = command_group("log", help="Inspect audit logs.")


@log_app.command("verify", cls=Command)
def verify_command(
    file: Annotated[Path, typer.Argument(help="Audit log (JSON lines) to check.")],
    expect_prev: Annotated[
        str | None,
        typer.Option(help="Final hash of the previous file, which the first record must continue."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(help="The audit key that wrote it (default: this installation's key)."),
    ] = None,
    course_db: Annotated[
        Path | None,
        typer.Option(
            help="Course database whose seal of this session's log to check against (default: the one "
            "the log names, if it is there)."
        ),
    ] = None,
) -> None:
    """Check FILE: every record's hash, MAC and link, and its end (against the course history's seal).

    Exit codes: 0 authentic and complete (or ending where its writer marked a failed write), 2 usage, 65
    edited, forged, reordered, truncated, closing records missing or a bad key (the first bad line named),
    66 missing, unreadable or not a regular file.
    """
    try:
        key = load_key(key_file) if key_file is not None else None
    except AuditKeyError as e:
        raise fail(str(e), os.EX_DATAERR) from None
    try:
        seal, note = _seal_for(file, course_db)
        checked = verify(file, expect_prev=expect_prev, key=key, seal=seal)
    except FileReadError as exc:
        raise fail(f"{file}: {'no such file' if exc.not_found else exc.problem}", os.EX_NOINPUT) from None
    except FileNotFoundError:
        raise fail(f"{file}: no such file", os.EX_NOINPUT) from None
    except OSError as exc:
        raise fail(f"{file}: cannot read: {exc.strerror or exc}", os.EX_NOINPUT) from None
    if not checked.ok:
        raise fail(f"{file}: line {checked.bad_line}: {checked.reason}", os.EX_DATAERR)
    result(_ok_line(checked) + note)


def _ok_line(checked: VerifyResult) -> str:
    line = f"OK: {checked.records} records, final hash {checked.final_hash}"
    return line if checked.status == "ok" else f"{line} ({checked.reason})"


def _seal_for(file: Path, course_db: Path | None) -> tuple[Seal | None, str]:
    """The course history's seal of the session this log records, and a note for the OK line: from
    ``course_db``, or the database the log names when it is still there. A database that cannot be read
    is no seal (the log is still checked on its own), and the note says so."""
    records = read_records(file)
    opened = next((r for r in records if r.get("event") == "course_history_opened"), None)
    if course_db is None and opened is None:
        return None, ""
    where = course_db if course_db is not None else Path(str(opened.get("course_db") if opened else ""))
    session = next((r.get("session_id") for r in records if r.get("session_id")), None)
    if not where.is_file() or not isinstance(session, str):
        return None, f"; its course database {where} is not here to compare its end with"
    try:
        with CourseHistory.open(where, readonly=True) as history:
            named = opened.get("course_db_id") if opened else None
            if named is not None and named != history.database_id:
                return None, f"; {where} is not the course database it names ({named})"
            sealed = history.log_seal(session)
    except CourseError as e:
        return None, f"; its course database could not be read ({e})"
    if sealed is None:
        return None, f"; {where} holds no seal of session {session}"
    return Seal(sealed.records, sealed.head, f"the course history {where}"), f"; its end matches {where}"


def register_cli(app: typer.Typer) -> None:
    app.add_typer(log_app, name="log")


__all__ = ["register_cli"]
