"""The drug library: hard and soft limits per drug, checked in the Rust core.

The limits feed the Rust kernel's configuration; Python never re-implements them. This module loads
and validates the library file (``data/drug_library.toml``, format in ``docs/drug-library.md``),
hands an order and its drug's limits to :func:`ketapump._core.check_order`, and turns what the core
found into messages, exceptions and the kernel settings the session runs with::

    library = load_library()                      # every file problem at once, with its dotted path
    entry = library.drug("ketamine")
    order = Order.infusion(weight_kg=70, concentration_mg_per_ml=1, dose_mg_per_kg=0.5, duration_min=40)
    findings = check(entry, order)                # the core's comparisons, with human messages
    authorization = authorize(findings, [Confirmation("dose_mg_per_kg", "approved by Dr X")])
    config = kernel_config(**kernel_overrides(entry, order))   # the hard limits, enforced at run time

A **hard** finding refuses the order (:class:`~ketapump.errors.LimitRefused`, every hard finding
listed); a **soft** one needs a :class:`Confirmation` with a reason (otherwise
:class:`~ketapump.errors.ConfirmationRequired`, every unconfirmed one listed), and the confirmed ones
come back with their reasons for the audit log (``soft_limit_confirmed``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ketapump import _core
from ketapump.config import default_kernel_settings
from ketapump.errors import ConfigurationError, ConfirmationRequired, LimitRefused
from ketapump.validation import DocumentError, parse_document, read_document

if TYPE_CHECKING:
    from ketapump.clinical.protocol import DosePlan, Patient

LIBRARY_RESOURCE = "drug_library.toml"

#: The tables of a drug entry, in the core's kind order (``dosing_weight_kg`` uses ``weight_kg``).
LIMIT_TABLES = (
    "weight_kg",
    "concentration_mg_per_ml",
    "dose_mg_per_kg",
    "dose_rate_mg_per_kg_h",
    "duration_min",
    "bolus_mg_per_kg",
    "bolus_rate_mg_per_kg_min",
    "cumulative_1h_mg_per_kg",
    "cumulative_4h_mg_per_kg",
    "cumulative_7d_mg_per_kg",
    "vtbi_ml",
    "hours_since_last_start",
    "sessions_in_7_days",
    "height_cm",
    "bmi_kg_m2",
    "weight_change_pct",
    "dosing_weight_pct",
)

#: How each kind is named in a message, and what follows the limit ("per session").
_LABELS: dict[str, tuple[str, str]] = {
    "weight_kg": ("weight", ""),
    "dosing_weight_kg": ("dosing weight", ""),
    "concentration_mg_per_ml": ("concentration", ""),
    "dose_mg_per_kg": ("dose", " per session"),
    "dose_rate_mg_per_kg_h": ("dose rate", ""),
    "duration_min": ("duration", ""),
    "bolus_mg_per_kg": ("bolus dose", ""),
    "bolus_rate_mg_per_kg_min": ("bolus rate", ""),
    "cumulative_1h_mg_per_kg": ("cumulative dose over the last hour", ""),
    "cumulative_4h_mg_per_kg": ("cumulative dose over the last 4 h", ""),
    "cumulative_7d_mg_per_kg": ("cumulative dose over the last 7 days", ""),
    "vtbi_ml": ("volume to be infused", ""),
    "hours_since_last_start": ("time since the last session start", ""),
    "sessions_in_7_days": ("sessions in the last 7 days", ""),
    "height_cm": ("height", " (inches typed as cm?)"),
    "bmi_kg_m2": ("body-mass index", " on an actual-weight protocol"),
    "weight_change_pct": ("weight change since the last recorded weight", ""),
    "dosing_weight_pct": ("dosing weight as a share of the actual weight", " (check height and weight)"),
}


class DrugLibraryError(DocumentError):
    """A drug-library file could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "drug library"


# ----- the file ---------------------------------------------------------------------------------------

_BOUND = Field(default=None, ge=0, allow_inf_nan=False)


def _order_error(field: str, value: float, relation: str, other: str, other_value: float) -> Exception:
    return PydanticCustomError(
        "limit_order",
        "{field} {value} is {relation} {other} {other_value}",
        {"field": field, "value": value, "relation": relation, "other": other, "other_value": other_value},
    )


class Limit(BaseModel):
    """The bounds of one kind. Soft bounds lie within the hard ones; a minimum is not above a maximum."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Validated in this order: each bound is compared with those above it.
    hard_min: float | None = _BOUND
    hard_max: float | None = _BOUND
    soft_min: float | None = _BOUND
    soft_max: float | None = _BOUND

    @field_validator("hard_max", "soft_min", "soft_max")
    @classmethod
    def _ordered(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None or info.field_name is None:
            return value
        field = info.field_name
        # (other bound, the relation that is wrong): the value must not be below a minimum above it,
        # nor above a maximum above it.
        checks: dict[str, list[tuple[str, str]]] = {
            "hard_max": [("hard_min", "below")],
            "soft_min": [("hard_min", "below"), ("hard_max", "above")],
            "soft_max": [("hard_min", "below"), ("hard_max", "above"), ("soft_min", "below")],
        }
        for other, wrong in checks[field]:
            other_value = info.data.get(other)
            if other_value is None:
                continue
            if (wrong == "below" and value < other_value) or (wrong == "above" and value > other_value):
                raise _order_error(field, value, wrong, other, other_value)
        return value

    def core(self) -> _core.Limit:
        return _core.Limit(
            hard_min=self.hard_min, soft_min=self.soft_min, soft_max=self.soft_max, hard_max=self.hard_max
        )


class DrugEntry(BaseModel):
    """One drug's limits, one :class:`Limit` per kind (see ``docs/drug-library.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    display_name: str = Field(min_length=1)
    weight_kg: Limit = Limit()
    concentration_mg_per_ml: Limit = Limit()
    dose_mg_per_kg: Limit = Limit()
    dose_rate_mg_per_kg_h: Limit = Limit()
    duration_min: Limit = Limit()
    bolus_mg_per_kg: Limit = Limit()
    bolus_rate_mg_per_kg_min: Limit = Limit()
    cumulative_1h_mg_per_kg: Limit = Limit()
    cumulative_4h_mg_per_kg: Limit = Limit()
    cumulative_7d_mg_per_kg: Limit = Limit()
    vtbi_ml: Limit = Limit()
    hours_since_last_start: Limit = Limit()
    sessions_in_7_days: Limit = Limit()
    height_cm: Limit = Limit()
    bmi_kg_m2: Limit = Limit()
    weight_change_pct: Limit = Limit()
    dosing_weight_pct: Limit = Limit()
    #: How far (%) a cumulative total may pass its maxima before it counts as crossed (delivery within
    #: the kernel's dose tolerance); findings name the configured bound.
    cap_tolerance_pct: float = Field(default=0.0, ge=0, le=10, allow_inf_nan=False)
    #: The 7-day course rules count the window (start + this many hours, start + 7 days]: a course at
    #: the same weekday and about the same clock time a week later does not count last week's visit.
    week_window_tolerance_h: float = Field(default=0.0, ge=0, le=48, allow_inf_nan=False)

    def limit(self, kind: str) -> Limit:
        """The limit that applies to a finding's ``kind`` (the weight limits for the dosing weight)."""
        table = "weight_kg" if kind == "dosing_weight_kg" else kind
        if table not in LIMIT_TABLES:
            raise ConfigurationError("kind", f"{kind!r} is not a limit kind")
        limit: Limit = getattr(self, table)
        return limit

    def core_limits(self) -> _core.DrugLimits:
        """These limits as the Rust core takes them."""
        tables = {table: getattr(self, table).core() for table in LIMIT_TABLES}
        return _core.DrugLimits(**tables, cap_tolerance=self.cap_tolerance_pct / 100.0)


class DrugLibrary(BaseModel):
    """A whole library file: ``schema_version`` and one entry per drug under ``drugs``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1]
    drugs: dict[str, DrugEntry] = Field(min_length=1)

    def drug(self, name: str) -> DrugEntry:
        """The entry for ``name``; :class:`~ketapump.errors.ConfigurationError` if there is none."""
        entry = self.drugs.get(name)
        if entry is None:
            known = ", ".join(sorted(self.drugs))
            raise ConfigurationError("drug", f"{name!r} is not in the drug library (one of {known})")
        return entry


def applicable_limits(entry: DrugEntry) -> dict[str, dict[str, Any]]:
    """Every limit of ``entry`` as plain data (for a report or ``--json``): per table its unit and the
    bounds the file sets. A missing hard maximum of anything delivered is zero (see the module docs)."""
    units = dict(_core.LIMIT_KINDS)
    return {
        table: {"unit": units[table], **getattr(entry, table).model_dump(exclude_none=True)}
        for table in LIMIT_TABLES
    }


def load_library(path: Path | None = None) -> DrugLibrary:
    """Reads and validates a drug library (default: the shipped ``data/drug_library.toml``).

    Raises :class:`DrugLibraryError` listing every problem of the file with its dotted path
    (``drugs.ketamine.dose_mg_per_kg.soft_max: soft_max 1.2 is above hard_max 1.0``).
    """
    if path is None:
        source = f"ketapump/data/{LIBRARY_RESOURCE}"
        text = resources.files("ketapump.data").joinpath(LIBRARY_RESOURCE).read_text(encoding="utf-8")
        return parse_document(DrugLibrary, text, source, DrugLibraryError)
    return read_document(DrugLibrary, path, DrugLibraryError)


# ----- orders and findings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """What is about to be given, with the course totals from the history.

    mg/kg figures are per kg of the dosing weight (``dosing_weight_kg``; ``None``: the actual weight).
    ``dose_rate_mg_per_kg_h`` is the highest rate the session runs at (a ramped schedule's hold rate).
    The cumulative totals include this order (``None``: nothing else was given in the window, so the
    total is this order's dose); the history's mg divided by today's dosing weight.
    ``hours_since_last_start`` is ``None`` for a first session.
    """

    weight_kg: float
    concentration_mg_per_ml: float
    dose_mg_per_kg: float
    dose_rate_mg_per_kg_h: float
    duration_min: float
    vtbi_ml: float
    dosing_weight_kg: float | None = None
    bolus_mg_per_kg: float = 0.0
    bolus_rate_mg_per_kg_min: float = 0.0
    cumulative_1h_mg_per_kg: float | None = None
    cumulative_4h_mg_per_kg: float | None = None
    cumulative_7d_mg_per_kg: float | None = None
    hours_since_last_start: float | None = None
    sessions_in_7_days: int = 1
    height_cm: float | None = None
    bmi_kg_m2: float | None = None
    weight_change_pct: float | None = None
    dosing_weight_pct: float | None = None

    @classmethod
    def infusion(
        cls,
        *,
        weight_kg: float,
        concentration_mg_per_ml: float,
        dose_mg_per_kg: float,
        duration_min: float,
        dosing_weight_kg: float | None = None,
        given_1h_mg: float = 0.0,
        given_4h_mg: float = 0.0,
        given_7d_mg: float = 0.0,
        hours_since_last_start: float | None = None,
        sessions_in_7_days: int = 1,
    ) -> Order:
        """A constant-rate infusion of ``dose_mg_per_kg`` over ``duration_min``: the rate and the
        volume are computed (dose arithmetic, clinical-protocol.md), the totals from the mg already
        given in each window before this order."""
        w = weight_kg if dosing_weight_kg is None else dosing_weight_kg
        return cls(
            weight_kg=weight_kg,
            dosing_weight_kg=dosing_weight_kg,
            concentration_mg_per_ml=concentration_mg_per_ml,
            dose_mg_per_kg=dose_mg_per_kg,
            dose_rate_mg_per_kg_h=dose_mg_per_kg / (duration_min / 60.0),
            duration_min=duration_min,
            vtbi_ml=dose_mg_per_kg * w / concentration_mg_per_ml,
            cumulative_1h_mg_per_kg=dose_mg_per_kg + given_1h_mg / w,
            cumulative_4h_mg_per_kg=dose_mg_per_kg + given_4h_mg / w,
            cumulative_7d_mg_per_kg=dose_mg_per_kg + given_7d_mg / w,
            hours_since_last_start=hours_since_last_start,
            sessions_in_7_days=sessions_in_7_days,
        )

    @property
    def effective_dosing_weight_kg(self) -> float:
        return self.weight_kg if self.dosing_weight_kg is None else self.dosing_weight_kg

    @property
    def dose_mg(self) -> float:
        """The session's dose in mg."""
        return self.dose_mg_per_kg * self.effective_dosing_weight_kg

    @property
    def rate_ml_h(self) -> float:
        """The highest rate in mL/h (dose rate × dosing weight ÷ concentration)."""
        return self.dose_rate_mg_per_kg_h * self.effective_dosing_weight_kg / self.concentration_mg_per_ml

    def as_dict(self) -> dict[str, Any]:
        """Every field as the core checks it (defaults filled in)."""
        d = asdict(self)
        for window in ("1h", "4h", "7d"):
            key = f"cumulative_{window}_mg_per_kg"
            if d[key] is None:
                d[key] = self.dose_mg_per_kg
        return d

    def core(self) -> _core.DrugOrder:
        """This order as the Rust core takes it."""
        return _core.DrugOrder(**self.as_dict())


Severity = Literal["hard", "soft"]
BoundName = Literal["min", "max", "floor", "non_finite"]


@dataclass(frozen=True)
class LimitFinding:
    """One limit an order crosses, as the Rust core found it, with a message naming the limit."""

    kind: str
    severity: Severity
    bound: BoundName
    value: float
    #: The bound crossed; ``None`` when the value is not a finite number.
    limit: float | None
    unit: str
    message: str
    #: What would clear the finding, for the person re-programming the order.
    remedies: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["remedies"] = list(self.remedies)
        return d


def _number(x: float, kind: str, *, apart_from: float | None = None) -> str:
    """A value as a clinician reads it: at most two decimals (``1.0``, ``0.75``, ``46.5``), more only
    where two decimals would print it equal to the limit it is compared with (``3.0000043`` vs ``3.0``)."""
    if kind == "sessions_in_7_days" and math.isfinite(x):
        return str(int(x))
    if not math.isfinite(x):
        return str(x)
    if 0 < abs(x) < 0.05:
        return f"{x:.2g}"  # a small value keeps two significant digits rather than printing as 0.0
    for decimals in range(3, 8):
        text = f"{x:.{decimals}f}".rstrip("0")
        text = text + "0" if text.endswith(".") else text
        if apart_from is None or x == apart_from or text != _number(apart_from, kind):
            return text
    return f"{x:.10g}"


def _message(f: _core.Finding) -> str:
    kind, severity, bound, value, limit, unit = f.kind, f.severity, f.bound, f.value, f.limit, f.unit
    label, suffix = _LABELS[kind]
    if bound == "non_finite" or limit is None:
        return f"{label} {_number(value, kind)} is not a finite number"
    shown_value = _number(value, kind, apart_from=limit)
    if kind == "sessions_in_7_days":
        shown, exceeds, is_below = f"{shown_value} {label}", "exceed", "are below"
        lim = _number(limit, kind)
    else:
        shown, exceeds, is_below = f"{label} {shown_value} {unit}", "exceeds", "is below"
        lim = f"{_number(limit, kind)} {unit}"
    if bound == "max":
        return f"{shown} {exceeds} the {severity} maximum {lim}{suffix}"
    if bound == "min":
        return f"{shown} {is_below} the {severity} minimum {lim}{suffix}"
    # The physical floor (always hard).
    if kind.startswith("cumulative_"):
        return f"{shown} is less than this order's own dose {lim}: the total must include it"
    if kind == "sessions_in_7_days":
        return f"{shown}: the count must include this session"
    if value == limit:
        return f"{shown} must be more than {lim}"
    return f"{shown} is negative"


def _finding(f: _core.Finding) -> LimitFinding:
    return LimitFinding(
        kind=f.kind,
        severity=f.severity,
        bound=f.bound,
        value=f.value,
        limit=f.limit,
        unit=f.unit,
        message=_message(f),
    )


def check(entry: DrugEntry, order: Order) -> list[LimitFinding]:
    """Every limit ``order`` crosses in ``entry``, in kind order: the comparisons are the Rust core's.

    Never raises for a bad value: a NaN, an infinity or a negative amount is itself a hard finding.
    """
    return [_finding(f) for f in _core.check_order(entry.core_limits(), order.core())]


#: The kind of the syringe-capacity finding (not a drug-library table: the limit is the syringe's).
SYRINGE_KIND = "syringe_fill_ml"
#: The most syringes one session gives a dose over (the safety kernel's).
MAX_SYRINGES: Final = _core.MAX_SYRINGES


def syringe_finding(plan: DosePlan) -> LimitFinding | None:
    """The finding of a dose that one syringe cannot hold, with its remedies (the concentration at which
    it fits, or the number of syringes), or ``None`` when it fits.

    Soft (confirmed as ``syringe_fill_ml=REASON``): the session runs the dose as that many syringes,
    pausing before each is spent for the operator to load the next (docs/clinical.md, syringe changes).
    Hard only beyond :data:`MAX_SYRINGES`.
    """
    if plan.syringes_needed <= 1:
        return None
    fill, capacity = plan.syringe_fill_ml, plan.syringe_capacity_ml
    needed = plan.syringes_needed
    concentration = plan.concentration_for_one_syringe_mg_per_ml
    runnable = needed <= MAX_SYRINGES
    changes = f"{needed - 1} syringe change{'s' if needed > 2 else ''}"
    remedies = (
        f"a concentration of at least {concentration:.2f} mg/mL fits one {plan.syringe} "
        f"(the drug library's concentration limits apply)",
        f"{needed} syringes of {capacity:g} mL ({changes}): "
        + (
            "the session runs it so, pausing before each syringe is spent for the next to be loaded"
            if runnable
            else f"more than the {MAX_SYRINGES} one session may use"
        ),
        "a larger syringe, if the pump takes one",
    )
    message = (
        f"syringe fill {fill:.1f} mL ({plan.volume_ml:.1f} mL + {plan.line_prime_ml:g} mL line prime) "
        f"exceeds the {capacity:g} mL of one {plan.syringe}"
    )
    if runnable:
        message += f": the session runs it as {needed} syringes ({changes})"
    severity: Severity = "soft" if runnable else "hard"
    return LimitFinding(SYRINGE_KIND, severity, "max", fill, capacity, "mL", message, remedies)


def review(entry: DrugEntry, plan: DosePlan, order: Order) -> list[LimitFinding]:
    """Every finding of a planned order, hard ones first: the drug library's (:func:`check`, every
    limit including the plausibility and course rules) and the syringe's capacity."""
    findings = check(entry, order)
    syringe = syringe_finding(plan)
    if syringe is not None:
        findings.append(syringe)
    return sorted(findings, key=lambda f: f.severity != "hard")


class CourseRecord(Protocol):
    """What :func:`order_for` reads from the course history
    (:class:`ketapump.clinical.course.CourseHistory`)."""

    def last_start(self, patient_id: str, before: datetime.datetime) -> datetime.datetime | None: ...

    def starts_between(
        self, patient_id: str, start: datetime.datetime, end: datetime.datetime
    ) -> tuple[datetime.datetime, ...]: ...

    def delivered_mg_between(
        self, patient_id: str, start: datetime.datetime, end: datetime.datetime
    ) -> float: ...

    def patient(self, patient_id: str) -> RecordedPatient: ...


class RecordedPatient(Protocol):
    """The patient as the course history last recorded them."""

    @property
    def weight_kg(self) -> float: ...


#: The rolling windows of the cumulative limits.
WINDOWS = {
    "1h": datetime.timedelta(hours=1),
    "4h": datetime.timedelta(hours=4),
    "7d": datetime.timedelta(days=7),
}


def window_start(entry: DrugEntry | None, window: str, at: datetime.datetime) -> datetime.datetime:
    """The first instant of a rolling window ending at ``at``: ``at`` minus its span, and for the 7-day
    course rules (sessions in 7 days, the 7-day cap) plus the library's ``week_window_tolerance_h``, so
    the same weekday's visit a week earlier at up to that much later a clock time is outside it
    (``entry`` ``None``: no tolerance)."""
    start = at - WINDOWS[window]
    if window == "7d" and entry is not None:
        start += datetime.timedelta(hours=entry.week_window_tolerance_h)
    return start


class Plausibility(NamedTuple):
    """The plausibility values of an order (see :func:`plausibility`)."""

    height_cm: float | None
    bmi_kg_m2: float | None
    weight_change_pct: float | None
    dosing_weight_pct: float | None


def plausibility(plan: DosePlan, patient: Patient, last_weight_kg: float | None) -> Plausibility:
    """The plausibility values of an order (the library's limits decide which are findings):
    ``height_cm``; ``bmi_kg_m2`` on an actual-weight protocol with a known height; ``weight_change_pct``,
    the change from the last recorded weight in % of it; ``dosing_weight_pct``, the ideal or adjusted
    dosing weight in % of the actual weight."""
    height = patient.height_cm
    weight = patient.weight_kg
    bmi = None
    if plan.weight_basis == "actual" and height is not None and height > 0:
        bmi = weight / (height / 100.0) ** 2
    change = None
    if last_weight_kg is not None and last_weight_kg > 0:
        change = abs(weight - last_weight_kg) / last_weight_kg * 100.0
    share = None if plan.weight_basis == "actual" else plan.basis_weight_kg / weight * 100.0
    return Plausibility(height, bmi, change, share)


def order_for(
    plan: DosePlan,
    patient: Patient,
    course: CourseRecord | None = None,
    at: datetime.datetime | None = None,
    *,
    entry: DrugEntry | None = None,
) -> Order:
    """The order a protocol's dose plan makes for ``patient``, with the course totals when a history
    is given.

    The mg/kg figures are on the plan's basis weight (the dosing weight); the dose rate checked is the
    schedule's peak (a ramped protocol's hold rate), not its mean. With ``course`` and the proposed
    start ``at``, the totals are the mg delivered in each window ending at ``at`` (divided by the
    dosing weight) plus this dose, the hours since the latest start at or before ``at``, the sessions
    started in the 7 days up to ``at`` plus this one, and the weight change from the patient's last
    recorded weight. ``entry`` (the drug's library entry) sets the 7-day window's tolerance
    (:func:`window_start`). The patient must exist in the history. Without ``course``, the order is
    checked as a first session.
    """
    w = plan.basis_weight_kg
    given = dict.fromkeys(WINDOWS, 0.0)
    hours: float | None = None
    sessions = 1
    last_weight: float | None = None
    if course is not None:
        if at is None:
            raise ConfigurationError("at", "is needed with a course history (the proposed start)")
        pid = patient.patient_id
        for window in WINDOWS:
            given[window] = course.delivered_mg_between(pid, window_start(entry, window, at), at)
        last = course.last_start(pid, at)
        hours = None if last is None else (at - last).total_seconds() / 3600.0
        week = window_start(entry, "7d", at)
        sessions = len(course.starts_between(pid, week, at)) + 1
        last_weight = course.patient(pid).weight_kg
    infusion = Order.infusion(
        weight_kg=patient.weight_kg,
        dosing_weight_kg=None if plan.weight_basis == "actual" else w,
        concentration_mg_per_ml=plan.concentration_mg_per_ml,
        dose_mg_per_kg=plan.dose_mg_per_kg,
        duration_min=plan.duration_min,
        given_1h_mg=given["1h"],
        given_4h_mg=given["4h"],
        given_7d_mg=given["7d"],
        hours_since_last_start=hours,
        sessions_in_7_days=sessions,
    )
    # The plan's own volume, and its schedule's peak rather than the mean rate.
    checks = plausibility(plan, patient, last_weight)
    return replace(
        infusion,
        dose_rate_mg_per_kg_h=plan.peak_rate_ml_h * plan.concentration_mg_per_ml / w,
        vtbi_ml=plan.volume_ml,
        height_cm=checks.height_cm,
        bmi_kg_m2=checks.bmi_kg_m2,
        weight_change_pct=checks.weight_change_pct,
        dosing_weight_pct=checks.dosing_weight_pct,
    )


# ----- authorization ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirmation:
    """The operator's confirmation of the soft finding of ``kind``, with the reason that is logged."""

    kind: str
    reason: str


class ConfirmedFinding(NamedTuple):
    finding: LimitFinding
    reason: str


@dataclass(frozen=True)
class Authorization:
    """What an order was allowed with: every soft finding and the reason it was confirmed with."""

    confirmed: tuple[ConfirmedFinding, ...]

    def events(self) -> list[dict[str, Any]]:
        """One ``soft_limit_confirmed`` audit record's fields per confirmation."""
        return [
            {
                "kind": c.finding.kind,
                "value": c.finding.value,
                "limit": c.finding.limit,
                "unit": c.finding.unit,
                "message": c.finding.message,
                "reason": c.reason,
            }
            for c in self.confirmed
        ]


def authorize(findings: Sequence[LimitFinding], confirmations: Iterable[Confirmation]) -> Authorization:
    """Decides whether an order with these findings may proceed.

    Raises :class:`~ketapump.errors.LimitRefused` listing every hard finding (no confirmation lifts
    one), else :class:`~ketapump.errors.ConfirmationRequired` listing every soft finding without a
    confirmation of its kind with a non-blank reason. Returns the confirmed findings with their
    (stripped) reasons, for the audit log. Confirmations of kinds with no soft finding are ignored.
    """
    hard = [f for f in findings if f.severity == "hard"]
    if hard:
        raise LimitRefused(hard, also=[f for f in findings if f.severity != "hard"])
    reasons: dict[str, str] = {}
    for c in confirmations:
        reason = c.reason.strip()
        if reason:
            reasons.setdefault(c.kind, reason)
    soft = [f for f in findings if f.severity == "soft"]
    unconfirmed = [f for f in soft if f.kind not in reasons]
    if unconfirmed:
        raise ConfirmationRequired(unconfirmed)
    return Authorization(tuple(ConfirmedFinding(f, reasons[f.kind]) for f in soft))


def kernel_overrides(
    entry: DrugEntry, order: Order, *, device_max_rate_ml_h: float | None = None
) -> dict[str, float]:
    """The kernel settings the hard limits imply for ``order``, for :func:`ketapump.config.kernel_config`.

    ``max_rate_ml_h`` (hard dose rate × dosing weight ÷ concentration, at most the device's
    ``hard_max_rate_ml_h``, by default the shipped kernel default), ``hard_cap_mg`` (hard dose ×
    dosing weight, cut to what the rolling windows' hard caps leave) and ``concentration_mg_per_ml``.
    The kernel then refuses a rate or a volume beyond them while the session runs. Raises
    :class:`~ketapump.errors.LimitRefused` if the order has a hard finding.
    """
    if device_max_rate_ml_h is None:
        device_max_rate_ml_h = float(default_kernel_settings()["hard_max_rate_ml_h"])
    if not (math.isfinite(device_max_rate_ml_h) and device_max_rate_ml_h > 0):
        raise ConfigurationError("device_max_rate_ml_h", "must be a positive finite rate")
    settings = _core.kernel_limits(entry.core_limits(), order.core(), device_max_rate_ml_h)
    if settings is None:
        hard = [f for f in check(entry, order) if f.severity == "hard"]
        if hard:
            raise LimitRefused(hard)
        # Only a dose too small to register against a full window gets here.
        raise ConfigurationError("order", "leaves no drug to deliver under the hard limits")
    return settings
