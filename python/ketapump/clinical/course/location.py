"""Where the course database lives, and the stored form of what goes into it: times as fixed-width UTC
ISO-8601 text (refused without a time zone), text and amounts checked before they reach SQL."""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path

from ketapump.errors import CourseError


def default_course_path() -> Path:
    """Where the course history lives unless told otherwise: ``$XDG_DATA_HOME/ketapump/course.sqlite3``,
    or ``~/.local/share/ketapump/course.sqlite3`` when ``XDG_DATA_HOME`` is unset, empty or relative
    (the XDG spec says to ignore a relative value). Unlike the audit logs (state), the history is data
    the clinician keeps for the whole course."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "ketapump" / "course.sqlite3"


def _stamp(subject: str, name: str, at: _dt.datetime) -> str:
    """``at`` as stored: fixed-width UTC ISO-8601 with microseconds and ``Z``."""
    if not isinstance(at, _dt.datetime):
        raise CourseError(subject, f"{name} must be a datetime, not {type(at).__name__}")
    if at.utcoffset() is None:
        raise CourseError(subject, f"{name} {at.isoformat()} has no time zone; pass an aware datetime (UTC)")
    return at.astimezone(_dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def _iso(at: _dt.datetime | None) -> str | None:
    """A time for JSON output: UTC ISO-8601 with ``Z``."""
    if at is None:
        return None
    return at.astimezone(_dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(subject: str, name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CourseError(subject, f"{name} must be non-empty text")
    return value


def _amount(subject: str, name: str, value: float, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CourseError(subject, f"{name} must be a finite number, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise CourseError(subject, f"{name} must be {'≥' if allow_zero else '>'} 0, not {value!r}")
    return float(value)
