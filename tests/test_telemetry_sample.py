"""``PumpTelemetry.of``, the drivers' fast constructor, makes exactly what the dataclass constructor
makes: the same fields (a field added to the class and not to ``of`` fails here), equal, hashed,
printed and frozen alike."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump.wire import PumpTelemetry

_ALARMS = st.frozensets(st.sampled_from(["occlusion", "watchdog", "reset", "end_of_travel", "air"]))
_SAMPLES = st.fixed_dictionaries(
    {
        "volume_ml": st.floats(allow_nan=True, allow_infinity=False, width=32),
        "pressure_mmhg": st.floats(allow_nan=True, allow_infinity=False, width=32),
        "motor_running": st.booleans(),
        "air_in_line": st.booleans(),
        "syringe_present": st.booleans(),
        "end_of_travel": st.booleans(),
        "pump_alarms": _ALARMS,
        "infused_ml": st.floats(min_value=0.0, max_value=1e6),
    }
)


def test_of_takes_every_field_of_the_sample_and_nothing_else() -> None:
    parameters = inspect.signature(PumpTelemetry.of).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    assert list(parameters) == [f.name for f in dataclasses.fields(PumpTelemetry)]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(_SAMPLES)
def test_of_makes_the_sample_the_constructor_makes(fields: dict[str, object]) -> None:
    fast, built = PumpTelemetry.of(**fields), PumpTelemetry(**fields)  # type: ignore[arg-type]
    assert type(fast) is PumpTelemetry
    # The very objects given, field by field (so a NaN is the same NaN and the samples compare equal).
    assert all(getattr(fast, f.name) is fields[f.name] for f in dataclasses.fields(PumpTelemetry))
    assert fast == built and hash(fast) == hash(built) and repr(fast) == repr(built)
    assert dataclasses.replace(fast, infused_ml=1.0) == dataclasses.replace(built, infused_ml=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.volume_ml = 1.0  # type: ignore[misc]
