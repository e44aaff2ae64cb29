"""The session's events built in one step (:meth:`SessionEvent.of`) are the events ``__init__`` builds."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump.clinical import events
from ketapump.clinical.events import SessionEvent, Tick

EVENT_CLASSES = sorted(
    (c for c in vars(events).values() if isinstance(c, type) and issubclass(c, SessionEvent)),
    key=lambda c: c.__name__,
)


def _value(f: dataclasses.Field[Any], i: int) -> Any:
    """A value for field ``f`` that differs from its default (when it has one)."""
    if f.name == "vitals" or f.name in {"detail", "baseline", "limits", "rise_max_pct"}:
        return {"hr": 70.0 + i}
    if f.name in {"alarms", "paused_by", "holders", "released"}:
        return ("vitals", f"x{i}")
    if f.name in {"accepted"}:
        return True
    if "float" in str(f.type):
        return 1.5 + i
    return f"v{i}"


def _fields(cls: type[SessionEvent], given: set[str] | None = None) -> dict[str, Any]:
    """Every required field of ``cls``, and of the defaulted ones those in ``given`` (all by default)."""
    out = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if not has_default or given is None or f.name in given:
            out[f.name] = _value(f, i)
    return out


def _same(a: SessionEvent, b: SessionEvent) -> None:
    assert type(a) is type(b)
    assert a == b
    assert repr(a) == repr(b)
    assert vars(a) == vars(b)
    assert a.as_dict() == b.as_dict()


def test_there_are_events_to_compare() -> None:
    assert Tick in EVENT_CLASSES and len(EVENT_CLASSES) >= 10


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_every_event_built_in_one_step_equals_the_one_init_builds(cls: type[SessionEvent]) -> None:
    for given_defaults in (None, set()):
        fields = _fields(cls, given_defaults)
        _same(cls.of(dict(fields)), cls(**fields))


@settings(max_examples=60, derandomize=True, deadline=None)
@given(data=st.data())
def test_any_choice_of_defaulted_fields_gives_the_same_event(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(EVENT_CLASSES))
    optional = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    )
    chosen = set(data.draw(st.lists(st.sampled_from(optional), unique=True))) if optional else set()
    fields = _fields(cls, chosen)
    _same(cls.of(dict(fields)), cls(**fields))


def test_defaults_made_per_event_are_not_shared() -> None:
    fields = _fields(Tick, set())
    a, b = Tick.of(dict(fields)), Tick.of(dict(fields))
    assert a.vitals == {} and a.vitals is not b.vitals
    assert math.isnan(a.measured_rate_ml_h) and a.vitals_clear_s is None


def test_an_event_built_in_one_step_is_frozen() -> None:
    tick = Tick.of(_fields(Tick))
    with pytest.raises(dataclasses.FrozenInstanceError):
        tick.t_s = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda f: f | {"no_such_field": 1}, id="unknown-field"),
        pytest.param(lambda f: {k: v for k, v in f.items() if k != "pump_state"}, id="missing-field"),
    ],
)
def test_wrong_fields_raise_the_error_init_raises(change: Any) -> None:
    fields = change(_fields(Tick))
    with pytest.raises(TypeError) as by_init:
        Tick(**fields)
    with pytest.raises(TypeError) as in_one_step:
        Tick.of(dict(fields))
    assert str(in_one_step.value) == str(by_init.value)
