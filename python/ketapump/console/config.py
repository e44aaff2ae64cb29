"""The clinic a ``ketapump serve`` runs (``--config clinic.toml``): its chairs, each a pump URL, a vitals
feed and the defaults of a session started on it, and where records go.

::

    schema_version = 1

    [clinic]
    name = "Ketamine clinic"
    course_db = "/var/lib/ketapump/course.sqlite3"   # must exist (ketapump course init); default location
    log_dir = "/var/lib/ketapump/logs"               # audit logs; default: $XDG_STATE_HOME/ketapump/logs
    out_dir = "ketapump-serve"                       # reports, one folder per chair and session
    time_scale = 1.0                                 # pump s per real s (sim://, a scaled hw-sim)
    pk_model = "clements"                            # the plasma-concentration model shown (clements, domino)

    [[chair]]
    id = "chair-1"                                   # lowercase letters, digits and dashes
    name = "Chair 1"
    pump = "modbus-tcp://10.0.0.21:502"
    vitals = "csv:/srv/monitor/chair-1.csv"          # sim, sim:SCRIPT.toml or csv:PATH
    protocol = "ketamine-depression"                 # the start form's default

The file is checked whole, as far as a session can be checked before its patient is known: the
course history must exist and be current (``ketapump course init`` creates it; ``serve`` never
does), and every chair's pump URL, vitals feed and protocol go through the same
:func:`ketapump.clinical.prepare_session` a session starts with (so a watchdog the URL's retries
cannot fit, or a protocol that does not load, is found at start-up). Every problem is listed with
its path (``chair[1].pump: …``); a missing file is told apart.
"""

from __future__ import annotations

import re
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ketapump.clinical import (
    PK_MODELS,
    CourseHistory,
    Patient,
    ScheduledCommand,
    ScriptedMonitor,
    ScriptedOperator,
    default_course_path,
    load_protocol,
    prepare_session,
    vitals_feed,
)
from ketapump.errors import ConfigurationError, CourseError, CourseRecordNotFoundError
from ketapump.validation import DocumentError, read_document

#: The scheduling jitter (real s) each chair's pump watchdog outlasts: the event loop of a ``serve``
#: carries every chair's control loop, the HTTP server and the event streams, so a tick can wait for all
#: of them (measured: docs/console.md, "Timing").
SHARED_LOOP_JITTER_S = 0.5

CHAIR_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class ClinicConfigError(DocumentError):
    """A clinic file could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "clinic configuration"


class ClinicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "ketapump"
    course_db: Path | None = None
    log_dir: Path | None = None
    out_dir: Path = Path("ketapump-serve")
    time_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    pk_model: str = "clements"

    @field_validator("pk_model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in PK_MODELS:
            raise ValueError(f"{name!r} is not one of {', '.join(PK_MODELS)}")
        return name


class ChairConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = ""
    pump: str
    vitals: str = "sim"
    protocol: str = "ketamine-depression"
    #: ``person``: a nurse acts from the card; ``script``: the chair's simulated patient script
    #: (``vitals = "sim:SCRIPT.toml"``) also plays its nurse, its ``[[nurse]]`` entries (demos, tests).
    nurse: Literal["person", "script"] = "person"

    @field_validator("id")
    @classmethod
    def _plain_id(cls, value: str) -> str:
        if not CHAIR_ID.match(value):
            raise ValueError("must be 1-32 lowercase letters, digits or dashes (it is part of URLs)")
        return value

    @model_validator(mode="after")
    def _scripted_nurse_needs_a_script(self) -> ChairConfig:
        if self.nurse == "script" and not self.vitals.startswith("sim"):
            raise ValueError(
                'nurse = "script" plays a simulated patient script: vitals must be sim or sim:SCRIPT'
            )
        return self

    @property
    def title(self) -> str:
        return self.name or self.id

    def nurse_script(self) -> Sequence[ScheduledCommand | tuple[Any, ...]]:
        """The scripted nurse's commands (none unless ``nurse = "script"``)."""
        if self.nurse != "script":
            return ()
        feed = vitals_feed(self.vitals)
        script = feed.script if isinstance(feed, ScriptedMonitor) else None
        return ScriptedOperator.from_script(script).scheduled if script is not None else ()


class ClinicConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    clinic: ClinicSettings = ClinicSettings()
    chair: list[ChairConfig] = Field(min_length=1)


def load_clinic(path: Path) -> ClinicConfig:
    """Reads ``path`` and checks it whole (see the module docstring); raises :class:`ClinicConfigError`
    listing every problem (``not_found`` when the file is not there)."""
    try:
        config = read_document(ClinicConfig, path, ClinicConfigError)
    except ClinicConfigError as e:
        if e.not_found:
            raise
        raise ClinicConfigError(str(path), e.problems + _repeated_ids(path)) from e
    problems = _repeated_ids(path) or (course_problems(config) + chair_problems(config))
    if problems:
        raise ClinicConfigError(str(path), problems)
    return config


def _repeated_ids(path: Path) -> list[str]:
    """A chair id given twice (checked on the raw document, so it is listed beside any other problem)."""
    try:
        chairs = tomllib.loads(path.read_text(encoding="utf-8")).get("chair", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []  # already reported
    ids: list[str] = [c["id"] for c in chairs if isinstance(c, dict) and isinstance(c.get("id"), str)]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    return [f"chair: chair ids must be unique: {', '.join(twice)} given more than once"] if twice else []


def course_problems(config: ClinicConfig) -> list[str]:
    """Whether the clinic's course history is there and current (it is never created here: ``ketapump
    course init`` does that, explicitly)."""
    where = config.clinic.course_db or default_course_path()
    try:
        CourseHistory.open(where, readonly=True).close()
    except CourseRecordNotFoundError:
        return [f"clinic.course_db: {where} does not exist: create it with `ketapump course init {where}`"]
    except CourseError as e:
        return [f"clinic.course_db: {e}"]
    return []


def chair_problems(config: ClinicConfig) -> list[str]:
    """Every chair checked as a session on it would be (its protocol, feed and pump URL), each problem
    named ``chair[i].field: …``. Builds what a session would and connects and writes nothing."""
    problems: list[str] = []
    # Any valid patient will do: only the chair's own settings are being checked.
    patient = Patient("config-check", weight_kg=70.0, height_cm=175.0, sex="male")
    with tempfile.TemporaryDirectory(prefix="ketapump-config-check-") as scratch:
        for index, chair in enumerate(config.chair):
            steps = (
                ("protocol", lambda c=chair: load_protocol(c.protocol)),
                ("vitals", lambda c=chair: vitals_feed(c.vitals)),
                (
                    "pump",
                    lambda c=chair: prepare_session(
                        protocol=c.protocol,
                        patient=patient,
                        operator=ScriptedOperator(),
                        operator_name="config-check",
                        pump=c.pump,
                        vitals=c.vitals,
                        log=Path(scratch) / "unused.jsonl",
                        out=Path(scratch),
                        course_db=config.clinic.course_db,
                        time_scale=config.clinic.time_scale,
                        jitter_real_s=SHARED_LOOP_JITTER_S,
                    ),
                ),
            )
            found = []
            for field, step in steps:
                try:
                    step()
                except CourseError:
                    pass  # the course history is one for every chair: course_problems names it once
                except ConfigurationError as e:
                    listed = getattr(e, "problems", None) or [str(e)]
                    found += [f"chair[{index}].{field}: {problem}" for problem in listed]
                except OSError as e:
                    found.append(f"chair[{index}].{field}: {e}")
                if found and field == "vitals":
                    break  # the whole session's check would repeat them: one cause, told once
            problems += found
    return problems


__all__ = [
    "SHARED_LOOP_JITTER_S",
    "ChairConfig",
    "ClinicConfig",
    "ClinicConfigError",
    "ClinicSettings",
    "chair_problems",
    "course_problems",
    "load_clinic",
]
