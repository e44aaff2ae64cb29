"""The session engine over several syringes, on the simulated pump (virtual time).

The standard protocol at 0.5 mg/mL gives the 70 kg patient 70 mL: two 60 mL syringes. The simulated
pump holds 40 mL a syringe (``run_session``'s pump), so each syringe's share (35 mL) fits it and the
second one must really be loaded (``fault_load_syringe``) for the dose to be given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ketapump.clinical.protocol import load_protocol
from ketapump.clinical.session import PENDING, Question, ScriptedOperator
from test_session import OPERATOR, _toml, run_session

REASONS = {
    "vtbi_ml": "reviewed",
    "syringe_fill_ml": "two syringes drawn up",
    "concentration_mg_per_ml": "half strength on purpose (test)",
}


def _half_strength() -> str:
    document = load_protocol("ketamine-depression").model_dump()
    document["drug"]["concentration_mg_per_ml"] = 0.5
    document["name"] = "half-strength"
    return _toml(document)


def _transitions(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["from_state"], e["to_state"], e["cause"]) for e in events if e["event"] == "state_transition"]


def test_a_dose_of_two_syringes_is_given_whole_with_the_change_recorded(tmp_path: Path) -> None:
    run = run_session(tmp_path, protocol=_half_strength(), operator=ScriptedOperator(reasons=REASONS))
    r = run.result
    assert r is not None, run.error
    assert r.outcome == "complete" and r.alarms == []
    assert math.isclose(r.delivered_mg, 35.0, rel_tol=0.02)
    assert math.isclose(r.delivered_ml, 70.0, rel_tol=0.02)
    (change,) = r.syringe_changes
    assert change | {"syringe": 2, "of": 2, "by": OPERATOR, "simulated": True} == change
    assert math.isclose(change["delivered_ml"], 35.0, abs_tol=0.1)
    transitions = _transitions(run.events)
    assert ("paused", "syringe_change", "change_syringe") in transitions
    assert ("syringe_change", "paused", "syringe_loaded") in transitions
    assert ("paused", "running", "resume") in transitions
    assert [t[2] for t in transitions].count("take_up_done") == 2
    # The hold was the syringe's, and the change an action on the session's record.
    holds = [e["holders"] for e in run.named("hold_changed")]
    assert ("syringe",) in holds and holds[-1] == ()
    assert any(a["action"] == "syringe_change" and a["actor"] == "protocol" for a in r.actions)
    assert [e["question"] for e in run.named("question_answered")].count("syringe_change") == 1


def test_declining_the_next_syringe_stops_the_infusion_there(tmp_path: Path) -> None:
    operator = ScriptedOperator(reasons=REASONS, syringe_changes=False)
    run = run_session(tmp_path, protocol=_half_strength(), operator=operator)
    r = run.result
    assert r is not None, run.error
    assert r.outcome == "ended_syringe_change"
    assert math.isclose(r.delivered_ml, 35.0, abs_tol=0.2)
    assert r.syringe_changes == []
    assert ("syringe_change", "stopped", "stop") in _transitions(run.events)
    assert run.named("syringe_change_declined")


class _AwayFromTheChair(ScriptedOperator):
    """Never answers the syringe question: it waits (as on a console card) until the stop."""

    def answer(self, question: Question) -> Any:
        return PENDING if question.kind == "syringe_change" else super().answer(question)


def test_a_stop_while_the_syringe_is_being_changed_ends_the_infusion(tmp_path: Path) -> None:
    # 70 mL over 40 min: the first syringe's 35 mL is in after 20 min; the stop comes 5 min later.
    operator = _AwayFromTheChair(reasons=REASONS, scheduled=[(25 * 60.0, "stop", "patient unwell")])
    run = run_session(tmp_path, protocol=_half_strength(), operator=operator)
    r = run.result
    assert r is not None, run.error
    assert r.outcome == "ended_operator"
    assert math.isclose(r.delivered_ml, 35.0, abs_tol=0.2)
    assert ("syringe_change", "stopped", "stop") in _transitions(run.events)
    assert r.syringe_changes == []
    assert r.observation_min >= 30.0  # the session still observes and records
