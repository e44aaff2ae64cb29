"""Who holds the pump (S7: automation never overrides an operator's action): the pure state machine of
``ketapump.clinical.holds``, a test per transition of its diagram, and a property over any sequence."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump.clinical.holds import LIMIT, OPERATOR, SYRINGE, VITALS, Change, Holds


def holds(resume: Any = "clinician", after_s: float = 120.0) -> Holds:
    return Holds(resume, after_s)


# ----- each transition of the diagram ----------------------------------------------------------------


def test_an_operator_pause_holds_a_free_pump_and_pauses_the_kernel() -> None:
    h = holds()
    assert h.operator_pause() == Change(True, added=OPERATOR, kernel="pause", left=(OPERATOR,))


def test_a_second_operator_pause_is_refused() -> None:
    h = holds()
    h.operator_pause()
    assert h.operator_pause() == Change(False, "already paused by the operator", left=(OPERATOR,))


def test_a_vitals_condition_holds_a_free_pump_and_pauses_the_kernel() -> None:
    h = holds()
    assert h.vitals(active=True, now_s=10.0) == Change(True, added=VITALS, kernel="pause", left=(VITALS,))
    assert h.vitals(active=True, now_s=11.0) == Change(True, left=(VITALS,))  # still active: no change


def test_a_vitals_condition_joins_an_operator_pause_without_taking_it_over() -> None:
    h = holds()
    h.operator_pause()
    assert h.vitals(active=True, now_s=10.0) == Change(True, added=VITALS, left=(OPERATOR, VITALS))


def test_an_operator_may_pause_while_the_vitals_hold_the_pump() -> None:
    h = holds()
    h.vitals(active=True, now_s=10.0)
    assert h.operator_pause() == Change(True, added=OPERATOR, left=(OPERATOR, VITALS))


def test_an_operator_resume_releases_the_operators_pause() -> None:
    h = holds()
    h.operator_pause()
    assert h.operator_resume(vitals_active=False) == Change(True, released=(OPERATOR,), kernel="resume")


def test_an_operator_resume_is_refused_while_a_vitals_condition_is_active_and_releases_nothing() -> None:
    h = holds()
    h.operator_pause()
    h.vitals(active=True, now_s=10.0)
    change = h.operator_resume(vitals_active=True, active_detail="SpO₂ 85 % < 90 % for 10 s")
    assert change == Change(False, "vitals alarm active: SpO₂ 85 % < 90 % for 10 s", left=(OPERATOR, VITALS))
    assert h.holders == (OPERATOR, VITALS)


def test_an_operator_resume_releases_both_pauses_once_the_vitals_are_clear() -> None:
    h = holds()
    h.operator_pause()
    h.vitals(active=True, now_s=10.0)
    h.vitals(active=False, now_s=20.0)
    change = h.operator_resume(vitals_active=False)
    assert change == Change(True, released=(OPERATOR, VITALS), kernel="resume")
    assert h.clear_since_s is None


def test_an_operator_resume_releases_a_clear_vitals_pause() -> None:
    h = holds()
    h.vitals(active=True, now_s=10.0)
    h.vitals(active=False, now_s=20.0)
    assert h.operator_resume(vitals_active=False) == Change(True, released=(VITALS,), kernel="resume")


def test_an_operator_resume_with_nothing_held_is_refused() -> None:
    assert holds().operator_resume(vitals_active=False) == Change(False, "not paused")


def test_clinician_policy_never_releases_the_vitals_pause_by_itself() -> None:
    h = holds("clinician", 0.0)
    h.vitals(active=True, now_s=10.0)
    for t in range(11, 10_000, 100):
        assert h.vitals(active=False, now_s=float(t)).released == ()
    assert h.holders == (VITALS,) and h.clear_since_s == 11.0


def test_auto_policy_releases_the_vitals_pause_once_clear_for_resume_after_s() -> None:
    h = holds("auto", 120.0)
    h.vitals(active=True, now_s=10.0)
    assert h.vitals(active=False, now_s=20.0) == Change(True, left=(VITALS,))
    assert h.vitals(active=False, now_s=139.9).released == ()
    assert h.vitals(active=False, now_s=140.0) == Change(True, released=(VITALS,), kernel="resume")


def test_a_new_condition_restarts_the_clear_time() -> None:
    h = holds("auto", 120.0)
    h.vitals(active=True, now_s=10.0)
    h.vitals(active=False, now_s=20.0)
    h.vitals(active=True, now_s=100.0)
    assert h.clear_since_s is None
    h.vitals(active=False, now_s=110.0)
    assert h.vitals(active=False, now_s=229.0).released == ()
    assert h.vitals(active=False, now_s=230.0).released == (VITALS,)


def test_auto_policy_releases_only_the_vitals_hold_never_the_operators() -> None:
    h = holds("auto", 0.0)
    h.operator_pause()
    h.vitals(active=True, now_s=10.0)
    change = h.vitals(active=False, now_s=11.0)
    assert change == Change(True, released=(VITALS,), kernel=None, left=(OPERATOR,))
    for t in range(12, 10_000, 100):
        assert h.vitals(active=False, now_s=float(t)) == Change(True, left=(OPERATOR,))


def test_the_limit_holds_until_its_question_is_answered() -> None:
    h = holds()
    assert h.limit_hold() == Change(True, added=LIMIT, kernel="pause", left=(LIMIT,))
    assert h.limit_hold().accepted is False
    refused = h.operator_resume(vitals_active=False)
    assert refused == Change(False, "held at the maximum duration: answer its question", left=(LIMIT,))
    assert h.limit_release() == Change(True, released=(LIMIT,), kernel="resume")
    assert h.limit_release().accepted is False


def test_an_operator_resume_leaves_the_limit_hold_and_says_so() -> None:
    h = holds()
    h.operator_pause()
    h.limit_hold()
    change = h.operator_resume(vitals_active=False)
    assert change == Change(True, "still held by limit", released=(OPERATOR,), left=(LIMIT,))
    assert h.limit_release().kernel == "resume"


def test_the_syringe_holds_until_the_next_one_is_loaded_and_no_resume_lifts_it() -> None:
    h = holds()
    assert h.syringe_hold() == Change(True, added=SYRINGE, kernel="pause", left=(SYRINGE,))
    assert h.syringe_hold().accepted is False
    refused = h.operator_resume(vitals_active=False)
    assert refused == Change(
        False, "held for a syringe change: load the next syringe and answer its question", left=(SYRINGE,)
    )
    h.operator_pause()  # an operator's pause during the change stays after it
    assert h.syringe_release() == Change(True, released=(SYRINGE,), left=(OPERATOR,))
    assert h.syringe_release().accepted is False
    assert h.operator_resume(vitals_active=False).kernel == "resume"


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="'clinician' or 'auto'"):
        Holds("sometimes", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resume_after_s"):
        Holds("auto", -1.0)


# ----- any sequence --------------------------------------------------------------------------------

EVENTS = st.one_of(
    st.tuples(st.just("operator_pause")),
    st.tuples(st.just("operator_resume")),
    st.tuples(st.just("vitals"), st.booleans(), st.floats(0.0, 200.0)),
    st.tuples(st.just("limit_hold")),
    st.tuples(st.just("limit_release")),
    st.tuples(st.just("syringe_hold")),
    st.tuples(st.just("syringe_release")),
)


@settings(max_examples=400, derandomize=True)
@given(
    policy=st.sampled_from(["clinician", "auto"]),
    resume_after_s=st.floats(0.0, 300.0),
    events=st.lists(EVENTS, max_size=60),
)
def test_any_sequence_keeps_the_pump_held_by_its_holders_and_only_an_operator_releases_an_operator(
    policy: Any, resume_after_s: float, events: list[tuple[Any, ...]]
) -> None:
    h = holds(policy, resume_after_s)
    kernel_paused = False
    vitals_active = False
    now = 0.0
    for event in events:
        before = h.holders
        kind = event[0]
        if kind == "operator_pause":
            change = h.operator_pause()
        elif kind == "operator_resume":
            change = h.operator_resume(vitals_active=vitals_active)
        elif kind == "vitals":
            vitals_active, now = event[1], now + event[2]
            change = h.vitals(active=vitals_active, now_s=now)
        elif kind == "limit_hold":
            change = h.limit_hold()
        elif kind == "syringe_hold":
            change = h.syringe_hold()
        elif kind == "syringe_release":
            change = h.syringe_release()
        else:
            change = h.limit_release()
        after = h.holders
        assert change.left == after
        if kind == "vitals" and change.added is None and not change.released:
            assert change == Change(True, left=after)  # the one built once per set of holders
        # The kernel command keeps the pump paused exactly while someone holds it.
        if change.kernel == "pause":
            assert not before and after and not kernel_paused
            kernel_paused = True
        elif change.kernel == "resume":
            assert before and not after and kernel_paused
            kernel_paused = False
        assert kernel_paused == bool(after)
        # Only an operator's resume releases an operator's pause.
        if OPERATOR in before and OPERATOR not in after:
            assert kind == "operator_resume"
        # Nothing releases the vitals while a condition is active; the clinician policy needs the operator.
        if VITALS in before and VITALS not in after:
            assert not vitals_active
            assert kind == "operator_resume" or (kind == "vitals" and policy == "auto")
        if LIMIT in before and LIMIT not in after:
            assert kind == "limit_release"
        if not change.accepted:
            assert before == after
