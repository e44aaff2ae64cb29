"""The operator's keys during ``ketapump session``: the prompter turning keystrokes into the engine's
commands, and a real session on a pseudo-terminal where ``s``, a target and a reason slow the pump."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from ketapump.cli.keys import HELP, KeyPrompter, slow_target
from ketapump.clinical.commands import OperatorCommand, make_command
from ketapump.clinical.session import Question
from sessionhelpers import short_observation_protocol
from simhelpers import new_course_db

EXIT_INTERLOCK = 3


class Commands:
    """Stands in for the session where the prompter hands its commands over: each is checked exactly
    as :meth:`Session.command` checks it, and kept."""

    def __init__(self) -> None:
        self.sent: list[OperatorCommand] = []

    def command(
        self, action: str, reason: str = "", *, source: Any, operator: str | None, **args: Any
    ) -> None:
        self.sent.append(make_command(action, reason, source=source, operator=operator, **args))


class Asking(Commands):
    """A stand-in session with questions pending; :meth:`answer` keeps what it was told."""

    def __init__(self, *questions: Question) -> None:
        super().__init__()
        self.questions = list(questions)
        self.answered: list[tuple[str, object, str, str | None]] = []

    def pending_questions(self) -> list[Question]:
        return list(self.questions)

    def answer(self, question_id: str, value: object, *, source: str, operator: str | None) -> bool:
        self.answered.append((question_id, value, source, operator))
        self.questions = [q for q in self.questions if q.question_id != question_id]
        return True


def prompter() -> tuple[KeyPrompter, Commands]:
    commands = Commands()
    return KeyPrompter(commands, "nurse K"), commands  # type: ignore[arg-type]


def test_each_key_asks_for_what_its_command_needs_and_sends_it() -> None:
    keys, commands = prompter()
    assert keys.prompt == HELP
    keys.feed("s")
    assert keys.prompt.startswith("slow to (% of the plan, or N mL/h): ")
    keys.feed("50\r")
    assert keys.prompt.startswith("slow: reason: ")
    keys.feed("nauseaa\x7f\r")  # a typo, deleted
    keys.feed("o")
    keys.feed("nausea\r2\rqueasy\r")
    keys.feed("m")
    keys.feed("ondansetron\r4\rmg\riv\rnausea\r")
    keys.feed("p")
    keys.feed("panic\r")
    keys.feed("r\r")  # a resume's reason is optional
    keys.feed("R\r")
    keys.feed("a\r\r")  # every alarm
    keys.feed("s20 mL/h\rhigh BP\r")
    keys.feed("xpatient asked\r")
    sent = [(c.action, c.reason, dict(c.args), c.source, c.operator) for c in commands.sent]
    assert sent == [
        ("slow", "nausea", {"to_fraction": 0.5}, "keys", "nurse K"),
        ("record_observation", "", {"kind": "nausea", "value": 2.0, "note": "queasy"}, "keys", "nurse K"),
        ("give_medication", "nausea", {"drug": "ondansetron", "dose": 4.0, "unit": "mg", "route": "iv"},
         "keys", "nurse K"),
        ("pause", "panic", {}, "keys", "nurse K"),
        ("resume", "", {}, "keys", "nurse K"),
        ("restore_rate", "", {}, "keys", "nurse K"),
        ("acknowledge", "", {}, "keys", "nurse K"),
        ("slow", "high BP", {"to_rate_ml_h": 20.0}, "keys", "nurse K"),
        ("stop", "patient asked", {}, "keys", "nurse K"),
    ]  # fmt: skip
    assert keys.message == "stop sent" and keys.prompt == HELP


def test_escape_cancels_a_required_answer_is_insisted_on_and_a_bad_one_is_not_sent() -> None:
    keys, commands = prompter()
    keys.feed("x\r")
    assert keys.message == "reason is needed (Esc: cancel)" and keys.prompt.startswith("STOP")
    keys.feed("\x1b")
    assert keys.message == "stop cancelled" and keys.prompt == HELP
    keys.feed("sfast\r")
    keys.feed("why\r")
    assert keys.message.startswith("slow not sent: 'fast' is not a percentage")
    keys.feed("s150\rreason\r")
    assert keys.message.startswith("slow not sent: to_fraction must be between 0 and 1")
    keys.feed("ohunger\r3\r\r")
    assert keys.message.startswith("record_observation not sent: unknown observation kind 'hunger'")
    keys.feed("q z")  # not a key: ignored
    assert commands.sent == [] and keys.prompt == HELP


@pytest.mark.parametrize(
    ("text", "args"),
    [("50", {"to_fraction": 0.5}), ("50 %", {"to_fraction": 0.5}), ("26.25 mL/h", {"to_rate_ml_h": 26.25})],
)
def test_a_slow_target_is_a_percentage_or_a_rate(text: str, args: dict[str, float]) -> None:
    assert slow_target(text) == args


def test_l_answers_the_syringe_change_the_session_waits_on_and_nothing_else() -> None:
    checklist = Question("q1", "checklist", "discharge", "sitter present")
    change = Question("q2", "syringe_change", "syringe 2", "load syringe 2 of 2")
    session = Asking(checklist, change)
    keys = KeyPrompter(session, "nurse K")  # type: ignore[arg-type]
    keys.feed("l")
    assert session.answered == [("q2", True, "keys", "nurse K")]  # not the checklist item
    assert keys.message == "syringe 2 loaded: sent" and keys.prompt == HELP
    keys.feed("l")  # nothing is waiting now: nothing is answered, and the operator is told
    assert session.answered == [("q2", True, "keys", "nurse K")]
    assert keys.message == "no syringe change is waiting" and session.sent == []


@contextlib.contextmanager
def on_terminal(args: list[str]) -> Iterator[tuple[pexpect.spawn, io.StringIO]]:
    """``python args`` on a pseudo-terminal (40×200): the child and what the terminal showed so far. A
    failed expectation is an AssertionError that shows the screen; the child is closed however it ends."""
    child = pexpect.spawn(sys.executable, args, dimensions=(40, 200), encoding="utf-8", timeout=120)
    screen = io.StringIO()
    child.logfile_read = screen  # what the terminal showed, for a failure's message
    try:
        yield child, screen
    except pexpect.ExceptionPexpect as e:
        raise AssertionError(
            f"{e.__class__.__name__}; the terminal showed:\n{screen.getvalue()[-4000:]}"
        ) from e
    finally:
        child.close(force=True)


# ----- on a real terminal ----------------------------------------------------------------------------


def test_pressing_s_and_typing_a_reason_slows_the_running_pump_on_a_real_terminal(tmp_path: Path) -> None:
    log, db = tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3")
    protocol = short_observation_protocol(tmp_path)
    # 30× real time on the simulator (a short transport timeout keeps the pump's watchdog inside its limit
    # at that scale, with margin for a busy machine); the session's clock follows the pump.
    args = [
        "-m", "ketapump", "session", "--protocol", str(protocol), "--pump", "sim://?timeout=0.05",
        "--time-scale", "30", "--patient", "p-keys", "--weight-kg", "70", "--yes", "--operator", "nurse K",
        "--course-db", str(db), "--log", str(log), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    with on_terminal(args) as (child, screen):
        # The session's chair card: past the take-up, at the plan's rate.
        child.expect(r"[1-9]\.\d\d of 35\.00 mL\)")
        child.expect(r"52\.5 mL/h programmed")
        child.send("s")
        child.expect(r"slow to \(% of the plan, or N mL/h\)")
        child.send("50\r")
        child.expect("slow: reason")
        child.send("nausea\r")
        child.expect(r"26\.2 mL/h \(slowed\)")  # the rate on the screen drops
        child.expect("slow by nurse K \\(keys\\): done")
        time.sleep(0.5)  # a few pump seconds at the slowed rate
        child.send("x")
        child.expect("STOP the infusion")
        child.send("enough for today\r")
        child.expect(pexpect.EOF, timeout=120)
    assert child.exitstatus == EXIT_INTERLOCK, screen.getvalue()[-4000:]
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    (slowed,) = [r for r in records if r["event"] == "rate_changed" and "operator" in r["reason"]]
    assert slowed["rate_ml_h"] == 26.25 and slowed["reason"] == "operator slowed to 50 % of the plan: nausea"
    actions = [
        (r["action"], r["source"], r["operator"], r["reason"])
        for r in records
        if r["event"] == "operator_action"
    ]
    assert actions == [("slow", "keys", "nurse K", "nausea"), ("stop", "keys", "nurse K", "enough for today")]
    # The pump was told about half the plan's rate from the slow-down to the stop: every command the
    # kernel sent is the slowed rate with its quiet controller's trim for real-time jitter (within a
    # quarter of it), far below the plan's 52.5 mL/h.
    stop = next(i for i, r in enumerate(records) if r["event"] == "operator_stop_requested")
    commanded = [
        r["rate_ml_h"]
        for r in records[records.index(slowed) : stop]
        if r["event"] == "command" and r["direction"] == "forward"
    ]
    assert commanded and all(c == pytest.approx(26.25, rel=0.25) for c in commanded), commanded
    assert (tmp_path / "out" / "report.md").exists()


def test_a_dose_of_two_syringes_waits_at_the_change_for_the_l_key_on_a_real_terminal(tmp_path: Path) -> None:
    """134 kg at 1 mg/mL: 67 mL, two syringes. On a terminal in scaled time nobody confirms the change in
    advance (--yes confirms only the checklists): the session pauses after the first syringe's share
    and waits, the card asks, and the key l tells it the next syringe is loaded."""
    log, db = tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3")
    args = [
        "-m", "ketapump", "session", "--protocol", str(short_observation_protocol(tmp_path)),
        "--pump", "sim://?timeout=0.05", "--time-scale", "30", "--patient", "p-134", "--weight-kg", "134",
        "--yes", "--operator", "nurse K", "--confirm", "vtbi_ml=large patient, reviewed",
        "--confirm", "syringe_fill_ml=two syringes drawn up", "--course-db", str(db), "--log", str(log),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    with on_terminal(args) as (child, screen):
        child.expect("syringe 2")  # the card shows the question; the pump is paused for the change
        time.sleep(1.0)  # it waits: a few pump seconds pass with nothing answered
        child.send("l")
        child.expect("syringe 2 loaded: sent")
        child.expect(r"[1-9]\d\.\d\d of 67\.00 mL\)")  # delivering again, past the first share's start
        child.send("x")
        child.expect("STOP the infusion")
        child.send("test over\r")
        child.expect(pexpect.EOF, timeout=120)
    assert child.exitstatus == EXIT_INTERLOCK, screen.getvalue()[-4000:]
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    (answered,) = [
        r for r in records if r["event"] == "question_answered" and r.get("question") == "syringe_change"
    ]
    assert (answered["answer"], answered["operator"], answered["source"]) == (True, "nurse K", "keys")
    transitions = [r for r in records if r["event"] == "state_transition"]
    causes = [r["cause"] for r in transitions]
    i = causes.index("change_syringe")
    assert causes[i - 1 : i + 3] == ["pause", "change_syringe", "syringe_loaded", "resume"]
    # The pump stayed in the change until the key: at least the second the test waited.
    waited_ns = answered["mono_ns"] - transitions[i]["mono_ns"]
    assert waited_ns >= 1e9 and records.index(transitions[i]) < records.index(answered)
