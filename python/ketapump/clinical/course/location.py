"""Where the course database lives, and the stored form of what goes into it: times as fixed-width UTC
ISO-8601 text (refused without a time zone), text and amounts checked before they reach SQL."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

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


#: The one rule for patient ids, applied wherever an id enters: surrounding white space is dropped,
#: letters are lower-cased, and what remains is 1–64 of ``a-z 0-9 . _ -``, starting with a letter or a
#: digit. ``"PC "``, ``"pc"`` and ``"Pc"`` are one patient.
PATIENT_ID_RULE: Final = (
    "trimmed, lower-cased, then 1–64 of the letters a-z, digits and . _ - (starting with a letter or digit)"
)
_PATIENT_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}\Z")
#: Ids at least this long are near each other at one edit; shorter ones only when equal but for . _ -.
_NEAR_EDIT_MIN_LENGTH: Final = 4


def normalise_patient_id(patient_id: str) -> str:
    """``patient_id`` under :data:`PATIENT_ID_RULE`; a :class:`CourseError` naming it when it cannot be."""
    if not isinstance(patient_id, str):
        raise CourseError("patient id", f"must be text, not {type(patient_id).__name__}")
    normal = patient_id.strip().lower()
    if not _PATIENT_ID.match(normal):
        raise CourseError(f"patient id {patient_id!r}", f"is not valid: a patient id is {PATIENT_ID_RULE}")
    return normal


def near_patient_ids(patient_id: str, known: Iterable[str]) -> list[str]:
    """The ``known`` ids a new ``patient_id`` could be a typo of: equal once ``.``, ``_`` and ``-`` are
    dropped, or (for ids of four characters or more) one insertion, deletion, substitution or swap of
    neighbours apart. Both ids already follow :data:`PATIENT_ID_RULE`."""

    def skeleton(text: str) -> str:
        return re.sub(r"[._-]", "", text)

    near = []
    for other in known:
        if other == patient_id:
            continue
        if skeleton(other) == skeleton(patient_id) or (
            min(len(other), len(patient_id)) >= _NEAR_EDIT_MIN_LENGTH and _one_edit_apart(other, patient_id)
        ):
            near.append(other)
    return sorted(near)


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by exactly one insertion, deletion, substitution or swap of two
    neighbouring characters."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        swapped = i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
        return a[i + 1 :] == b[i + 1 :] or swapped
    return a[i:] == b[i + 1 :]
