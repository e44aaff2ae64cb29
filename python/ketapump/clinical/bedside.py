"""What the nurse records at the chair: observations of side effects on a scale, and medications given.

The vocabulary is clinician-owned data (``data/bedside.toml``): the kinds of observation (nausea,
vomiting, anxiety, panic, dissociation on a 0–4 rating or the CADSS total, headache, …) with their
scales, and the units and routes a medication may be given in. The session engine's
``record_observation`` and ``give_medication`` commands are checked here when they are issued, so a face
gets a clear ``ValueError`` at once instead of a record that means nothing.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from ketapump.validation import DocumentError, parse_document

BEDSIDE_RESOURCE = "bedside.toml"


class BedsideDataError(DocumentError):
    """``data/bedside.toml`` (or a replacement) could not be used; ``problems`` lists every problem."""

    kind = "bedside vocabulary"


class ObservationKind(BaseModel):
    """One kind of observation: its scale (``min``…``max``), or none (the value is left out)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    scale: str = ""
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)
    note_required: StrictBool = False

    @model_validator(mode="after")
    def _scale(self) -> ObservationKind:
        if (self.min is None) != (self.max is None):
            raise ValueError("give both min and max, or neither")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g})")
        if self.min is None and not self.note_required:
            raise ValueError("a kind without a scale must require a note")
        return self


class MedicationVocabulary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    units: list[str] = Field(min_length=1)
    routes: list[str] = Field(min_length=1)


class Bedside(BaseModel):
    """The whole vocabulary file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1]
    kinds: dict[str, ObservationKind] = Field(min_length=1)
    medication: MedicationVocabulary


@cache
def bedside() -> Bedside:
    """The shipped vocabulary (``data/bedside.toml``)."""
    text = resources.files("ketapump.data").joinpath(BEDSIDE_RESOURCE).read_text(encoding="utf-8")
    return parse_document(Bedside, text, f"ketapump/data/{BEDSIDE_RESOURCE}", BedsideDataError)


def check_observation(kind: str, value: float | None, note: str) -> None:
    """Raises ``ValueError`` saying what is wrong with an observation (an unknown kind, a value off its
    scale or given where the kind has none, a missing note)."""
    vocabulary = bedside()
    spec = vocabulary.kinds.get(kind)
    if spec is None:
        raise ValueError(f"unknown observation kind {kind!r} (one of {', '.join(vocabulary.kinds)})")
    if spec.min is None or spec.max is None:
        if value is not None:
            raise ValueError(f"observation {kind!r} takes no value, only a note")
    elif value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"observation {kind!r} needs a value on its scale ({spec.scale})")
    elif not (math.isfinite(value) and spec.min <= value <= spec.max):
        raise ValueError(f"observation {kind!r}: {value!r} is off its scale ({spec.scale})")
    if spec.note_required and not note.strip():
        raise ValueError(f"observation {kind!r} needs a note saying what was seen")


def check_medication(drug: str, dose: float, unit: str, route: str) -> None:
    """Raises ``ValueError`` saying what is wrong with a medication record (no drug, a dose that is not
    a positive finite number, an unknown unit or route)."""
    vocabulary = bedside().medication
    if not isinstance(drug, str) or not drug.strip():
        raise ValueError("a medication needs the drug's name")
    if isinstance(dose, bool) or not isinstance(dose, int | float) or not (math.isfinite(dose) and dose > 0):
        raise ValueError(f"a medication's dose must be a positive finite number, not {dose!r}")
    if unit not in vocabulary.units:
        raise ValueError(f"unknown dose unit {unit!r} (one of {', '.join(vocabulary.units)})")
    if route not in vocabulary.routes:
        raise ValueError(f"unknown route {route!r} (one of {', '.join(vocabulary.routes)})")


__all__ = [
    "Bedside",
    "BedsideDataError",
    "ObservationKind",
    "bedside",
    "check_medication",
    "check_observation",
]
