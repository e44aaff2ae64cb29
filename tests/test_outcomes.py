"""Outcome scores (PHQ-9, MADRS): validated ranges, the trend with response and remission, and the trend
plot checked against its data (the plotted points read back from the figure)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib.image
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump.clinical.course.outcomes import (
    INSTRUMENTS,
    Score,
    check_score,
    plot_trend,
    trend_figure,
    trends,
)
from ketapump.clinical.course.settings import load_course_settings
from ketapump.errors import CourseError

T0 = dt.datetime(2025, 1, 6, 9, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
OUTCOMES = load_course_settings().outcomes


def _scores(instrument: str, values: list[int]) -> list[Score]:
    return [Score("p", f"s{i}", T0 + 2 * i * DAY, instrument, v, "dr-a") for i, v in enumerate(values)]


@pytest.mark.parametrize(("instrument", "high"), [("phq9", 27), ("madrs", 60)])
def test_scores_are_whole_numbers_in_the_scales_range(instrument: str, high: int) -> None:
    label = INSTRUMENTS[instrument][0]
    assert check_score("p", instrument, 0) == 0 and check_score("p", instrument, high) == high
    for bad in (-1, high + 1, 2.5, True, "7"):
        with pytest.raises(CourseError, match=rf"{label} score .* is not a whole number from 0 to {high}"):
            check_score("p", instrument, bad)  # type: ignore[arg-type]
    with pytest.raises(CourseError, match="'hamd' is not a rating scale"):
        check_score("p", "hamd", 10)


def test_the_shipped_thresholds() -> None:
    assert OUTCOMES.response_reduction_pct == 50.0
    assert (OUTCOMES.remission_max("phq9"), OUTCOMES.remission_max("madrs")) == (4, 10)


def test_a_halved_score_is_a_response_and_a_low_one_a_remission() -> None:
    (phq,) = trends(_scores("phq9", [20, 14, 11, 10]), OUTCOMES).values()
    assert (phq.baseline, phq.latest, phq.change_pct) == (20, 10, 50.0)
    assert phq.response and not phq.remission and phq.status == "response"
    (phq,) = trends(_scores("phq9", [20, 12, 4]), OUTCOMES).values()
    assert phq.remission and phq.status == "remission"
    (madrs,) = trends(_scores("madrs", [34, 30, 18]), OUTCOMES).values()
    assert not madrs.response and madrs.status == "no response yet"
    assert madrs.change_pct == pytest.approx(100 * 16 / 34)
    (one,) = trends(_scores("madrs", [34]), OUTCOMES).values()
    assert one.status == "baseline only" and not one.response and not one.remission
    # A zero baseline has no percentage change and is never a response.
    (zero,) = trends(_scores("phq9", [0, 0]), OUTCOMES).values()
    assert zero.change_pct is None and not zero.response and zero.remission


def test_scales_are_kept_apart_and_ordered_by_time() -> None:
    mixed = _scores("madrs", [30, 12]) + _scores("phq9", [18, 9])
    result = trends(reversed(mixed), OUTCOMES)
    assert list(result) == ["phq9", "madrs"]
    assert [v for _, v in result["madrs"].points] == [30, 12]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=27), min_size=2, max_size=12))
def test_response_is_exactly_a_halving_of_the_baseline(values: list[int]) -> None:
    (trend,) = trends(_scores("phq9", values), OUTCOMES).values()
    assert trend.baseline == values[0] and trend.latest == values[-1]
    assert trend.response == (values[0] > 0 and values[-1] <= values[0] / 2)
    assert trend.remission == (values[-1] <= 4)


def test_the_trend_plot_shows_its_data(tmp_path: Path) -> None:
    """The plot is read back: the PHQ-9 line's points are the scores, the threshold lines where the
    numbers put them; the PNG is a real, drawn image."""
    data = trends(_scores("phq9", [20, 14, 9]) + _scores("madrs", [34, 20, 12]), OUTCOMES)
    fig = trend_figure(list(data.values()), title="p: outcome scores")
    phq_ax, madrs_ax = fig.axes
    score_line, baseline, response, remission = phq_ax.get_lines()
    assert list(score_line.get_ydata()) == [20, 14, 9]
    assert baseline.get_ydata()[0] == 20 and response.get_ydata()[0] == 10 and remission.get_ydata()[0] == 4
    assert phq_ax.get_title() == "PHQ-9: response"
    assert list(madrs_ax.get_lines()[0].get_ydata()) == [34, 20, 12]
    assert madrs_ax.get_title() == "MADRS: response"
    path = plot_trend(list(data.values()), tmp_path / "trend.png", title="p: outcome scores")
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 400 and image.std() > 0.01
