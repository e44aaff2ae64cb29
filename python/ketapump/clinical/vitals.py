"""Vital signs: feeds that deliver timestamped readings, and the gate that turns them into alarms.

Why: S13 (safety-targets.md) asks that the infusion pause within 1 s of a real crossing of a threshold,
that every scripted crossing be caught and in-range noise and single-sample artefacts never raise, and
that a stale feed itself be an alarm. The session engine calls ``feed.poll(now_s)`` and
``gate.update(now_s, samples)`` every control tick (10 Hz) and pauses the infusion on any alarm returned.

Time is injected: ``now_s`` and every ``t_s`` are the session clock (:mod:`ketapump.clock`); nothing here
reads the wall clock, so a session runs faster than real time and reproducibly.

**One reading per channel.** A :class:`VitalsSample` is ``(t_s, channel, value)`` with the channels
``sbp`` and ``dbp`` (mmHg, taken together by a non-invasive cuff every 10 min: *discrete* readings),
``hr`` (bpm) and ``spo2`` (%), both *continuous* (every 1 s), and the optional ``rr`` (breaths/min) and
``etco2`` (mmHg) of a capnograph, watched only when the rules say they are monitored. Staleness is per
channel: each has its own interval.

**When a reading alarms** (:class:`VitalsGate`):

- past a limit: above (≥) a channel's maximum or below (<) its minimum. Both kinds are on by default
  (hypertension, tachycardia; hypotension SBP < 90, bradycardia HR < 50, desaturation SpO₂ < 90). A
  maximum may also be relative to the patient's baseline (e.g. SBP + 30 %), whichever is lower;
- a discrete reading (the cuff) alarms at once; a continuous one only once its channel has stayed past
  the limit for the channel's alarm delay (e.g. 10 s for SpO₂, as bedside monitors do), so a one-second
  artefact never alarms while a real desaturation alarms within delay + one reading;
- a channel whose newest reading is older than ``stale_factor`` × its interval is itself an alarm.

Feeds (:class:`VitalsFeed`: ``poll(now_s)`` returns every reading timestamped ≤ ``now_s`` not yet
returned, in time order; a feed that can take a reading on request is also a
:class:`OnDemandVitalsFeed`):

- :class:`ScriptedMonitor`: the simulator's patient monitor, driven by a :class:`PatientScript` (TOML,
  see ``data/patients/demo.toml``): seeded bounded noise, the ketamine response, scripted crossings and
  dropouts, cuff readings on request, and the nurse's scripted actions for tests and the demo;
- :class:`CsvVitalsFeed`: replay of a recorded file (long ``t_s,channel,value`` or wide ``t_s,sbp,…``);
- :class:`CallbackVitalsFeed`: an integrator's monitor pushes readings from any thread.

The rules (:class:`VitalsThresholds`) are clinician-owned defaults in ``data/vitals.toml`` that a
protocol may override by name (:func:`vitals_thresholds`).
"""

from __future__ import annotations

import bisect
import csv
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from ketapump.clinical.commands import NurseAction
from ketapump.errors import ConfigurationError
from ketapump.validation import (
    MAX_RECORDING_BYTES,
    DocumentError,
    FileReadError,
    parse_document,
    read_document,
    read_text_file,
    shipped_settings,
    validate_document,
)

Channel = Literal["sbp", "dbp", "hr", "spo2", "rr", "etco2"]
#: Every channel, in the order reports list them.
CHANNELS: tuple[Channel, ...] = get_args(Channel)
#: The channels every session watches; the others only when the rules say they are monitored.
CORE_CHANNELS: tuple[Channel, ...] = ("sbp", "dbp", "hr", "spo2")
OPTIONAL_CHANNELS: tuple[Channel, ...] = ("rr", "etco2")
#: Channels read one reading at a time by a cuff: a reading past a limit alarms at once.
DISCRETE_CHANNELS: tuple[Channel, ...] = ("sbp", "dbp")
#: How people write each channel, and its unit.
LABELS: dict[Channel, str] = {
    "sbp": "SBP", "dbp": "DBP", "hr": "HR", "spo2": "SpO₂", "rr": "RR", "etco2": "EtCO₂",
}  # fmt: skip
UNITS: dict[Channel, str] = {
    "sbp": "mmHg", "dbp": "mmHg", "hr": "bpm", "spo2": "%", "rr": "/min", "etco2": "mmHg",
}  # fmt: skip

#: The name of each channel's value (with its unit) in a baseline and in the noise settings.
CHANNEL_FIELDS: dict[Channel, str] = {
    "sbp": "sbp_mmhg", "dbp": "dbp_mmhg", "hr": "hr_bpm", "spo2": "spo2_pct", "rr": "rr_per_min",
    "etco2": "etco2_mmhg",
}  # fmt: skip

THRESHOLDS_RESOURCE = "vitals.toml"
DEMO_PATIENT_RESOURCE = "patients/demo.toml"


class VitalsDataError(DocumentError):
    """A reading, a recorded file, a script or a set of rules was refused. ``field`` says where
    (``path:line:`` for a file, a dotted path for a setting). Given one ``problem``, that is why;
    given a list, a document was checked whole and ``problems`` lists every problem found
    (``dotted.path: message``). ``not_found``: the file was not there."""

    kind = "set of vital-sign rules"

    def __init__(self, field: str, problem: str | list[str], *, not_found: bool = False) -> None:
        if isinstance(problem, list):
            super().__init__(field, problem, not_found=not_found)
            return
        ConfigurationError.__init__(self, field, problem)  # one problem: no "is not a valid …" heading
        self.problems = [f"{field} {problem}"]
        self.not_found = not_found


class PatientScriptError(VitalsDataError):
    """A patient script (TOML) could not be used; ``problems`` lists every problem as ``path: message``."""

    kind = "patient script"


# ----- readings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VitalsSample:
    """One reading of one channel at session time ``t_s``."""

    t_s: float
    channel: Channel
    value: float

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise VitalsDataError(
                "VitalsSample.channel", f"must be one of {', '.join(CHANNELS)}, not {self.channel!r}"
            )
        if not math.isfinite(self.t_s):
            raise VitalsDataError("VitalsSample.t_s", f"must be a finite time, not {self.t_s!r}")
        if not math.isfinite(self.value):
            raise VitalsDataError(
                "VitalsSample.value", f"of {self.channel} must be a finite number, not {self.value!r}"
            )


class VitalsFeed(Protocol):
    """A source of readings."""

    def poll(self, now_s: float) -> list[VitalsSample]:
        """Every reading timestamped ≤ ``now_s`` not returned before, in time order."""
        ...


@runtime_checkable
class OnDemandVitalsFeed(Protocol):
    """A feed that can be asked for a reading now (a cuff that can be started between its cycles)."""

    def request_reading(self, channels: tuple[Channel, ...], now_s: float) -> bool:
        """Starts a measurement of ``channels``; its readings arrive through :meth:`poll` once taken.
        ``False``: this feed cannot measure them on request."""
        ...


# ----- rules ---------------------------------------------------------------------------------------

_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: A low limit: 0 turns it off (no reading is below 0).
_Low = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: A rise over baseline in percent: 0 turns it off.
_Rise = Annotated[float, Field(ge=0, le=200, allow_inf_nan=False)]
_Delay = Annotated[float, Field(ge=0, le=120, allow_inf_nan=False)]

#: Each channel's (low, high) limit settings (``None``: the channel has no limit of that kind).
_LIMIT_FIELDS: dict[Channel, tuple[str | None, str | None]] = {
    "sbp": ("sbp_min_mmhg", "sbp_max_mmhg"),
    "dbp": (None, "dbp_max_mmhg"),
    "hr": ("hr_min_bpm", "hr_max_bpm"),
    "spo2": ("spo2_min_pct", None),
    "rr": ("rr_min_per_min", "rr_max_per_min"),
    "etco2": ("etco2_min_mmhg", "etco2_max_mmhg"),
}
_RISE_FIELDS: dict[Channel, str] = {
    "sbp": "sbp_rise_max_pct",
    "dbp": "dbp_rise_max_pct",
    "hr": "hr_rise_max_pct",
}


class VitalsThresholds(BaseModel):
    """The vital-sign rules (clinical-protocol.md, "Vital-sign rules"); defaults in ``data/vitals.toml``,
    where every setting is explained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sbp_max_mmhg: _Positive
    sbp_min_mmhg: _Low
    dbp_max_mmhg: _Positive
    hr_max_bpm: _Positive
    hr_min_bpm: _Low
    spo2_min_pct: float = Field(gt=0, le=100, allow_inf_nan=False)
    rr_max_per_min: _Positive
    rr_min_per_min: _Low
    etco2_max_mmhg: _Positive
    etco2_min_mmhg: _Low
    sbp_rise_max_pct: _Rise
    dbp_rise_max_pct: _Rise
    hr_rise_max_pct: _Rise
    hr_alarm_delay_s: _Delay
    spo2_alarm_delay_s: _Delay
    rr_alarm_delay_s: _Delay
    etco2_alarm_delay_s: _Delay
    rr_monitored: StrictBool
    etco2_monitored: StrictBool
    bp_interval_s: _Positive
    hr_interval_s: _Positive
    spo2_interval_s: _Positive
    rr_interval_s: _Positive
    etco2_interval_s: _Positive
    stale_factor: float = Field(ge=1, allow_inf_nan=False)
    bp_recheck_s: _Positive
    resume: Literal["clinician", "auto"]
    resume_after_s: float = Field(ge=0, allow_inf_nan=False)
    baseline_sbp_warn_mmhg: _Positive
    baseline_dbp_warn_mmhg: _Positive
    band_pct: float = Field(gt=0, lt=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _low_below_high(self) -> VitalsThresholds:
        for low_field, high_field in _LIMIT_FIELDS.values():
            if low_field is None or high_field is None:
                continue
            low, high = getattr(self, low_field), getattr(self, high_field)
            if low >= high:
                raise ValueError(f"{low_field} ({low:g}) must be below {high_field} ({high:g})")
        return self

    def channels(self) -> tuple[Channel, ...]:
        """The channels watched: the core ones and the optional ones that are monitored."""
        optional = tuple(c for c in OPTIONAL_CHANNELS if getattr(self, f"{c}_monitored"))
        return CORE_CHANNELS + optional

    def interval_s(self, channel: Channel) -> float:
        """The expected interval between two readings of ``channel``."""
        interval: float = getattr(
            self, "bp_interval_s" if channel in DISCRETE_CHANNELS else f"{channel}_interval_s"
        )
        return interval

    def stale_after_s(self, channel: Channel) -> float:
        """Age of the newest reading past which ``channel`` is stale."""
        return self.stale_factor * self.interval_s(channel)

    def alarm_delay_s(self, channel: Channel) -> float:
        """How long ``channel`` must stay past a limit before it alarms (0 for a discrete reading)."""
        if channel in DISCRETE_CHANNELS:
            return 0.0
        delay: float = getattr(self, f"{channel}_alarm_delay_s")
        return delay

    def limits(self, channel: Channel) -> tuple[float | None, float | None]:
        """The channel's absolute (low, high) limits; ``None``: no limit of that kind (a low limit of 0
        is off)."""
        low_field, high_field = _LIMIT_FIELDS[channel]
        low = getattr(self, low_field) if low_field is not None else None
        high = getattr(self, high_field) if high_field is not None else None
        return (low if low else None), high

    def rise_max_pct(self, channel: Channel) -> float | None:
        """The highest rise over baseline allowed (%), or ``None`` when off."""
        name = _RISE_FIELDS.get(channel)
        rise = getattr(self, name) if name is not None else 0.0
        return rise or None

    def crossed(self, channel: Channel, value: float) -> bool:
        """Whether ``value`` is past an absolute limit (≥ the maximum, < the minimum). The gate also
        applies the limits relative to the baseline (:meth:`VitalsGate.limits`)."""
        low, high = self.limits(channel)
        return _past(value, low, high)


def _reading_time(sample: VitalsSample) -> float:
    return sample.t_s


def _past(value: float, low: float | None, high: float | None) -> bool:
    return (low is not None and value < low) or (high is not None and value >= high)


@cache
def _default_settings() -> tuple[tuple[str, Any], ...]:
    return tuple(shipped_settings(THRESHOLDS_RESOURCE).items())


def vitals_thresholds(
    overrides: Mapping[str, Any] | None = None, *, where: str = "vitals"
) -> VitalsThresholds:
    """The shipped defaults with a protocol's ``overrides`` (by setting name).

    Raises :class:`VitalsDataError` listing every problem with its dotted path under ``where`` (an
    unknown name, a value out of range).
    """
    settings = dict(_default_settings())
    settings.update(overrides or {})
    return validate_document(VitalsThresholds, settings, where, VitalsDataError, prefix=where)


class VitalsBaseline(BaseModel):
    """A patient's resting vital signs, recorded before the infusion (``rr`` and ``etco2`` only when
    they are monitored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sbp_mmhg: _Positive
    dbp_mmhg: _Positive
    hr_bpm: _Positive
    spo2_pct: float = Field(gt=0, le=100, allow_inf_nan=False)
    rr_per_min: _Positive | None = None
    etco2_mmhg: _Positive | None = None

    def value(self, channel: Channel) -> float | None:
        """The channel's baseline; ``None`` for an optional channel without one."""
        value: float | None = getattr(self, CHANNEL_FIELDS[channel])
        return value

    @classmethod
    def from_samples(
        cls, samples: Iterable[VitalsSample], channels: Iterable[Channel] = CORE_CHANNELS
    ) -> VitalsBaseline:
        """The mean of each of ``channels``' readings (e.g. those polled during the preparation).

        Raises :class:`VitalsDataError` naming a channel without a reading.
        """
        wanted = tuple(channels)
        values: dict[Channel, list[float]] = {c: [] for c in wanted}
        for s in samples:
            if s.channel in values:
                values[s.channel].append(s.value)
        missing = [c for c in wanted if not values[c]]
        if missing:
            raise VitalsDataError("baseline", f"has no reading of {', '.join(missing)}")
        mean = {c: float(np.mean(v)) for c, v in values.items()}
        return cls(
            sbp_mmhg=mean["sbp"],
            dbp_mmhg=mean["dbp"],
            hr_bpm=mean["hr"],
            spo2_pct=mean["spo2"],
            rr_per_min=mean.get("rr"),
            etco2_mmhg=mean.get("etco2"),
        )


# ----- the gate ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VitalsAlarm:
    """A condition newly raised by :meth:`VitalsGate.update`.

    ``crossing``: ``t_s`` is the time of the reading that raised it, ``value`` that reading, ``limit``
    the threshold passed (``low``: a minimum), ``since_s`` the time of the first reading of the run past
    the limit (earlier than ``t_s`` by at least the channel's alarm delay).
    ``stale``: ``t_s`` is when the gate noticed, ``age_s`` the age of the channel's newest reading (or of
    the gate's first update when there was none), ``limit`` the allowed age.
    """

    kind: Literal["crossing", "stale"]
    channel: Channel
    t_s: float
    limit: float
    value: float | None = None
    age_s: float | None = None
    low: bool = False
    since_s: float | None = None

    @property
    def detail(self) -> str:
        """One line for people and the audit log."""
        label, unit = LABELS[self.channel], UNITS[self.channel]
        if self.kind == "crossing":
            sign = "<" if self.low else "≥"
            held = self.t_s - self.since_s if self.since_s is not None else 0.0
            lasting = f" for {held:g} s" if held > 0 else ""
            return f"{label} {self.value:g} {unit} {sign} {self.limit:g} {unit}{lasting}"
        return f"{label} feed stale: newest reading {self.age_s:.1f} s old (limit {self.limit:g} s)"


class VitalsGate:
    """Turns readings into alarms. Pure: no I/O, no clock; the caller hands it ``now_s``.

    - ``crossing``: raised once a channel has been past one of its limits (:meth:`limits`) for its
      alarm delay (:meth:`VitalsThresholds.alarm_delay_s`, measured between reading times: the first
      reading past the limit and the current one); at once for a discrete channel. Any newer reading
      back in range ends the run and, once raised, clears the alarm (a later crossing raises again);
    - ``stale``: raised when a watched channel's newest reading is older than ``stale_factor ×
      interval``; active until a reading arrives. A channel never read counts its age from the first
      update.

    A reading older than the channel's newest (a late arrival) still raises a crossing on a discrete
    channel, but never clears one, never refreshes the channel and never counts toward a delay.
    Readings of a channel that is not watched are ignored.
    """

    def __init__(self, thresholds: VitalsThresholds, baseline: VitalsBaseline) -> None:
        self.thresholds = thresholds
        self.baseline = baseline
        self.channels = thresholds.channels()
        self._latest: dict[Channel, VitalsSample] = {}
        self._active: dict[tuple[str, Channel], VitalsAlarm] = {}
        #: The time of the first reading of each channel's current run past a limit.
        self._run_since: dict[Channel, float] = {}
        self._started_s: float | None = None
        self._now_s: float | None = None
        # The rules and the baseline are frozen: what they give each channel is worked out once, not on
        # every update (ten a second for hours).
        self._in_force = {channel: self._limits(channel) for channel in CHANNELS}
        self._delay_s = {channel: thresholds.alarm_delay_s(channel) for channel in CHANNELS}
        self._stale_after_s = {channel: thresholds.stale_after_s(channel) for channel in self.channels}
        #: Up to when no channel can go stale without a new reading (see :meth:`_stale_alarms`): most
        #: updates bring no reading and then have nothing to check.
        self._quiet_until_s = -math.inf

    def limits(self, channel: Channel) -> tuple[float | None, float | None]:
        """The (low, high) limits in force: the absolute ones, the high one lowered to the baseline's
        allowed rise where that is set and lower."""
        return self._in_force[channel]

    def _limits(self, channel: Channel) -> tuple[float | None, float | None]:
        low, high = self.thresholds.limits(channel)
        rise = self.thresholds.rise_max_pct(channel)
        base = self.baseline.value(channel)
        if rise is not None and base is not None:
            relative = base * (1.0 + rise / 100.0)
            high = relative if high is None else min(high, relative)
        return low, high

    def crossed(self, channel: Channel, value: float) -> bool:
        """Whether ``value`` is past a limit in force."""
        return _past(value, *self.limits(channel))

    def update(self, now_s: float, samples: Iterable[VitalsSample]) -> list[VitalsAlarm]:
        """Takes the readings that arrived by ``now_s``; returns the alarms newly raised, oldest first.

        Raises :class:`VitalsDataError` for a time that goes backwards or a reading from the future.
        """
        if not math.isfinite(now_s):
            raise VitalsDataError("now_s", f"must be a finite time, not {now_s!r}")
        if self._now_s is not None and now_s < self._now_s:
            raise VitalsDataError("now_s", f"went backwards from {self._now_s:g} s to {now_s:g} s")
        if self._started_s is None:
            self._started_s = now_s
        self._now_s = now_s
        ordered = sorted(samples, key=_reading_time)
        if not ordered and now_s <= self._quiet_until_s:
            return []
        self._quiet_until_s = -math.inf  # a reading may refresh a channel or end its stale alarm
        raised: list[VitalsAlarm] = []
        for s in ordered:
            if s.t_s > now_s:
                raise VitalsDataError(
                    "sample.t_s", f"of a {s.channel} reading ({s.t_s:g} s) is later than now ({now_s:g} s)"
                )
            if s.channel not in self.channels:
                continue
            alarm = self._reading(s)
            if alarm is not None:
                raised.append(alarm)
        raised += self._stale_alarms(now_s, self._started_s)
        return raised

    def _stale_alarms(self, now_s: float, started_s: float) -> list[VitalsAlarm]:
        """The stale alarms newly raised at ``now_s``; works out :attr:`_quiet_until_s` again."""
        raised: list[VitalsAlarm] = []
        quiet_until_s = math.inf
        for channel, limit in self._stale_after_s.items():
            key = ("stale", channel)
            if key in self._active:
                continue  # raised already: only a reading clears it (and ends the quiet)
            latest = self._latest.get(channel)
            newest_s = latest.t_s if latest is not None else started_s
            age = now_s - newest_s
            if age > limit:
                alarm = VitalsAlarm("stale", channel, now_s, limit, age_s=age)
                self._active[key] = alarm
                raised.append(alarm)
                continue
            # Not stale while now - newest ≤ limit, that is while now ≤ newest + limit: the float just
            # below the rounded sum is at most the exact sum, so up to it the age rounds to ≤ limit.
            quiet_until_s = min(quiet_until_s, math.nextafter(newest_s + limit, -math.inf))
        self._quiet_until_s = quiet_until_s
        return raised

    def _reading(self, s: VitalsSample) -> VitalsAlarm | None:
        """One reading of a watched channel: the crossing it raises, if any."""
        latest = self._latest.get(s.channel)
        newest = latest is None or s.t_s >= latest.t_s
        key = ("crossing", s.channel)
        delay = self._delay_s[s.channel]
        alarm: VitalsAlarm | None = None
        if newest:
            self._latest[s.channel] = s
            self._active.pop(("stale", s.channel), None)
        if not self.crossed(s.channel, s.value):
            if newest:
                self._active.pop(key, None)
                self._run_since.pop(s.channel, None)
            return None
        if not newest and delay > 0:
            return None  # a late reading cannot say how long the channel has been past its limit
        since = self._run_since.setdefault(s.channel, s.t_s) if newest else s.t_s
        if key not in self._active and s.t_s - since >= delay:
            low, high = self.limits(s.channel)
            is_low = low is not None and s.value < low
            limit = low if is_low else high
            assert limit is not None
            alarm = VitalsAlarm("crossing", s.channel, s.t_s, limit, value=s.value, low=is_low, since_s=since)
            self._active[key] = alarm
        return alarm

    def out_of_range(self, samples: Iterable[VitalsSample]) -> list[VitalsAlarm]:
        """The readings of watched channels past a limit, at once (no alarm delay), one per channel:
        the pre-check's test that nothing starts on a patient already out of range. Changes nothing."""
        found: dict[Channel, VitalsAlarm] = {}
        for s in sorted(samples, key=lambda s: s.t_s):
            if s.channel in found or s.channel not in self.channels or not self.crossed(s.channel, s.value):
                continue
            low, high = self.limits(s.channel)
            is_low = low is not None and s.value < low
            limit = low if is_low else high
            assert limit is not None
            found[s.channel] = VitalsAlarm("crossing", s.channel, s.t_s, limit, value=s.value, low=is_low)
        return list(found.values())

    def age_s(self, channel: Channel) -> float:
        """Age of ``channel``'s newest reading at the last update (since the first update if none)."""
        if self._now_s is None or self._started_s is None:
            return 0.0
        latest = self._latest.get(channel)
        return self._now_s - (latest.t_s if latest is not None else self._started_s)

    def active(self) -> list[VitalsAlarm]:
        """The alarms whose condition still holds, in the order they were raised."""
        return list(self._active.values())

    def pending(self) -> list[Channel]:
        """Channels past a limit whose alarm delay has not run out yet (nothing is raised for them yet)."""
        return [c for c in self._run_since if ("crossing", c) not in self._active]

    def latest(self, channel: Channel) -> VitalsSample | None:
        """The channel's newest reading."""
        return self._latest.get(channel)

    def deviation_pct(self, channel: Channel) -> float | None:
        """How far the newest reading is from baseline, in % of baseline (None without a reading or a
        baseline)."""
        latest = self._latest.get(channel)
        base = self.baseline.value(channel)
        if latest is None or base is None:
            return None
        return 100.0 * (latest.value - base) / base

    def within_band(self, pct: float | None = None) -> bool:
        """Whether the newest reading of every watched channel is within ±``pct`` % of its baseline and
        no channel is stale (the end-of-observation rule; ``pct`` defaults to ``thresholds.band_pct``)."""
        band = self.thresholds.band_pct if pct is None else pct
        for channel in self.channels:
            deviation = self.deviation_pct(channel)
            if deviation is None or abs(deviation) > band or ("stale", channel) in self._active:
                return False
        return True

    def baseline_warnings(self) -> list[str]:
        """Soft warnings about the baseline (above 140/90 by default): proceed only with a confirmation."""
        t, b = self.thresholds, self.baseline
        warnings = []
        if b.sbp_mmhg > t.baseline_sbp_warn_mmhg:
            warnings.append(f"baseline SBP {b.sbp_mmhg:g} mmHg is above {t.baseline_sbp_warn_mmhg:g} mmHg")
        if b.dbp_mmhg > t.baseline_dbp_warn_mmhg:
            warnings.append(f"baseline DBP {b.dbp_mmhg:g} mmHg is above {t.baseline_dbp_warn_mmhg:g} mmHg")
        return warnings


# ----- the simulated patient monitor ---------------------------------------------------------------


class MonitorSettings(BaseModel):
    """How the simulated monitor samples: each stream's interval, and how long the cuff takes to measure
    when asked for a reading between its cycles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(default=0, ge=0)
    bp_interval_s: _Positive = 600.0
    hr_interval_s: _Positive = 1.0
    spo2_interval_s: _Positive = 1.0
    rr_interval_s: _Positive = 5.0
    etco2_interval_s: _Positive = 5.0
    cuff_measure_s: float = Field(default=30.0, ge=0, le=300, allow_inf_nan=False)


class NoiseSettings(BaseModel):
    """Reading noise: a standard deviation per channel, bounded at ``bound_sd`` deviations so in-range
    noise can never pass a limit. The continuous channels drift slowly (first-order,
    ``correlation_s``); each cuff reading is independent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sbp_mmhg: float = Field(default=4.0, ge=0, allow_inf_nan=False)
    dbp_mmhg: float = Field(default=3.0, ge=0, allow_inf_nan=False)
    hr_bpm: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    spo2_pct: float = Field(default=0.6, ge=0, allow_inf_nan=False)
    rr_per_min: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    etco2_mmhg: float = Field(default=1.5, ge=0, allow_inf_nan=False)
    correlation_s: _Positive = 30.0
    bound_sd: _Positive = 3.0

    def sd(self, channel: Channel) -> float:
        sd: float = getattr(self, CHANNEL_FIELDS[channel])
        return sd


class KetamineResponse(BaseModel):
    """The rise of BP and HR during a ketamine infusion, in script time (s from the infusion start).

    It builds from ``onset_s`` toward the end of the infusion (quadratically), peaks at ``peak_s``
    (minute 40 by default) and eases back to baseline by ``resolved_s`` (1.5 h: clinical-protocol.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sbp_rise_mmhg: float = Field(default=14.0, allow_inf_nan=False)
    dbp_rise_mmhg: float = Field(default=8.0, allow_inf_nan=False)
    hr_rise_bpm: float = Field(default=8.0, allow_inf_nan=False)
    spo2_change_pct: float = Field(default=0.0, allow_inf_nan=False)
    rr_change_per_min: float = Field(default=0.0, allow_inf_nan=False)
    etco2_change_mmhg: float = Field(default=0.0, allow_inf_nan=False)
    onset_s: float = Field(default=0.0, allow_inf_nan=False)
    peak_s: float = Field(default=2400.0, allow_inf_nan=False)
    resolved_s: float = Field(default=5400.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> KetamineResponse:
        if not self.onset_s < self.peak_s < self.resolved_s:
            raise ValueError("onset_s < peak_s < resolved_s must hold")
        return self

    def fraction(self, script_t_s: float) -> float:
        """The response's shape, 0 … 1 … 0."""
        t = script_t_s
        if t <= self.onset_s or t >= self.resolved_s:
            return 0.0
        if t <= self.peak_s:
            return ((t - self.onset_s) / (self.peak_s - self.onset_s)) ** 2
        return 0.5 * (1.0 + math.cos(math.pi * (t - self.peak_s) / (self.resolved_s - self.peak_s)))

    def rise(self, channel: Channel) -> float:
        rise: float = getattr(self, _RESPONSE_FIELDS[channel])
        return rise


#: The name of each channel's change in :class:`KetamineResponse`.
_RESPONSE_FIELDS: dict[Channel, str] = {
    "sbp": "sbp_rise_mmhg", "dbp": "dbp_rise_mmhg", "hr": "hr_rise_bpm", "spo2": "spo2_change_pct",
    "rr": "rr_change_per_min", "etco2": "etco2_change_mmhg",
}  # fmt: skip


class CrossingEvent(BaseModel):
    """From ``at_s`` for ``duration_s`` (script time), every reading of ``channel`` is ``value`` (an
    excursion in range, a crossing, or a one-reading artefact)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["crossing"]
    channel: Channel
    at_s: float = Field(allow_inf_nan=False)
    duration_s: _Positive
    value: _Positive


class DropoutEvent(BaseModel):
    """From ``at_s`` for ``duration_s`` (script time) ``channel`` gives no reading (``bp``: SBP and DBP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["dropout"]
    channel: Literal["sbp", "dbp", "hr", "spo2", "rr", "etco2", "bp"]
    at_s: float = Field(allow_inf_nan=False)
    duration_s: _Positive


ScriptedEvent = Annotated[CrossingEvent | DropoutEvent, Field(discriminator="kind")]


class PatientScript(BaseModel):
    """A simulated patient: baseline, noise, the ketamine response, scripted events (TOML) and, for
    tests and the demo, the nurse's scripted actions at the chair (``[[nurse]]``, played by
    :meth:`ketapump.clinical.session.ScriptedOperator.from_script`). The monitor reports RR and EtCO₂
    when the baseline has them.

    Script time is seconds from the infusion start (negative: before it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1]
    name: str = "patient"
    description: str = ""
    monitor: MonitorSettings = MonitorSettings()
    baseline: VitalsBaseline = VitalsBaseline(sbp_mmhg=122.0, dbp_mmhg=78.0, hr_bpm=72.0, spo2_pct=98.0)
    noise: NoiseSettings = NoiseSettings()
    response: KetamineResponse = KetamineResponse()
    event: list[ScriptedEvent] = []
    nurse: list[NurseAction] = []


def parse_patient_script(text: str, where: str) -> PatientScript:
    """Validates a script's TOML text; raises :class:`PatientScriptError` listing every problem."""
    return parse_document(PatientScript, text, where, PatientScriptError)


def load_patient_script(path: Path) -> PatientScript:
    """Reads and validates a patient script file (:class:`PatientScriptError`, ``not_found`` when it
    is not there)."""
    return read_document(PatientScript, path, PatientScriptError)


def demo_patient() -> PatientScript:
    """The shipped nominal patient (``data/patients/demo.toml``), whose session stays in range."""
    resource = resources.files("ketapump.data").joinpath(DEMO_PATIENT_RESOURCE)
    return parse_patient_script(resource.read_text(encoding="utf-8"), DEMO_PATIENT_RESOURCE)


_STREAMS: dict[str, tuple[Channel, ...]] = {
    "bp": ("sbp", "dbp"), "hr": ("hr",), "spo2": ("spo2",), "rr": ("rr",), "etco2": ("etco2",),
}  # fmt: skip
_NOISE_BLOCK = 512


class _Noise:
    """A channel's bounded noise; its own generator, so a dropout elsewhere changes nothing here."""

    def __init__(self, seed: int, index: int, sd: float, bound_sd: float, correlation: float) -> None:
        self._rng = np.random.default_rng([seed, index])
        self._sd, self._bound = sd, bound_sd * sd
        self._a = correlation  # 0: independent readings
        self._b = math.sqrt(1.0 - correlation**2)
        self._x: float | None = None
        self._block: list[float] = []
        self._i = 0

    def next(self) -> float:
        if self._i == len(self._block):
            self._block = self._rng.standard_normal(_NOISE_BLOCK).tolist()
            self._i = 0
        e = self._block[self._i] * self._sd
        self._i += 1
        x = e if self._x is None else self._a * self._x + self._b * e
        self._x = min(max(x, -self._bound), self._bound)
        return self._x


class ScriptedMonitor:
    """The simulator's patient monitor: readings from ``script`` on the session clock.

    Readings of each stream (the cuff's SBP + DBP, HR, SpO₂, and RR and EtCO₂ when the script's
    baseline has them) fall at ``start_s + k × interval``. A reading is the baseline plus the ketamine
    response plus bounded noise, rounded to whole units as a monitor shows it (SpO₂ at most 100 %); a
    scripted crossing replaces it by its exact value, a dropout suppresses it. Script time zero is
    ``infusion_start_s`` (by default ``start_s``); the orchestrator may move it with
    :meth:`mark_infusion_start` once the infusion really starts. :meth:`request_reading` starts the cuff
    between its cycles: its reading arrives ``monitor.cuff_measure_s`` later. The same script, seed and
    calls give the same readings, however often ``poll`` is called.
    """

    def __init__(
        self, script: PatientScript, *, start_s: float = 0.0, infusion_start_s: float | None = None
    ) -> None:
        self.script = script
        self.start_s = start_s
        self.infusion_start_s = start_s if infusion_start_s is None else infusion_start_s
        m, noise = script.monitor, script.noise
        self._interval = {
            "bp": m.bp_interval_s,
            "hr": m.hr_interval_s,
            "spo2": m.spo2_interval_s,
            "rr": m.rr_interval_s,
            "etco2": m.etco2_interval_s,
        }
        self._streams = {
            stream: channels
            for stream, channels in _STREAMS.items()
            if all(script.baseline.value(c) is not None for c in channels)
        }
        self._next = dict.fromkeys(self._streams, 0)
        #: Times of the cuff readings asked for between its cycles, not yet taken.
        self._requested: list[float] = []
        #: The earliest time a reading falls due (a stream's next or a requested one): ``poll`` is called
        #: every control tick, most of them between readings, and then has nothing to do.
        self._next_due_s = self._earliest_due_s()
        #: Every request, as (asked at, reading due at).
        self.requests: list[tuple[float, float]] = []
        self._noise: dict[Channel, _Noise] = {}
        for index, channel in enumerate(CHANNELS):
            stream = "bp" if channel in DISCRETE_CHANNELS else channel
            a = 0.0 if stream == "bp" else math.exp(-self._interval[stream] / noise.correlation_s)
            self._noise[channel] = _Noise(m.seed, index, noise.sd(channel), noise.bound_sd, a)

    def mark_infusion_start(self, t_s: float) -> None:
        """Script time zero (the response and events) is now session time ``t_s``."""
        self.infusion_start_s = t_s

    def request_reading(self, channels: tuple[Channel, ...], now_s: float) -> bool:
        """Starts the cuff now when ``channels`` are SBP/DBP (its reading is due ``cuff_measure_s``
        later); a cuff already measuring is not started twice. The continuous channels need no request."""
        if not set(channels) <= set(DISCRETE_CHANNELS):
            return False
        if not any(t >= now_s for t in self._requested):
            due = now_s + self.script.monitor.cuff_measure_s
            bisect.insort(self._requested, due)
            self.requests.append((now_s, due))
            self._next_due_s = min(self._next_due_s, due)
        return True

    def nominal(self, t_s: float, channel: Channel) -> float:
        """The noiseless value at session time ``t_s``: baseline plus the ketamine response."""
        r = self.script.response
        base = self.script.baseline.value(channel)
        assert base is not None, f"the script's baseline has no {channel}"
        return base + r.rise(channel) * r.fraction(t_s - self.infusion_start_s)

    def poll(self, now_s: float) -> list[VitalsSample]:
        if now_s < self._next_due_s:
            return []  # nothing is due before then (the loops below would find nothing)
        due: list[tuple[float, str]] = []
        for stream in self._streams:
            while (t := self._stream_due_s(stream)) <= now_s:
                self._next[stream] += 1
                due.append((t, stream))
        while self._requested and self._requested[0] <= now_s:
            due.append((self._requested.pop(0), "bp"))
        self._next_due_s = self._earliest_due_s()
        out: list[VitalsSample] = []
        for t, stream in sorted(due):  # noise is drawn in time order
            for channel in self._streams[stream]:
                value = self._reading(t, channel)
                if value is not None:
                    out.append(VitalsSample(t, channel, value))
        return out

    def _stream_due_s(self, stream: str) -> float:
        """When ``stream``'s next reading falls due."""
        return self.start_s + self._next[stream] * self._interval[stream]

    def _earliest_due_s(self) -> float:
        """When the next reading falls due: a stream's next one or the first requested one."""
        times = [self._stream_due_s(stream) for stream in self._streams]
        return min(times + self._requested[:1], default=math.inf)

    def _reading(self, t_s: float, channel: Channel) -> float | None:
        noise = self._noise[channel].next()  # drawn even when suppressed: the rest stays the same
        script_t = t_s - self.infusion_start_s
        crossing: float | None = None
        for event in self.script.event:
            if not event.at_s <= script_t < event.at_s + event.duration_s:
                continue
            if isinstance(event, DropoutEvent):
                if event.channel == channel or (event.channel == "bp" and channel in DISCRETE_CHANNELS):
                    return None
            elif event.channel == channel:
                crossing = event.value
        if crossing is not None:
            return crossing
        value = float(round(self.nominal(t_s, channel) + noise))
        return min(value, 100.0) if channel == "spo2" else max(value, 0.0)


# ----- recorded and pushed readings ------------------------------------------------------------------


class CsvVitalsFeed:
    """Replays a recorded file, read and checked in full when constructed.

    Two layouts, told apart by the header line (``#`` lines and blank lines are skipped):

    - long: ``t_s,channel,value``, one reading a row;
    - wide: ``t_s`` then any of ``sbp,dbp,hr,spo2,rr,etco2`` as columns; an empty cell is no reading.

    Times must not go backwards. ``offset_s`` is added to every time (a recording's zero is then the
    session time ``offset_s``). Every problem is a :class:`VitalsDataError` naming ``path:line``.
    """

    def __init__(self, path: Path, *, offset_s: float = 0.0) -> None:
        self.path = path
        self.samples = _read_csv(path, offset_s)
        self._next = 0

    def poll(self, now_s: float) -> list[VitalsSample]:
        start = self._next
        while self._next < len(self.samples) and self.samples[self._next].t_s <= now_s:
            self._next += 1
        return self.samples[start : self._next]


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise VitalsDataError(where, f"{what} {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise VitalsDataError(where, f"{what} {text.strip()!r} is not a finite number")
    return value


def _read_csv(path: Path, offset_s: float) -> list[VitalsSample]:
    try:
        text = read_text_file(path, limit_bytes=MAX_RECORDING_BYTES)
    except FileReadError as e:
        raise VitalsDataError(f"{path}:", e.problem, not_found=e.not_found) from e
    rows = [
        (n, row)
        for n, row in enumerate(csv.reader(text.splitlines()), start=1)
        if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        raise VitalsDataError(f"{path}:", "has no header and no readings")
    header_line, header = rows[0]
    names = [h.strip() for h in header]
    where = f"{path}:{header_line}:"
    if names == ["t_s", "channel", "value"]:
        wide = False
    elif names[0] == "t_s" and len(names) > 1 and set(names[1:]) <= set(CHANNELS):
        if len(set(names[1:])) != len(names) - 1:
            raise VitalsDataError(where, "names a channel column twice")
        wide = True
    else:
        raise VitalsDataError(
            where,
            f"header must be 't_s,channel,value' or 't_s' then channel columns of {', '.join(CHANNELS)}; "
            f"got {','.join(names)!r}",
        )
    samples: list[VitalsSample] = []
    last_t = -math.inf
    for n, row in rows[1:]:
        where = f"{path}:{n}:"
        if len(row) != len(names):
            raise VitalsDataError(where, f"has {len(row)} columns, the header {len(names)}")
        t = _number(row[0], "t_s", where) + offset_s
        if t < last_t:
            back = f"({t - offset_s:g} s after {last_t - offset_s:g} s)"
            raise VitalsDataError(where, f"t_s goes backwards {back}")
        last_t = t
        if wide:
            cells = [(name, cell) for name, cell in zip(names[1:], row[1:], strict=True) if cell.strip()]
        else:
            channel = row[1].strip()
            if channel not in CHANNELS:
                raise VitalsDataError(where, f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
            cells = [(channel, row[2])]
        for name, cell in cells:
            samples.append(VitalsSample(t, name, _number(cell, name, where)))  # type: ignore[arg-type]
    return samples


class CallbackVitalsFeed:
    """Readings pushed by an integrator's monitor driver, from any thread.

    ``poll`` returns the pushed readings timestamped ≤ ``now_s`` in time order; later ones wait.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[VitalsSample] = []

    def push(self, sample: VitalsSample) -> None:
        """Queues one reading (validated when the :class:`VitalsSample` was built)."""
        if not isinstance(sample, VitalsSample):
            raise TypeError(f"push takes a VitalsSample, not {type(sample).__name__}")
        with self._lock:
            self._pending.append(sample)

    def push_reading(
        self,
        t_s: float,
        *,
        sbp: float | None = None,
        dbp: float | None = None,
        hr: float | None = None,
        spo2: float | None = None,
        rr: float | None = None,
        etco2: float | None = None,
    ) -> None:
        """Queues the readings a monitor reported together (e.g. a cuff's SBP and DBP), all or none."""
        given: dict[Channel, float | None] = {
            "sbp": sbp, "dbp": dbp, "hr": hr, "spo2": spo2, "rr": rr, "etco2": etco2,
        }  # fmt: skip
        samples = [VitalsSample(t_s, c, v) for c, v in given.items() if v is not None]
        if not samples:
            raise VitalsDataError("push_reading", f"needs at least one of {', '.join(CHANNELS)}")
        with self._lock:
            self._pending.extend(samples)

    def poll(self, now_s: float) -> list[VitalsSample]:
        with self._lock:
            pending = self._pending
            ready = [s for s in pending if s.t_s <= now_s]
            if ready:
                self._pending = [s for s in pending if s.t_s > now_s]
        ready.sort(key=lambda s: s.t_s)
        return ready
