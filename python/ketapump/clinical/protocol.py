"""Infusion protocols (TOML files) and the dose they give a patient.

A protocol is the clinician's reviewed plan: the drug and its concentration, the dose in mg/kg on a
weight basis, the duration (or rate), optional phases, the syringe, vitals thresholds, the observation
period and the checklists. ``schema_version = 1``::

    schema_version = 1
    name = "ketamine-depression"
    title = "Ketamine 0.5 mg/kg over 40 min"

    [drug]
    name = "ketamine"                  # an entry of the drug library
    concentration_mg_per_ml = 1.0

    [dose]
    mg_per_kg = 0.5
    weight_basis = "actual"            # actual | ideal | adjusted (the last two need height and sex)
    duration_min = 40.0                # or rate_ml_h, not both
    max_duration_min = 60.0            # a slowed or paused infusion ends here unless the operator continues

    [[phases]]                         # optional; their durations add up to the dose's duration
    kind = "ramp"                      # ramp | hold | taper
    duration_min = 5.0
    from_pct = 50.0                    # of the hold rate
    to_pct = 100.0

    [syringe]
    name = "bd-plastipak-50"
    line_prime_ml = 1.0                # drawn up beyond the dose to prime the line

    [take_up]
    enabled = true                     # take up lead-screw slack before the programmed rate

    [vitals]                           # overrides of the vitals defaults (data/vitals.toml)
    [observation]
    min_minutes = 30.0
    band_pct = 20.0

    [checklists]
    pre = ["..."]
    discharge = ["..."]
    sitter = true                      # discharge asks for the sitter recorded by name and phone (Sitter)

    [session]
    allow_anonymous = false            # true only for QA runs: a session without an operator's name

Every problem in a file is reported at once with its dotted path (:class:`ProtocolError`). The dose
arithmetic here is plain arithmetic; whether the result is allowed is the drug library's decision
(:mod:`ketapump.clinical.druglib`, checked in the Rust core).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ketapump import _core
from ketapump.clinical.vitals import VitalsDataError, vitals_thresholds
from ketapump.errors import ConfigurationError
from ketapump.validation import DocumentError, parse_document, read_document

#: Name → file of the protocols shipped in ``ketapump/data/protocols``.
SHIPPED_DIR = "protocols"

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(ge=0, le=200, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DrugSpec(_Strict):
    name: str = Field(min_length=1)
    concentration_mg_per_ml: Positive


class DoseSpec(_Strict):
    mg_per_kg: Positive
    weight_basis: Literal["actual", "ideal", "adjusted"] = "actual"
    #: Adjusted body weight = IBW + factor × (actual − IBW).
    adjusted_factor: float = Field(default=0.4, ge=0, le=1, allow_inf_nan=False)
    duration_min: Positive | None = None
    rate_ml_h: Positive | None = None
    #: The longest the infusion may last, pauses and slowing included (``None``: the drug library's hard
    #: maximum duration). At it the session stops delivering and asks whether to continue.
    max_duration_min: Positive | None = None

    @model_validator(mode="after")
    def _duration_or_rate(self) -> DoseSpec:
        if (self.duration_min is None) == (self.rate_ml_h is None):
            raise ValueError("give exactly one of duration_min and rate_ml_h")
        if (
            self.duration_min is not None
            and self.max_duration_min is not None
            and self.max_duration_min < self.duration_min
        ):
            raise ValueError(
                f"max_duration_min ({self.max_duration_min:g}) is below duration_min ({self.duration_min:g})"
            )
        return self


class PhaseSpec(_Strict):
    kind: Literal["ramp", "hold", "taper"]
    duration_min: Positive
    #: Rate at the phase's start and end, in percent of the hold rate (hold: both 100 unless given).
    from_pct: Percent = 100.0
    to_pct: Percent = 100.0

    @model_validator(mode="after")
    def _shape(self) -> PhaseSpec:
        if self.kind == "hold" and self.from_pct != self.to_pct:
            raise ValueError("a hold phase keeps one rate (from_pct == to_pct)")
        if self.kind == "ramp" and self.to_pct <= self.from_pct:
            raise ValueError("a ramp rises (to_pct > from_pct)")
        if self.kind == "taper" and self.to_pct >= self.from_pct:
            raise ValueError("a taper falls (to_pct < from_pct)")
        if self.from_pct == 0 and self.to_pct == 0:
            raise ValueError("a phase must deliver something")
        return self


class SyringeSpec(_Strict):
    name: str = "bd-plastipak-50"
    line_prime_ml: float = Field(default=1.0, ge=0, le=10, allow_inf_nan=False)

    @model_validator(mode="after")
    def _known(self) -> SyringeSpec:
        known = [name for name, _, _ in _core.SimPump.catalogue()]
        if self.name not in known:
            raise ValueError(f"unknown syringe {self.name!r}; one of {', '.join(known)}")
        return self


class TakeUpSpec(_Strict):
    enabled: bool = True


class ObservationSpec(_Strict):
    min_minutes: float = Field(default=30.0, ge=0, le=240, allow_inf_nan=False)
    #: Observation never ends before this, even if vitals stay out of band (then the clinician decides).
    max_minutes: float = Field(default=120.0, gt=0, le=480, allow_inf_nan=False)
    #: Vitals must be within ± this percentage of baseline before observation can end.
    band_pct: float = Field(default=20.0, gt=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> ObservationSpec:
        if self.max_minutes < self.min_minutes:
            raise ValueError("max_minutes is below min_minutes")
        return self


class Checklists(_Strict):
    pre: list[str] = [
        "IV placed and patent",
        "baseline vitals recorded",
        "sitter or driver present",
        "syringe identity and concentration confirmed",
    ]
    discharge: list[str] = [
        "vitals back within band",
        "patient alert and oriented",
        "no driving until the next day",
    ]
    #: Discharge asks that the session's sitter is present, by the name and phone recorded for them
    #: (:class:`Sitter`); without a recorded sitter the discharge is not confirmed.
    sitter: bool = Field(default=True, strict=True)

    @field_validator("discharge")
    @classmethod
    def _sitter_is_structured(cls, items: list[str]) -> list[str]:
        if any(item.strip().lower() == SITTER_ITEM for item in items):
            raise ValueError(
                f"{SITTER_ITEM!r} is not a text item: the sitter's name and phone are recorded as fields "
                "(checklists.sitter = true, the default)"
            )
        return items


#: The discharge item of a sitter, as a text line: what :class:`Sitter` records as fields instead.
SITTER_ITEM = "sitter present (name and phone recorded)"
#: A phone number's characters besides its digits (grouping), and its digits' count (E.164: at most 15).
_PHONE_GROUPING = frozenset(" -.()/")
_PHONE_DIGITS = (6, 15)


@dataclass(frozen=True)
class Sitter:
    """The person who takes the patient home: a name and a phone number, each checked (a name that is not
    blank, a phone of 6–15 digits, an optional leading ``+``, grouped by spaces, dashes, dots, brackets
    or slashes). Raises ``ValueError`` naming the field."""

    name: str
    phone: str

    def __post_init__(self) -> None:
        name, phone = self.name.strip(), self.phone.strip()
        if not name or not name.isprintable() or len(name) > 100:
            raise ValueError(f"sitter name {self.name!r} must be 1–100 printable characters")
        body = phone.removeprefix("+")
        digits = [c for c in body if c.isdigit()]
        low, high = _PHONE_DIGITS
        if not all(c.isdigit() or c in _PHONE_GROUPING for c in body) or not low <= len(digits) <= high:
            raise ValueError(
                f"sitter phone {self.phone!r} is not a phone number ({low}–{high} digits, an optional "
                "leading '+', grouped by spaces, dashes, dots, brackets or slashes)"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "phone", phone)

    @property
    def item(self) -> str:
        """The discharge checklist item that asks for this sitter."""
        return f"sitter present: {self.name}, phone {self.phone}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "phone": self.phone}


class SessionSpec(_Strict):
    #: A session may run without an operator's name: for QA runs only, never a clinical protocol.
    allow_anonymous: bool = Field(default=False, strict=True)


class Protocol(_Strict):
    schema_version: Literal[1]
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str = ""
    drug: DrugSpec
    dose: DoseSpec
    phases: list[PhaseSpec] = []
    syringe: SyringeSpec = SyringeSpec()
    take_up: TakeUpSpec = TakeUpSpec()
    #: Overrides of the vitals thresholds (``ketapump/data/vitals.toml``), validated by the vitals module.
    vitals: dict[str, Any] = {}
    observation: ObservationSpec = ObservationSpec()
    checklists: Checklists = Checklists()
    session: SessionSpec = SessionSpec()

    @field_validator("vitals")
    @classmethod
    def _vitals_rules(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """The overrides must make valid vitals rules with the defaults (known names, sane values)."""
        try:
            vitals_thresholds(overrides, where="vitals")
        except VitalsDataError as e:
            raise ValueError("; ".join(e.problems)) from e
        return overrides

    @model_validator(mode="after")
    def _phases_fill_the_duration(self) -> Protocol:
        if not self.phases:
            return self
        if self.dose.duration_min is None:
            raise ValueError("phases need dose.duration_min (the rate follows from the phases)")
        total = sum(p.duration_min for p in self.phases)
        if not math.isclose(total, self.dose.duration_min, rel_tol=1e-9):
            raise ValueError(
                f"the phases last {total:g} min but dose.duration_min is {self.dose.duration_min:g} min"
            )
        return self


class ProtocolError(DocumentError):
    """A protocol file could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "protocol"


def shipped_protocols() -> list[str]:
    """Names of the protocols that come with ketapump."""
    folder = resources.files("ketapump.data").joinpath(SHIPPED_DIR)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A protocol by file path or by the name of a shipped one (``ketamine-depression``)."""
    path = Path(name_or_path)
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path:
        if name_or_path not in shipped_protocols():
            raise ProtocolError(
                name_or_path,
                [f"is neither a file nor a shipped protocol ({', '.join(shipped_protocols())})"],
                not_found=True,
            )
        shipped = resources.files("ketapump.data").joinpath(SHIPPED_DIR, f"{name_or_path}.toml")
        return parse_protocol(shipped.read_text(encoding="utf-8"), source=f"{name_or_path} (shipped)")
    return read_document(Protocol, path, ProtocolError)


def protocol_sha256(name_or_path: str | Path) -> str:
    """The SHA-256 (hex) of a protocol's file as :func:`load_protocol` finds it (a path, or a shipped
    name), so a report names exactly the reviewed text a session ran."""
    path = Path(name_or_path)
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path:
        data = resources.files("ketapump.data").joinpath(SHIPPED_DIR, f"{name_or_path}.toml").read_bytes()
    else:
        data = path.read_bytes()
    return hashlib.sha256(data).hexdigest()


def parse_protocol(text: str, *, source: str = "<protocol>") -> Protocol:
    return parse_document(Protocol, text, source, ProtocolError)


# ----- the patient and the dose ------------------------------------------------------------------


@dataclass(frozen=True)
class Patient:
    patient_id: str
    weight_kg: float
    height_cm: float | None = None
    sex: Literal["female", "male"] | None = None


def ideal_body_weight_kg(height_cm: float, sex: str) -> float:
    """Devine: 50 kg (male) or 45.5 kg (female) + 2.3 kg per inch above 5 ft."""
    base = 50.0 if sex == "male" else 45.5
    return base + 2.3 * (height_cm / 2.54 - 60.0)


@dataclass(frozen=True)
class Segment:
    """A stretch of the schedule whose rate moves linearly from ``from_ml_h`` to ``to_ml_h``."""

    kind: str
    start_s: float
    end_s: float
    from_ml_h: float
    to_ml_h: float

    def rate_at(self, t_s: float) -> float:
        f = (t_s - self.start_s) / (self.end_s - self.start_s)
        return self.from_ml_h + (self.to_ml_h - self.from_ml_h) * _clamp(f, 0.0, 1.0)

    def volume_until(self, t_s: float) -> float:
        """Volume (mL) this segment has delivered by ``t_s``."""
        t = _clamp(t_s, self.start_s, self.end_s)
        return (self.from_ml_h + self.rate_at(t)) / 2.0 * (t - self.start_s) / 3600.0


def _clamp(x: float, low: float, high: float) -> float:
    """``min(max(x, low), high)``, the same float in every case (NaN and signed zeros included: each
    builtin keeps its first argument unless the second is strictly beyond it), without the two calls
    (the plan's volume is worked out at every control tick)."""
    x = low if low > x else x
    return high if high < x else x


@dataclass(frozen=True)
class DosePlan:
    """What a protocol gives one patient: the numbers the operator checks and the pump runs."""

    protocol: str
    drug: str
    concentration_mg_per_ml: float
    weight_basis: str
    weight_kg: float
    basis_weight_kg: float
    dose_mg_per_kg: float
    dose_mg: float
    volume_ml: float
    duration_min: float
    #: The mean rate (mL/h); with phases the hold rate is ``peak_rate_ml_h``.
    rate_ml_h: float
    peak_rate_ml_h: float
    dose_rate_mg_per_kg_h: float
    syringe: str
    syringe_capacity_ml: float
    syringe_diameter_mm: float
    #: The dose plus the line prime: what the syringe(s) must hold.
    syringe_fill_ml: float
    line_prime_ml: float
    segments: tuple[Segment, ...]
    #: The protocol's maximum duration (``None``: none of its own; the drug library's applies).
    max_duration_min: float | None = None

    @property
    def syringes_needed(self) -> int:
        """How many fills of the syringe the dose and the line prime take (1: it fits)."""
        if not (math.isfinite(self.syringe_fill_ml) and self.syringe_fill_ml > 0):
            return 1
        return max(1, math.ceil(self.syringe_fill_ml / self.syringe_capacity_ml - 1e-12))

    @property
    def syringe_volumes_ml(self) -> tuple[float, ...]:
        """The dose's volume given from each syringe (mL): the session changes the syringe once each
        has given its share, long before its plunger's end stop. Shared equally, the first syringe's
        share never more than it holds beside the line prime (it primes the line); each later
        syringe is a full one."""
        n = self.syringes_needed
        if n <= 1:
            return (self.volume_ml,)
        first = min(self.volume_ml / n, self.syringe_capacity_ml - self.line_prime_ml)
        rest = (self.volume_ml - first) / (n - 1)
        return (first, *([rest] * (n - 1)))

    @property
    def concentration_for_one_syringe_mg_per_ml(self) -> float:
        """The lowest concentration at which the dose and the line prime fit one syringe."""
        room_ml = self.syringe_capacity_ml - self.line_prime_ml
        return math.inf if room_ml <= 0 else self.dose_mg / room_ml

    def rate_at(self, t_s: float) -> float:
        """The planned rate (mL/h) ``t_s`` seconds into the infusion."""
        for segment in self.segments:
            if t_s < segment.end_s:
                return segment.rate_at(t_s)
        return self.segments[-1].to_ml_h

    def planned_ml(self, t_s: float) -> float:
        """The planned cumulative volume (mL) by ``t_s``: every segment's volume by then, added up in
        order. In a schedule of back-to-back segments only the one under way is partly given: those
        before it have given their whole volume, those after it nothing, so that one segment's volume
        is worked out and added to the whole ones (the same sum: a whole volume is the segment's
        volume at any later time, and nothing added changes no sum)."""
        table = self._whole_volumes
        if table is None:
            return self._summed_planned_ml(t_s)
        ends, whole_before = table
        # The segment under way: the first one not over by t_s (the last one once all are).
        k = min(bisect.bisect_right(ends, t_s), len(ends) - 1)
        return min(sum((*whole_before[k], self.segments[k].volume_until(t_s))), self.volume_ml)

    def _summed_planned_ml(self, t_s: float) -> float:
        """:meth:`planned_ml` by adding up every segment's volume (any schedule)."""
        return min(sum(s.volume_until(t_s) for s in self.segments), self.volume_ml)

    @functools.cached_property
    def _whole_volumes(self) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]] | None:
        """For a schedule of back-to-back segments of finite times and rates: each segment's end,
        and the whole volumes of the segments before each one. ``None`` for any other schedule (a
        gap, an overlap, a segment of no duration, a time or rate that is not finite), which
        :meth:`planned_ml` adds up in full."""
        segments = self.segments
        regular = bool(segments) and all(
            s.end_s > s.start_s and all(map(math.isfinite, (s.start_s, s.end_s, s.from_ml_h, s.to_ml_h)))
            for s in segments
        )
        if not regular or any(a.end_s != b.start_s for a, b in itertools.pairwise(segments)):
            return None
        wholes = [s.volume_until(s.end_s) for s in segments]
        return tuple(s.end_s for s in segments), tuple(tuple(wholes[:k]) for k in range(len(segments)))

    def time_for_ml(self, volume_ml: float) -> float:
        """When the plan reaches ``volume_ml`` (s): the inverse of :meth:`planned_ml`, by bisection."""
        lo, hi = 0.0, self.segments[-1].end_s
        if volume_ml >= self.planned_ml(hi):
            return hi
        for _ in range(60):
            mid = (lo + hi) / 2.0
            lo, hi = (mid, hi) if self.planned_ml(mid) < volume_ml else (lo, mid)
        return lo

    def planned_rate_for_ml(self, volume_ml: float) -> float:
        """The plan's rate (mL/h) once ``volume_ml`` is delivered: ``rate_at(time_for_ml(volume_ml))``, the
        rate a session follows by delivered volume at every tick. Inside a constant-rate segment, clear of
        its ends by far more than rounding can move the bisection, that is the segment's rate, taken
        without bisecting (the same float: the bisection ends inside the segment, whose ``rate_at`` is
        its constant); anywhere else the bisection decides."""
        for above_ml, below_ml, rate_ml_h in self._constant_rate_volumes:
            if above_ml < volume_ml < below_ml:
                return rate_ml_h
        return self.rate_at(self.time_for_ml(volume_ml))

    @functools.cached_property
    def _constant_rate_volumes(self) -> tuple[tuple[float, float, float], ...]:
        """``(volume above, volume below, rate)`` of each constant-rate segment: the planned volumes at
        its start and end, each moved inwards by a margin (10⁻⁹ of the dose) far above rounding noise."""
        margin = 1e-9 * max(self.volume_ml, 1.0)
        return tuple(
            (self.planned_ml(s.start_s) + margin, self.planned_ml(s.end_s) - margin, s.from_ml_h)
            for s in self.segments
            if s.from_ml_h == s.to_ml_h and s.end_s > s.start_s
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "drug": self.drug,
            "concentration_mg_per_ml": self.concentration_mg_per_ml,
            "weight_basis": self.weight_basis,
            "weight_kg": self.weight_kg,
            "basis_weight_kg": self.basis_weight_kg,
            "dose_mg_per_kg": self.dose_mg_per_kg,
            "dose_mg": self.dose_mg,
            "volume_ml": self.volume_ml,
            "duration_min": self.duration_min,
            "rate_ml_h": self.rate_ml_h,
            "peak_rate_ml_h": self.peak_rate_ml_h,
            "dose_rate_mg_per_kg_h": self.dose_rate_mg_per_kg_h,
            "syringe": self.syringe,
            "syringe_capacity_ml": self.syringe_capacity_ml,
            "syringe_fill_ml": self.syringe_fill_ml,
            "max_duration_min": self.max_duration_min,
            "syringes_needed": self.syringes_needed,
            "phases": [
                {
                    "kind": s.kind,
                    "start_min": s.start_s / 60.0,
                    "end_min": s.end_s / 60.0,
                    "from_ml_h": s.from_ml_h,
                    "to_ml_h": s.to_ml_h,
                }
                for s in self.segments
            ],
        }


def basis_weight_kg(protocol: Protocol, patient: Patient) -> float:
    """The weight the dose is computed on; raises :class:`ConfigurationError` when the basis needs
    the height or sex the patient record lacks."""
    basis = protocol.dose.weight_basis
    if basis == "actual":
        return patient.weight_kg
    missing = [
        name for name, value in (("height_cm", patient.height_cm), ("sex", patient.sex)) if value is None
    ]
    if missing:
        raise ConfigurationError(
            "patient." + missing[0],
            f"is required: protocol {protocol.name!r} doses on {basis} body weight "
            f"(missing: {', '.join(missing)})",
        )
    assert patient.height_cm is not None and patient.sex is not None
    ibw = ideal_body_weight_kg(patient.height_cm, patient.sex)
    if basis == "ideal":
        return min(ibw, patient.weight_kg)
    return (
        ibw + protocol.dose.adjusted_factor * (patient.weight_kg - ibw)
        if patient.weight_kg > ibw
        else (patient.weight_kg)
    )


def plan_dose(protocol: Protocol, patient: Patient) -> DosePlan:
    """The dose, volume, rates and schedule ``protocol`` gives ``patient``.

    Raises :class:`ConfigurationError` for a patient the arithmetic cannot serve (non-finite or
    non-positive weight or height, missing height/sex for the weight basis). Whether the dose is
    *allowed* — its limits, and whether one syringe holds it (:attr:`DosePlan.syringes_needed`) — is
    :func:`ketapump.clinical.druglib.review`'s decision, not this function's.
    """
    for name, value in (("weight_kg", patient.weight_kg), ("height_cm", patient.height_cm)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigurationError(f"patient.{name}", f"must be a positive finite number, not {value!r}")
    basis = basis_weight_kg(protocol, patient)
    dose_mg = protocol.dose.mg_per_kg * basis
    concentration = protocol.drug.concentration_mg_per_ml
    volume = dose_mg / concentration
    if protocol.dose.duration_min is not None:
        duration_min = protocol.dose.duration_min
    else:
        assert protocol.dose.rate_ml_h is not None
        duration_min = volume / protocol.dose.rate_ml_h * 60.0
    max_duration = protocol.dose.max_duration_min
    if max_duration is not None and duration_min > max_duration:
        raise ConfigurationError(
            "dose.max_duration_min",
            f"is {max_duration:g} min but the dose at rate_ml_h takes {duration_min:.1f} min",
        )
    mean_rate = volume / (duration_min / 60.0)
    segments = _segments(protocol, volume, duration_min)
    capacity, diameter = _syringe(protocol.syringe.name)
    fill = volume + protocol.syringe.line_prime_ml
    return DosePlan(
        protocol=protocol.name,
        drug=protocol.drug.name,
        concentration_mg_per_ml=concentration,
        weight_basis=protocol.dose.weight_basis,
        weight_kg=patient.weight_kg,
        basis_weight_kg=basis,
        dose_mg_per_kg=protocol.dose.mg_per_kg,
        dose_mg=dose_mg,
        volume_ml=volume,
        duration_min=duration_min,
        rate_ml_h=mean_rate,
        peak_rate_ml_h=max(max(s.from_ml_h, s.to_ml_h) for s in segments),
        dose_rate_mg_per_kg_h=protocol.dose.mg_per_kg / (duration_min / 60.0),
        syringe=protocol.syringe.name,
        syringe_capacity_ml=capacity,
        syringe_diameter_mm=diameter,
        syringe_fill_ml=fill,
        line_prime_ml=protocol.syringe.line_prime_ml,
        segments=segments,
        max_duration_min=max_duration,
    )


def _segments(protocol: Protocol, volume_ml: float, duration_min: float) -> tuple[Segment, ...]:
    """The rate schedule: one hold at the mean rate, or the phases scaled so they deliver the dose."""
    phases = protocol.phases or [PhaseSpec(kind="hold", duration_min=duration_min)]
    # Volume at a hold rate of 1 mL/h: the trapezoid of each phase in percent of that rate.
    unit_ml = sum((p.from_pct + p.to_pct) / 200.0 * p.duration_min / 60.0 for p in phases)
    hold_ml_h = volume_ml / unit_ml
    segments, t = [], 0.0
    for p in phases:
        end = t + p.duration_min * 60.0
        segments.append(Segment(p.kind, t, end, hold_ml_h * p.from_pct / 100, hold_ml_h * p.to_pct / 100))
        t = end
    return tuple(segments)


def _syringe(name: str) -> tuple[float, float]:
    for entry, capacity, diameter in _core.SimPump.catalogue():
        if entry == name:
            return capacity, diameter
    raise ConfigurationError("syringe", f"{name!r} is not in the catalogue")


__all__ = [
    "SITTER_ITEM",
    "DosePlan",
    "Patient",
    "Protocol",
    "ProtocolError",
    "Segment",
    "Sitter",
    "basis_weight_kg",
    "ideal_body_weight_kg",
    "load_protocol",
    "parse_protocol",
    "plan_dose",
    "protocol_sha256",
    "shipped_protocols",
]
