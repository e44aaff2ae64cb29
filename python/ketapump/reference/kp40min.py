"""The KP-40MIN closed loop on the reference model (mirror of ``rust/scenario``)."""

from __future__ import annotations

import contextlib
import math
import struct
import sys
from collections.abc import Mapping
from typing import Final

from ketapump.errors import KetapumpError
from ketapump.reference.f64 import FORWARD, HOLD, RETRACT
from ketapump.reference.kernel import ReferenceKernel

#: Kernel settings of KP-40MIN (performance-baselines.md) on top of the shipped defaults.
KP40MIN_OVERRIDES: Final[dict[str, float | bool]] = {
    "syringe_diameter_mm": 26.5995,  # bore area 0.5557 mL/mm
    "encoder_counts_per_mm": 3200.0,
    "control_period_s": 0.001,
    "stale_after_s": 0.1,
    "kp_per_s": 2.0,
    "ki_per_s2": 0.5,
    "integral_limit_ml_s": 0.01,
    # The per-tick PI the baseline was defined with: every 1 ms tick decides (no deadband, no hold).
    "control_deadband_counts": 0.0,
    "control_hold_s": 0.0,
    "max_rate_ml_h": 1188.0,  # u ≤ 0.33 mL/s
    "hard_max_rate_ml_h": 1200.0,
    "occlusion_threshold_mmhg": 300.0,
}

_KP_STATE_CODES: Final = {
    "idle": 0, "armed": 1, "running": 2, "paused": 3, "alarm": 4, "stopped": 5, "complete": 6,
}  # fmt: skip
_KP_DIRECTION_CODES: Final = {HOLD: 0, FORWARD: 1, RETRACT: 2}
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_U64: Final = 0xFFFFFFFFFFFFFFFF


def fnv1a(hash_: int, word: int) -> int:
    """Folds one 64-bit word into an FNV-1a hash, byte by byte, little-endian (as the Rust side)."""
    for byte in (word & _U64).to_bytes(8, "little"):
        hash_ = ((hash_ ^ byte) * _FNV_PRIME) & _U64
    return hash_


def run_kp40min(settings: Mapping[str, float | bool], ticks: int = 2_400_000) -> dict[str, object]:
    """KP-40MIN on the reference model: the statement-by-statement mirror of
    ``ketapump_scenario::run_kp40min`` (same plant, same order of operations, same trace hash)."""
    kernel = ReferenceKernel(settings)
    dt, lag_tau, c, r, occlusion = 0.001, 0.05, 1.0e-3, 7_200.0, 1_000.0
    ml_per_mm, counts_per_mm = 0.5557, 3_200.0
    occlusion_start, occlusion_end = 1_500_000, 1_620_000
    schedule = ((600_000, 20.0), (1_800_000, 10.0))
    lag = dt / lag_tau
    smallest_normal = sys.float_info.min
    dt_over_c = dt / c
    inv_r_open = 1.0 / r
    inv_r_occluded = 1.0 / (r * occlusion)
    counts_per_ml = counts_per_mm / ml_per_mm
    ml_per_count = ml_per_mm / counts_per_mm
    q = x = p = 0.0
    hash_ = _FNV_OFFSET
    last_state = "idle"
    first_alarm_tick: int | None = None
    kernel.load(10.0, 9.0, take_up=False)
    kernel.step(0.0, 0.0, math.floor(x * counts_per_ml) * ml_per_count, p)
    kernel.start()
    direction, rate_ml_s = HOLD, 0.0
    n = 0
    while n < min(ticks, 2_400_000):
        n += 1
        u = rate_ml_s if direction == FORWARD else -rate_ml_s if direction == RETRACT else 0.0
        q += (u - q) * lag
        if 0.0 < abs(q) < smallest_normal:  # subnormal: zero, as the Rust plant sets it (why: there)
            q = 0.0
        x += q * dt
        inv_r = inv_r_occluded if occlusion_start <= n < occlusion_end else inv_r_open
        p += (q - p * inv_r) * dt_over_c
        for at, rate in schedule:
            if n == at:
                with contextlib.suppress(KetapumpError):
                    kernel.set_rate(rate)
        t = n * dt
        out = kernel.step(t, t, math.floor(x * counts_per_ml) * ml_per_count, p)
        # The held command in mL/s exactly as the kernel computed it (not round-tripped through mL/h).
        direction, rate_ml_s = out.direction, kernel._last_command.rate_ml_s
        if first_alarm_tick is None and out.alarms:
            first_alarm_tick = n
        if n % 1_000 == 0 or out.state != last_state:
            hash_ = fnv1a(hash_, n)
            hash_ = fnv1a(hash_, _KP_STATE_CODES[out.state])
            hash_ = fnv1a(hash_, _KP_DIRECTION_CODES[out.direction])
            hash_ = fnv1a(hash_, struct.unpack("<Q", struct.pack("<d", rate_ml_s))[0])
            last_state = out.state
    return {
        "ticks": n,
        "state": kernel.state,
        "alarms": list(kernel.alarms),
        "first_alarm_tick": first_alarm_tick,
        "delivered_ml": kernel.delivered_ml,
        "plunger_ml": x,
        "pressure_mmhg": p,
        "trace_hash": hash_,
    }
