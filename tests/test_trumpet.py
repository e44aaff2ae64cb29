"""The IEC trumpet computation against hand-computed cases."""

from __future__ import annotations

import pytest

from ketapump.qa.trumpet import flows_ml_h, trumpet


def test_flow_per_sample_by_hand() -> None:
    # S = 0.5 min, d = 1: Q = 60·ΔW/0.5 = 120·ΔW. ΔW = 0.05 g → 6 mL/h; 0.04 g → 4.8 mL/h.
    assert flows_ml_h([0.0, 0.05, 0.09], 0.5, 1.0) == pytest.approx([6.0, 4.8])
    # Density 2 g/mL halves the volume: 0.05 g → 3 mL/h.
    assert flows_ml_h([0.0, 0.05], 0.5, 2.0) == pytest.approx([3.0])


def test_perfect_delivery_has_zero_error_everywhere() -> None:
    rate = 6.0  # 0.05 g per 0.5 min
    grams = [0.05 * k for k in range(241)]  # 120 min
    result = trumpet(grams, rate_ml_h=rate)
    assert result.mean_error_pct == pytest.approx(0.0, abs=1e-9)
    for p, (high, low) in result.ep.items():
        assert high == pytest.approx(0.0, abs=1e-9) and low == pytest.approx(0.0, abs=1e-9), p


def test_small_case_by_hand() -> None:
    # Rate 6 mL/h, S = 0.5 min, analysis after 1 min, windows of 1 and 2 min (2 and 4 samples).
    # Increments (g): 0.05 0.05 | 0.06 0.04 0.05 0.07 → flows 6 6 | 7.2 4.8 6.0 8.4
    # Errors over the analysis period (last four): +20 %, −20 %, 0 %, +40 %.
    grams = [0.0, 0.05, 0.10, 0.16, 0.20, 0.25, 0.32]
    result = trumpet(grams, rate_ml_h=6.0, start_min=1.0, windows_min=(1.0, 2.0))
    # A: mean flow (7.2+4.8+6.0+8.4)/4 = 6.6 → +10 %.
    assert result.mean_error_pct == pytest.approx(10.0)
    # P = 1 min (2 samples): averages 0, −10, +20 → max +20, min −10.
    assert result.ep[1.0] == pytest.approx((20.0, -10.0))
    # P = 2 min (4 samples): one position, the mean +10.
    assert result.ep[2.0] == pytest.approx((10.0, 10.0))


def test_constant_under_delivery() -> None:
    # Every sample 2 % short: A = −2 % and every window's extremes are −2 %.
    grams = [0.05 * 0.98 * k for k in range(241)]
    result = trumpet(grams, rate_ml_h=6.0)
    assert result.mean_error_pct == pytest.approx(-2.0)
    assert all(v == pytest.approx((-2.0, -2.0)) for v in result.ep.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate_ml_h": 0.0}, "positive"),
        ({"rate_ml_h": 6.0, "windows_min": (0.75,)}, "whole number"),
        ({"rate_ml_h": 6.0, "windows_min": (90.0,)}, "longer"),
        ({"rate_ml_h": 6.0, "start_min": 200.0}, "no samples"),
    ],
)
def test_refusals(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trumpet([0.05 * k for k in range(241)], **kwargs)  # type: ignore[arg-type]
