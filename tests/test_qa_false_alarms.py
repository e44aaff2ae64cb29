"""S5's other half: the occlusion detectors must not cry wolf. 100 nominal 40-minute sessions, closed
loop (the real kernel against the hw-sim plant, through the campaign machinery in Rust), at clinical
rates, with Gaussian noise on every pressure sample and the pump moved 50 cm up or down relative to the
cannula at a random time: not one alarm.

A 50 cm move changes the line's equilibrium pressure by 37 mmHg and the line relaxes to it through its
R·C time constant, so the slope detector sees a rise of that size with a slope well above its Q/C
fraction at the low rates: the case a slope detector must tell from an occlusion's ramp.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

import pytest

from ketapump.qa.campaign import run_campaign, validate_spec
from ketapump.qa.occlusion import OCCLUSION_ALARMS

SESSIONS = 100
#: 60 mL syringe filled, 40 min: at 80 mL/h that is 53 mL, inside 90 % of the fill, so every session
#: runs its full 40 minutes.
NOMINAL = {
    "infusion": {
        "syringes": ["bd-plastipak-60"],
        "rate_ml_h": [5.0, 80.0],
        "duration_min": [40.0, 40.0],
        "fill_fraction": [1.0, 1.0],
        "rate_change_probability": 0.0,
        "over_cap_probability": 0.0,
    },
    "plant": {"pressure_noise_sd_mmhg": [1.0, 2.0]},
    "restart": {"probability": 0.0},
    "occlusion": {"probability": 0.0},
    "air": {"probability": 0.0},
    "stuck_encoder": {"probability": 0.0},
    "encoder_slip": {"probability": 0.0},
    "drive_stall": {"probability": 0.0},
}


def session_spec(height_cm: float) -> dict[str, Any]:
    """The shipped default campaign narrowed to nominal sessions, every one with a head change of
    exactly ``height_cm`` somewhere in its middle 80 %."""
    text = resources.files("ketapump.data").joinpath("campaigns", "default.toml").read_text(encoding="utf-8")
    document = tomllib.loads(text)
    for section, values in NOMINAL.items():
        document[section].update(values)
    document["head_height"] = {"probability": 1.0, "height_cm": [height_cm, height_cm]}
    return document


@pytest.mark.parametrize("height_cm", [50.0, -50.0], ids=["raised-50cm", "lowered-50cm"])
def test_nominal_sessions_with_noise_and_a_50_cm_head_change_never_alarm(height_cm: float) -> None:
    spec, config = validate_spec(session_spec(height_cm), f"nominal sessions, head {height_cm:+.0f} cm")
    base = 0 if height_cm > 0 else SESSIONS // 2
    result = run_campaign(spec, config, list(range(base, base + SESSIONS // 2)))
    assert result.runs == SESSIONS // 2
    for o in result.outcomes:
        # Each session really was what it claims: 40 minutes, one head change, noise on.
        assert [(f["name"], f["height_cm"]) for f in o["faults"]] == [("head_height", height_cm)], o["faults"]
        assert 5.0 <= o["rate_ml_h"] <= 80.0
        assert o["programmed_ml"] == pytest.approx(o["rate_ml_h"] * 40 / 60)
    occlusion_alarms = [
        (o["seed"], o["rate_ml_h"], o["alarms"], o["first_alarm_s"])
        for o in result.outcomes
        if set(o["alarms"]) & OCCLUSION_ALARMS
    ]
    assert occlusion_alarms == [], (
        f"false occlusion alarms in {len(occlusion_alarms)} of {result.runs} sessions"
    )
    for o in result.outcomes:
        if height_cm < 0:
            # Lowered: the line only pressurises by 37 mmHg; nothing may alarm.
            assert o["alarms"] == [] and o["state"] == "complete", o
        elif o["alarms"]:
            # Raised: the pump 50 cm above the cannula siphons (the line pulls the plunger through the
            # lead-screw slack). At the lowest rates the flow check sees the plunger run ahead of the
            # command and alarms after the raise; after the end of the dose the watch sees the siphon and
            # the kernel catches it (uncommanded_delivery, during the watched settle). True over-infusion
            # alarms, not occlusion ones.
            # (A run stopped by the flow check is then held, and the siphon is seen there too.)
            assert set(o["alarms"]) <= {"flow_deviation", "uncommanded_delivery"}, o
            if "flow_deviation" in o["alarms"]:
                assert o["first_alarm_s"] > o["faults"][0]["at_s"] and o["rate_ml_h"] < 10.0, o
        else:
            assert o["state"] == "complete" and not o["timed_out"], o
    # Both ends of the rate range are covered (log-uniform draws).
    rates = [o["rate_ml_h"] for o in result.outcomes]
    assert min(rates) < 10.0 and max(rates) > 40.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"slope_sustain_s": 0.0, "slope_hold_fraction": 0.0},
        {"slope_hold_fraction": 0.0},
        {"slope_sustain_s": 0.0},
    ],
    ids=["rise-only", "sustain-without-hold", "hold-without-sustain"],
)
def test_the_head_change_is_taken_for_an_occlusion_without_sustain_and_hold(
    overrides: dict[str, float],
) -> None:
    # Once its slope has held, the shipped slope detector needs only 25 mmHg of rise
    # (slope_sustained_rise_mmhg), below the 37 mmHg a 50 cm drop adds: on the same sessions, without
    # either of the conditions on the slope (held for slope_sustain_s, still slope_hold_fraction of its
    # peak) the head change is taken for an occlusion.
    document = session_spec(-50.0)
    document["kernel"] = overrides
    spec, config = validate_spec(document, f"nominal sessions, {overrides}")
    result = run_campaign(spec, config, list(range(SESSIONS)))
    falsely = [o for o in result.outcomes if "occlusion_slope" in o["alarms"]]
    # Measured: 63, 10 and 56 of the 100.
    assert len(falsely) >= 5, len(falsely)
    assert all(o["first_alarm_s"] > o["faults"][0]["at_s"] for o in falsely)
