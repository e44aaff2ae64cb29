"""A plain pure-Python reference model of the Rust safety kernel (``rust/core``).

This package is test support and a benchmark baseline, **not** the product: the pump is only ever
driven by the Rust kernel (``ketapump._core``). It sits on the floor of the package's layers (it imports
only :mod:`ketapump.errors`) and reproduces, statement by statement and with the same floating-point
operation order, the core's modules, one Python module for each Rust file:

- :func:`clamp_rate` (:mod:`~ketapump.reference.clamp`, ``clamp.rs``), the single choke point for a
  forward rate;
- :class:`ReferenceController` (:mod:`~ketapump.reference.controller`, ``controller.rs``), the
  feed-forward + PI volume controller;
- :class:`ReferenceKernel` (:mod:`~ketapump.reference.kernel`, ``kernel.rs``, with
  :mod:`~ketapump.reference.config`, :mod:`~ketapump.reference.alarm` and
  :mod:`~ketapump.reference.trace`), the interlock state machine with its program validation and trace
  ring;
- :func:`run_kp40min` (:mod:`~ketapump.reference.kp40min`), the KP-40MIN closed loop of the benchmarks;
- :mod:`~ketapump.reference.f64`: the constants they share and Rust's ``f64`` semantics.

Agreement. Python floats are IEEE-754 doubles and every expression below is evaluated in the same order
as its Rust counterpart (no fused multiply-add, Rust's NaN-ignoring ``f64::min``/``f64::max`` mirrored by
:func:`_fmin`/:func:`_fmax`), so in practice the results are bit-identical. The contract the differential
tests hold the two implementations to is :data:`TOLERANCE`: every float output (``rate_ml_h``,
``delivered_ml``, ``remaining_ml``, trace ``t_s``/``delivered_ml``, the controller terms) agrees within
``1e-9`` relative with an absolute floor of ``1e-9`` (``math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)``),
and every discrete output (direction, state, alarms, clamp branch, trace causes, raised exceptions)
agrees exactly. Where the Rust code would panic (``f64::clamp`` with a NaN bound), :class:`RustPanicError`
is raised at the same point.

Keep it in step with the core: a change to ``rust/core`` needs the same change here, or
``tests/test_differential.py`` fails. Last mirrored: commit d90149c (restart-on-target controller,
stall volume counted every tick, ceiling-capped back-off rate) and the S6 back-off change (a back-off
planned for every alarm that permits one, only with the line above baseline + margin) and the
end-of-dose drive release (``drive_stiffness_n_per_mm``: the dose ends early by what the compressed
drive still pushes, counted as delivered from the completion on).

Configuration is not validated here: :class:`ReferenceKernel` takes the already-validated raw settings
(``ketapump.config.default_kernel_settings()`` plus overrides, i.e. what ``ketapump.config.kernel_config``
accepted) and derives the kernel units exactly as ``KernelConfig::from_raw`` does. Program and rate
validation (``Program::new``, ``validate_rate``) *is* reproduced, with the same field names in errors.
Only the standard library is used.
"""

from __future__ import annotations

from ketapump.reference.alarm import AlarmSet
from ketapump.reference.clamp import clamp_rate
from ketapump.reference.config import KernelConfig, Program, RawKernelConfig, validate_rate
from ketapump.reference.controller import ControlStatus, Gains, ReferenceController
from ketapump.reference.f64 import ALARMS, TOLERANCE, RustPanicError
from ketapump.reference.kernel import (
    Backoff,
    Infusing,
    MotorCommand,
    ReferenceKernel,
    State,
    StepResult,
    TakeUp,
    Telemetry,
)
from ketapump.reference.kp40min import KP40MIN_OVERRIDES, fnv1a, run_kp40min
from ketapump.reference.trace import TraceEvent

__all__ = [
    "ALARMS",
    "KP40MIN_OVERRIDES",
    "TOLERANCE",
    "AlarmSet",
    "Backoff",
    "ControlStatus",
    "Gains",
    "Infusing",
    "KernelConfig",
    "MotorCommand",
    "Program",
    "RawKernelConfig",
    "ReferenceController",
    "ReferenceKernel",
    "RustPanicError",
    "State",
    "StepResult",
    "TakeUp",
    "Telemetry",
    "TraceEvent",
    "clamp_rate",
    "fnv1a",
    "run_kp40min",
    "validate_rate",
]
