"""``ketapump course init``, ``migrate``, ``show``, ``note``, ``end``, ``score`` and ``allow``: the course
database, a patient's course history (with the outcome scores' trend), journal notes, ending a session a
crash left open, recording PHQ-9/MADRS scores, and standing overrides with an expiry.

Exit codes follow sysexits: 0 done (a late note is kept and flagged), 65 (EX_DATAERR) refused data (a
note before its session, an empty, damaged, foreign or older file, an invalid patient id), 66
(EX_NOINPUT) unknown patient or session or no database, 73 (EX_CANTCREAT) ``init`` over an existing file
or where none can be made, 74 (EX_IOERR) the database could not be read or written, 2 usage (``note``
without ``--operator``).
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer

from ketapump import _core
from ketapump.cli.common import (
    COURSE_DB_DEFAULT,
    OPERATOR_ENV,
    OPERATOR_HELP,
    Command,
    command_group,
    fail,
    operator_name,
    output_dir,
    result,
    result_json,
)
from ketapump.clinical import CourseHistory, CourseSummary, default_course_path, plot_trend
from ketapump.errors import CourseError, CourseRecordNotFoundError, CourseStorageError


def _parse_time(value: str | None) -> _dt.datetime | None:
    """A CLI time: ISO-8601, UTC unless it carries an offset."""
    if value is None:
        return None
    try:
        at = _dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise typer.BadParameter(f"{value!r} is not an ISO-8601 time") from e
    return at if at.utcoffset() is not None else at.replace(tzinfo=_dt.UTC)


def _short(at: _dt.datetime | None) -> str:
    return "—" if at is None else at.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%MZ")


def _describe(summary: CourseSummary, path: Path) -> list[str]:
    p = summary.patient
    height = "" if p.height_cm is None else f", {p.height_cm:g} cm"
    lines = [f"patient {p.patient_id}: {p.weight_kg:g} kg{height}  ({path})"]
    if not summary.sessions:
        lines.append("  no sessions recorded")
    else:
        lines.append(
            f"  {'#':>2}  {'session':<16} {'started':<18} {'ended':<18} {'delivered':>10} "
            f"{'mg/kg':>7} {'since prev':>11}  outcome"
        )
        for n, entry in enumerate(summary.sessions, start=1):
            s = entry.session
            if s.delivered_mg is None:
                dose, per_kg, outcome = f"{s.programmed_mg:.2f} mg*", "", "in progress"
            else:
                dose, per_kg = f"{s.delivered_mg:.2f} mg", f"{s.delivered_mg / s.weight_kg:.3f}"
                outcome = f"{s.outcome}" if entry.counts else f"{s.outcome} (not counted)"
            since = "—" if entry.interval_h is None else f"{entry.interval_h:.1f} h"
            lines.append(
                f"  {n:>2}  {s.session_id:<16} {_short(s.started_at):<18} {_short(s.ended_at):<18} "
                f"{dose:>10} {per_kg:>7} {since:>11}  {outcome}"
            )
    series = summary.initial_series
    status = f"{series.counted} of {series.required} counted sessions"
    if series.complete:
        schedule = "within" if series.on_schedule else "later than"
        status += (
            f", complete on {_short(series.completed_at)} ({schedule} {series.within_days:g} days of the "
            f"first, {_short(series.first_start)})"
        )
    elif series.deadline is not None:
        status += f", expected by {_short(series.deadline)}" + (" — PAST" if series.past_deadline else "")
    lines.append(f"initial series: {status}")
    m = summary.maintenance
    if m is None:
        lines.append("maintenance: after the initial series")
    else:
        label = {"not_due": "not yet due", "due": "DUE", "overdue": "OVERDUE"}[m.status]
        status = "; ".join(f"{t.label} {t.status}" for t in summary.outcomes.values())
        lines.append(
            f"maintenance: due from {_short(m.due_from)}, overdue after {_short(m.overdue_after)} "
            f"— {label} as of {_short(summary.now)}" + (f" (outcomes: {status})" if status else "")
        )
    for session_id in summary.open_sessions:
        lines.append(
            f"open session: {session_id} was never ended; *its programmed dose counts in every dose window"
        )
    if summary.alarms:
        lines.append("alarms:")
        lines += [f"  {_short(a.at)}  {a.session_id}  {a.code}  {a.detail}".rstrip() for a in summary.alarms]
    if summary.notes:
        lines.append("notes:")
        lines += [
            f"  {_short(n.at)}  {n.session_id}  {n.text}"
            + (f"  (by {n.who})" if n.who else "")
            + _late(n.late_h)
            for n in summary.notes
        ]
    lines += _at_the_chair(summary)
    lines += _outcome_lines(summary)
    if summary.standing_overrides:
        lines.append("standing overrides:")
        lines += [
            f"  {o.kind} by {o.who} from {_short(o.granted_at)} until {_short(o.expires_at)}"
            f"{'' if o.granted_at <= summary.now <= o.expires_at else ' (not in force now)'}: {o.reason}"
            for o in summary.standing_overrides
        ]
    if summary.overrides:
        lines.append("overrides:")
        lines += [
            f"  {_short(o.at)}  {o.session_id or '(no session)'}  {o.kind} by {o.who or '(not recorded)'}: "
            f"{o.reason}"
            for o in summary.overrides
        ]
    return lines


def _at_the_chair(summary: CourseSummary) -> list[str]:
    """Per session: what the operators did, what they saw (observations) and gave (medications)."""
    lines: list[str] = []
    for entry in summary.sessions:
        sid = entry.session.session_id
        actions = [a for a in summary.actions if a.session_id == sid]
        seen = [o for o in summary.observations if o.session_id == sid]
        given = [m for m in summary.medications if m.session_id == sid]
        if not (actions or seen or given):
            continue
        lines.append(f"session {sid} at the chair:")
        for a in actions:
            by = (a.who or "(anonymous)") if a.actor == "operator" else f"the {a.actor}"
            result = "" if a.accepted else f" — refused: {a.why}"
            reason = f": {a.reason}" if a.reason else ""
            lines.append(f"  {_short(a.at)}  {a.action} by {by} ({a.source}){reason}{result}")
        for o in seen:
            value = "" if o.value is None else f" {o.value:g}" + (f" ({o.scale})" if o.scale else "")
            note = f" — {o.note}" if o.note else ""
            lines.append(f"  {_short(o.at)}  observation {o.kind}{value}{note} by {o.who or '(anonymous)'}")
        for m in given:
            reason = f" for {m.reason}" if m.reason else ""
            lines.append(
                f"  {_short(m.at)}  medication {m.drug} {m.dose:g} {m.unit} {m.route}{reason} "
                f"by {m.who or '(anonymous)'}"
            )
    return lines


def _outcome_lines(summary: CourseSummary) -> list[str]:
    """Each rating scale's trend: the scores, the change from the baseline and what it means."""
    if not summary.outcomes:
        return ["outcomes: no PHQ-9 or MADRS scores recorded"]
    lines = ["outcomes:"]
    for trend in summary.outcomes.values():
        scores = " → ".join(str(v) for _, v in trend.points)
        change = "" if trend.change_pct is None else f", {-trend.change_pct:+.0f} % from baseline"
        lines.append(
            f"  {trend.label}: {scores}{change} — {trend.status.upper()} "
            f"(response ≥ {trend.response_reduction_pct:g} % reduction, remission ≤ {trend.remission_max})"
        )
    return lines


def _late(late_h: float | None) -> str:
    return "" if late_h is None else f"  (LATE: {late_h:.1f} h after the journal window)"


def _course_error(path: Path, error: Exception) -> typer.Exit:
    """Report ``error`` naming the file and the record; sysexits code for its kind."""
    text = str(error)
    message = text if text.startswith(str(path)) else f"{path}: {text}"
    if isinstance(error, CourseRecordNotFoundError):
        return fail(message, os.EX_NOINPUT)
    if isinstance(error, CourseStorageError):
        return fail(message, os.EX_IOERR)
    if isinstance(error, CourseError):
        return fail(message, os.EX_DATAERR)
    return fail(message, os.EX_IOERR)


def _db_option() -> Any:
    return typer.Option("--course-db", help="Course database (SQLite).", show_default=COURSE_DB_DEFAULT)


course_app = command_group("course", help="Course history: sessions, maintenance timing, notes.")


@course_app.command("init", cls=Command)
def init_command(
    course_db: Annotated[
        Path | None,
        typer.Argument(help="Where to create it (default: $XDG_DATA_HOME/ketapump/course.sqlite3)."),
    ] = None,
) -> None:
    """Create a new, empty course database (never over an existing file)."""
    path = course_db if course_db is not None else default_course_path()
    try:
        with CourseHistory.create(path, at=_dt.datetime.now(_dt.UTC)) as history:
            database_id = history.database_id
    except CourseError as e:  # an existing file, or no way to make one: nothing was created
        raise fail(str(e), os.EX_CANTCREAT) from None
    result(f"created course database {path} (id {database_id})")


@course_app.command("migrate", cls=Command)
def migrate_command(
    course_db: Annotated[
        Path | None, typer.Argument(help="The database (default: $XDG_DATA_HOME/ketapump/course.sqlite3).")
    ] = None,
) -> None:
    """Bring a course database of an older schema up to this ketapump's, keeping a backup of it first."""
    path = course_db if course_db is not None else default_course_path()
    try:
        done = CourseHistory.migrate(path, at=_dt.datetime.now(_dt.UTC))
    except (CourseError, sqlite3.Error) as e:
        raise _course_error(path, e) from None
    if done.backup is None:
        result(f"{path} is at schema {done.to_version} already: nothing to do")
    else:
        result(f"migrated {path} from schema {done.from_version} to {done.to_version}; backup: {done.backup}")


@course_app.command("show", cls=Command)
def show_command(
    patient: Annotated[str, typer.Argument(help="Patient id.")],
    course_db: Annotated[Path | None, _db_option()] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output on stdout.")] = False,
    now: Annotated[
        str | None,
        typer.Option(
            help="Reference time for maintenance timing (ISO-8601, UTC unless an offset).", show_default="now"
        ),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the outcome scores' trend (PHQ-9, MADRS) as a PNG here.")
    ] = None,
) -> None:
    """The patient's sessions, initial series, maintenance timing, outcome scores' trend, alarms, notes
    and overrides (standing ones included), and per session what the operators did, observed and gave."""
    path = course_db if course_db is not None else default_course_path()
    at = _parse_time(now) or _dt.datetime.now(_dt.UTC)
    try:
        with CourseHistory.open(path, readonly=True) as history:
            summary = history.course_summary(patient, at)
    except (CourseError, sqlite3.Error) as e:
        raise _course_error(path, e) from None
    if plot is not None:
        if not summary.outcomes:
            raise fail(f"{path}: patient {patient}: no PHQ-9 or MADRS scores to plot", os.EX_DATAERR)
        output_dir(plot.parent if str(plot.parent) else Path("."))
        try:
            plot_trend(list(summary.outcomes.values()), plot, title=f"patient {patient}: outcome scores")
        except OSError as e:
            raise fail(f"cannot write {plot}: {e.strerror or e}", os.EX_CANTCREAT) from e
    if json_output:
        result_json(summary.to_json())
    else:
        result("\n".join(_describe(summary, path)))


@course_app.command("note", cls=Command)
def note_command(
    session: Annotated[str, typer.Argument(help="Session id.")],
    text: Annotated[str, typer.Argument(help="The journal note.")],
    course_db: Annotated[Path | None, _db_option()] = None,
    at: Annotated[
        str | None, typer.Option(help="Time of the note (ISO-8601, UTC unless an offset; default now).")
    ] = None,
    operator: Annotated[str | None, typer.Option(envvar=OPERATOR_ENV, help=OPERATOR_HELP)] = None,
) -> None:
    """Attach a journal note, in the operator's name, to a session (due within 24 h of its end; a later
    one is kept, flagged late)."""
    who = operator_name(operator)
    path = course_db if course_db is not None else default_course_path()
    when = _parse_time(at) or _dt.datetime.now(_dt.UTC)
    try:
        with CourseHistory.open(path) as history:
            note = history.add_note(session, text, when, who=who)
    except (CourseError, sqlite3.Error) as e:
        raise _course_error(path, e) from None
    result(f"note added to session {note.session_id} at {_short(note.at)}{_late(note.late_h)}")


#: The outcome of a session ended from the command line (a crash left it open): not "complete", so it
#: does not count in the initial series unless the course settings name it.
ENDED_BY_HAND = "ended_unfinished"


@course_app.command("end", cls=Command)
def end_command(
    session: Annotated[str, typer.Argument(help="Session id (in progress: a crash left it open).")],
    delivered_mg: Annotated[
        float, typer.Option(min=0.0, help="The dose it delivered (mg), from its audit log or the pump.")
    ],
    reason: Annotated[str, typer.Option(help="Why it is ended by hand (kept as a journal note).")],
    course_db: Annotated[Path | None, _db_option()] = None,
    at: Annotated[
        str | None, typer.Option(help="When it ended (ISO-8601, UTC unless an offset; default now).")
    ] = None,
) -> None:
    """End a session a crash left in progress, with the dose it delivered and a reason.

    Until it is ended, its programmed dose counts in every dose window and no other session of the
    patient can start. The outcome is `ended_unfinished`; the reason is kept as a journal note.
    """
    path = course_db if course_db is not None else default_course_path()
    when = _parse_time(at) or _dt.datetime.now(_dt.UTC)
    if not reason.strip():
        raise fail("--reason must not be blank", os.EX_DATAERR)
    try:
        with CourseHistory.open(path) as history, history.transaction():
            ended = history.end_session(session, when, delivered_mg, ENDED_BY_HAND)
            history.add_note(session, f"ended by hand: {reason.strip()}", when)
    except (CourseError, sqlite3.Error) as e:
        raise _course_error(path, e) from None
    result(
        f"session {ended.session_id} ended at {_short(ended.ended_at)}: {delivered_mg:g} mg, {ENDED_BY_HAND}"
    )


@course_app.command("score", cls=Command)
def score_command(
    patient: Annotated[str, typer.Argument(help="Patient id.")],
    phq9: Annotated[int | None, typer.Option("--phq9", help="PHQ-9 score (0–27).")] = None,
    madrs: Annotated[int | None, typer.Option("--madrs", help="MADRS score (0–60).")] = None,
    session: Annotated[str | None, typer.Option(help="The session the visit belongs to.")] = None,
    operator: Annotated[str | None, typer.Option(envvar=OPERATOR_ENV, help=OPERATOR_HELP)] = None,
    course_db: Annotated[Path | None, _db_option()] = None,
    at: Annotated[
        str | None, typer.Option(help="Time of the rating (ISO-8601, UTC unless an offset; default now).")
    ] = None,
) -> None:
    """Record a visit's PHQ-9 and/or MADRS score, with who rated it (both in one transaction)."""
    who = operator_name(operator)
    assert who is not None  # required: a usage error without one
    given = {name: value for name, value in (("phq9", phq9), ("madrs", madrs)) if value is not None}
    if not given:
        raise fail("give --phq9 N and/or --madrs N", 2)
    path = course_db if course_db is not None else default_course_path()
    when = _parse_time(at) or _dt.datetime.now(_dt.UTC)
    try:
        with CourseHistory.open(path, create=False) as history, history.transaction():
            recorded = [
                history.record_score(patient, name, value, when, session_id=session, who=who)
                for name, value in given.items()
            ]
    except (CourseError, sqlite3.Error) as e:
        raise _course_error(path, e) from None
    shown = ", ".join(f"{s.instrument.upper().replace('PHQ9', 'PHQ-9')} {s.score}" for s in recorded)
    result(f"recorded for patient {patient} at {_short(when)} by {who}: {shown}")


@course_app.command("allow", cls=Command)
def allow_command(
    patient: Annotated[str, typer.Argument(help="Patient id.")],
    kind: Annotated[
        str, typer.Argument(help="The soft limit or course rule (a limit kind, e.g. hours_since_last_start).")
    ],
    reason: Annotated[str, typer.Option(help="Why (recorded with every session it confirms).")],
    until: Annotated[str, typer.Option(help="When it expires (ISO-8601, UTC unless an offset).")],
    operator: Annotated[str | None, typer.Option(envvar=OPERATOR_ENV, help=OPERATOR_HELP)] = None,
    course_db: Annotated[Path | None, _db_option()] = None,
    at: Annotated[str | None, typer.Option(help="When it takes effect (default now).")] = None,
) -> None:
    """Grant a standing override: the soft finding KIND is confirmed with REASON for every session of the
    patient that starts before it expires (hard limits are never lifted)."""
    who = operator_name(operator)
    assert who is not None  # required: a usage error without one
    kinds = [name for name, _unit in _core.LIMIT_KINDS]
    if kind not in kinds:
        raise fail(f"{kind!r} is not a limit kind ({', '.join(kinds)})", os.EX_DATAERR)
    path = course_db if course_db is not None else default_course_path()
    granted = _parse_time(at) or _dt.datetime.now(_dt.UTC)
    expires = _parse_time(until)
    assert expires is not None
    try:
        with CourseHistory.open(path, create=False) as history:
            o = history.grant_standing_override(
                patient, kind, reason, who=who, granted_at=granted, expires_at=expires
            )
    except (CourseError, sqlite3.Error) as e:
        raise _course_error(path, e) from None
    result(f"standing override for patient {patient}: {o.kind} until {_short(o.expires_at)} by {o.who}")


def register_cli(app: typer.Typer) -> None:
    app.add_typer(course_app, name="course")


__all__ = ["register_cli"]
