"""The course's clinician-owned numbers (``data/course.toml``): the initial series, the maintenance
window, the journal-note window, response and remission on the rating scales; every problem in a file
listed with its path; no defaults in code."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ketapump.validation import DocumentError, FileReadError, parse_document, read_text_file

SETTINGS_RESOURCE: Final = "course.toml"

_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class InitialSeriesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sessions: int = Field(ge=1)
    within_days: _Positive
    counted_outcomes: tuple[str, ...] = Field(min_length=1)


class MaintenanceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    due_from_days: _Positive
    overdue_after_days: _Positive

    @model_validator(mode="after")
    def _ordered(self) -> MaintenanceSettings:
        if self.overdue_after_days < self.due_from_days:
            raise ValueError("overdue_after_days must not be less than due_from_days")
        return self


class JournalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    within_h: _Positive


class OutcomeSettings(BaseModel):
    """Response and remission on the rating scales (:mod:`ketapump.clinical.course.outcomes`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    response_reduction_pct: float = Field(gt=0, le=100, allow_inf_nan=False)
    remission_phq9_max: int = Field(ge=0, le=27)
    remission_madrs_max: int = Field(ge=0, le=60)

    def remission_max(self, instrument: str) -> int:
        """The highest score of ``instrument`` that is a remission."""
        limit: int = getattr(self, f"remission_{instrument}_max")
        return limit


class CourseSettings(BaseModel):
    """The course's numbers, as in ``data/course.toml`` (every field required: no defaults in code)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    initial_series: InitialSeriesSettings
    maintenance: MaintenanceSettings
    journal: JournalSettings
    outcomes: OutcomeSettings


class CourseSettingsError(DocumentError):
    """A course settings file could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "course settings file"


def load_course_settings(path: Path | None = None) -> CourseSettings:
    """The course settings from ``path``, or the shipped ``ketapump/data/course.toml``.

    Raises :class:`CourseSettingsError` listing every problem with its dotted path.
    """
    if path is None:
        return _shipped_settings()
    try:
        text = read_text_file(path)
    except FileReadError as e:
        raise CourseSettingsError(str(path), [e.problem], not_found=e.not_found) from e
    return _parse_settings(text, str(path))


@cache
def _shipped_settings() -> CourseSettings:
    text = resources.files("ketapump.data").joinpath(SETTINGS_RESOURCE).read_text(encoding="utf-8")
    return _parse_settings(text, f"ketapump/data/{SETTINGS_RESOURCE}")


def _parse_settings(text: str, source: str) -> CourseSettings:
    return parse_document(CourseSettings, text, source, CourseSettingsError)
