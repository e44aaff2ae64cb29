"""The exception hierarchy: one tree, organised by phase, dual-inheriting stdlib types."""

from __future__ import annotations

import math

import pytest

from ketapump import _core
from ketapump.config import kernel_config
from ketapump.errors import (
    ConfigurationError,
    InterlockError,
    KetapumpError,
    PumpTimeoutError,
    StateTransitionError,
    TransportError,
)


@pytest.mark.parametrize(
    ("cls", "stdlib"),
    [
        (ConfigurationError, ValueError),
        (StateTransitionError, RuntimeError),
        (InterlockError, RuntimeError),
        (TransportError, OSError),
        (PumpTimeoutError, TimeoutError),
        (PumpTimeoutError, TransportError),
    ],
)
def test_hierarchy(cls: type[Exception], stdlib: type[Exception]) -> None:
    assert issubclass(cls, KetapumpError)
    assert issubclass(cls, stdlib)


def test_transport_errors_name_the_endpoint() -> None:
    err = PumpTimeoutError("modbus-tcp://127.0.0.1:1?unit=1", "no answer within 0.5 s")
    assert err.endpoint == "modbus-tcp://127.0.0.1:1?unit=1"
    assert "127.0.0.1:1" in str(err)


def test_invalid_operator_command_raises_state_transition_error() -> None:
    kernel = _core.SafetyKernel(kernel_config())
    with pytest.raises(StateTransitionError) as info:
        kernel.start()
    assert (info.value.state, info.value.command) == ("idle", "start")
    assert str(info.value) == "cannot start while idle"


def test_invalid_rate_while_running_raises_interlock_and_latches() -> None:
    kernel = _core.SafetyKernel(kernel_config())
    kernel.load(52.5, 35.0)
    kernel.step(0.0, 0.0, 0.0, 0.0)
    kernel.start()
    with pytest.raises(InterlockError) as info:
        kernel.set_rate(math.inf)
    assert info.value.alarm == "rate_command_invalid"
    assert kernel.state == "alarm"
    assert kernel.alarms == ("rate_command_invalid",)
    out = kernel.step(0.1, 0.1, 0.0, 0.0)
    assert (out.direction, out.rate_ml_h) == ("hold", 0.0)


def test_controller_refuses_non_finite_input_by_name() -> None:
    c = _core.RateController(
        kp_per_s=2.0, ki_per_s2=0.5, integral_limit_ml_s=0.01, slew_ml_s_per_s=1.0, max_ml_s=0.3
    )
    with pytest.raises(ConfigurationError) as info:
        c.step(math.nan, 0.0, 0.1)
    assert info.value.field == "setpoint_ml_s"
    with pytest.raises(ConfigurationError) as info:
        c.step(0.01, 0.0, -0.1)
    assert info.value.field == "dt_s"
    with pytest.raises(ConfigurationError) as info:
        _core.RateController(
            kp_per_s=math.nan, ki_per_s2=0.5, integral_limit_ml_s=0.01, slew_ml_s_per_s=1.0, max_ml_s=0.3
        )
    assert info.value.field == "kp_per_s"
