"""The operator's keys while ``ketapump session`` runs on a terminal: one key per action, a prompt for
what it needs, and the session engine's command when the prompt is done. An adapter only: every
decision (may the pump be resumed now? is this slower than the plan?) is the engine's, and comes back
as an :class:`~ketapump.clinical.ActionTaken` event the CLI shows.

==========  =============================================  ===========================================
key         action                                         asks for
==========  =============================================  ===========================================
``p``       pause                                          a reason
``r``       resume                                         a reason (optional)
``s``       slow down                                      to how much (``50`` or ``50 %`` of the plan,
                                                           or ``20 mL/h``), a reason
``R``       back to the plan's rate                        a reason (optional)
``x``       stop the infusion                              a reason
``o``       record an observation                          kind, value (optional), note
``m``       record a medication given                      drug, dose, unit, route, reason (optional)
``a``       acknowledge an alarm                           its code (Enter: every alarm), a reason
``l``       the next syringe is loaded (a dose of several  nothing: it answers the session's question
            syringes, when the session asks for it)
==========  =============================================  ===========================================

In a prompt, Enter takes the answer, Backspace deletes, Ctrl-U clears and Esc cancels. Signals stay
for scripts (``SIGUSR1``, ``SIGUSR2``, ``SIGINT``/``SIGTERM``). :class:`KeyPrompter` is the pure part
(fed characters, it issues commands); :class:`TerminalKeys` puts the terminal in cbreak mode and feeds
it from the event loop, restoring the terminal however the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from ketapump.clinical import Session, bedside

#: One prompt: the argument it fills, what it says, and whether Enter alone is an answer.
_Field = tuple[str, str, bool]
_ROUTES = "/".join(bedside.bedside().medication.routes)
_UNITS = "/".join(bedside.bedside().medication.units)
#: The ``l`` key's action: not a command but the answer to the session's syringe-change question.
SYRINGE_LOADED: Final = "syringe_loaded"
#: Each key's action and its prompts.
KEYS: Final[dict[str, tuple[str, tuple[_Field, ...]]]] = {
    "p": ("pause", (("reason", "pause: reason", False),)),
    "r": ("resume", (("reason", "resume: reason (Enter: none)", True),)),
    "s": ("slow", (("to", "slow to (% of the plan, or N mL/h)", False), ("reason", "slow: reason", False))),
    "R": ("restore_rate", (("reason", "back to the plan's rate: reason (Enter: none)", True),)),
    "x": ("stop", (("reason", "STOP the infusion: reason (Esc: cancel)", False),)),
    "o": (
        "record_observation",
        (
            ("kind", f"observation: kind ({', '.join(bedside.bedside().kinds)})", False),
            ("value", "value on its scale (Enter: none)", True),
            ("note", "note (Enter: none)", True),
        ),
    ),
    "m": (
        "give_medication",
        (
            ("drug", "medication: drug", False),
            ("dose", "dose", False),
            ("unit", f"unit ({_UNITS})", False),
            ("route", f"route ({_ROUTES})", False),
            ("reason", "reason (Enter: none)", True),
        ),
    ),
    "a": (
        "acknowledge",
        (
            ("alarm", "acknowledge: alarm code (Enter: every alarm)", True),
            ("reason", "reason (Enter: none)", True),
        ),
    ),
    "l": (SYRINGE_LOADED, ()),
}
HELP: Final = (
    "keys: p pause · r resume · s slow · R plan rate · x stop · o observation · m medication · a ack"
    " · l syringe loaded"
)
_ESC, _ENTER, _BACKSPACE, _CLEAR = "\x1b", ("\r", "\n"), ("\x7f", "\b"), "\x15"
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%|ml/h)?\s*$", re.IGNORECASE)


def slow_target(text: str) -> dict[str, float]:
    """``50``, ``50 %`` → 50 % of the plan; ``20 mL/h`` → at most 20 mL/h. ``ValueError`` otherwise."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a percentage (50 or 50 %) or a rate (20 mL/h)")
    value, unit = float(match.group(1)), (match.group(2) or "%").lower()
    return {"to_rate_ml_h": value} if unit == "ml/h" else {"to_fraction": value / 100.0}


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r} is not a number") from None


@dataclass
class KeyPrompter:
    """Keystrokes in, session commands out (see the module docstring). ``on_change`` is called whenever
    :attr:`prompt` or :attr:`message` changes, so the face can redraw."""

    session: Session
    operator: str | None = None
    on_change: Callable[[], None] = lambda: None
    #: The last outcome to show (a command sent, or why it could not be).
    message: str = ""
    _key: str | None = None
    _answers: dict[str, str] = field(default_factory=dict)
    _buffer: str = ""

    @property
    def prompt(self) -> str:
        """The line to show: the open prompt with what is typed so far, or the keys' help."""
        if self._key is None:
            return HELP
        _action, fields = KEYS[self._key]
        return f"{fields[len(self._answers)][1]}: {self._buffer}▌"

    def feed(self, text: str) -> None:
        """Takes what the terminal read (one or more characters)."""
        for ch in text:
            self._char(ch)
        self.on_change()

    def _char(self, ch: str) -> None:
        if self._key is None:
            if ch in KEYS:
                self._key, self._answers, self._buffer, self.message = ch, {}, "", ""
                if not KEYS[ch][1]:  # nothing to ask: act at once
                    self._take()
            return
        if ch == _ESC:
            self.message = f"{KEYS[self._key][0]} cancelled"
            self._key = None
        elif ch in _ENTER:
            self._take()
        elif ch in _BACKSPACE:
            self._buffer = self._buffer[:-1]
        elif ch == _CLEAR:
            self._buffer = ""
        elif ch.isprintable():
            self._buffer += ch

    def _take(self) -> None:
        assert self._key is not None
        action, fields = KEYS[self._key]
        if action == SYRINGE_LOADED:
            self._key = None
            self._syringe_loaded()
            return
        name, _text, optional = fields[len(self._answers)]
        if not self._buffer.strip() and not optional:
            self.message = f"{name} is needed (Esc: cancel)"
            return
        self._answers[name] = self._buffer.strip()
        self._buffer = ""
        if len(self._answers) < len(fields):
            return
        self._key = None
        try:
            self.session.command(action, source="keys", operator=self.operator, **self._arguments(action))
        except ValueError as e:
            self.message = f"{action} not sent: {e}"
            return
        self.message = f"{action} sent"

    def _syringe_loaded(self) -> None:
        """Answers the syringe change the session waits on: the operator has loaded the next syringe."""
        waiting = [q for q in self.session.pending_questions() if q.kind == "syringe_change"]
        if not waiting:
            self.message = "no syringe change is waiting"
            return
        question = waiting[0]
        if self.session.answer(question.question_id, True, source="keys", operator=self.operator):
            self.message = f"{question.subject} loaded: sent"
        else:
            self.message = "the syringe change was already answered"

    def _arguments(self, action: str) -> dict[str, Any]:
        """The command's arguments from the answers (``ValueError`` for one that is not a number)."""
        answers = dict(self._answers)
        args: dict[str, Any] = {"reason": answers.pop("reason", "")}
        if action == "slow":
            args |= slow_target(answers.pop("to"))
        if action == "record_observation":
            value = answers.pop("value")
            args |= {"value": _number(value, "value") if value else None}
        if action == "give_medication":
            args |= {"dose": _number(answers.pop("dose"), "dose")}
        if action == "acknowledge":
            args |= {"alarm": answers.pop("alarm") or None}
        return args | answers


class TerminalKeys:
    """Feeds a :class:`KeyPrompter` from the terminal on ``stdin`` while the session's event loop runs
    (cbreak mode: keys without Enter, no echo, Ctrl-C still a signal); restores the terminal on exit.
    Does nothing when ``stdin`` is not a terminal."""

    def __init__(self, prompter: KeyPrompter, loop: asyncio.AbstractEventLoop) -> None:
        self.prompter = prompter
        self.loop = loop
        self._fd: int | None = None
        self._saved: list[Any] | None = None

    @staticmethod
    def available() -> bool:
        return sys.stdin is not None and sys.stdin.isatty()

    def __enter__(self) -> TerminalKeys:
        if not self.available():
            return self
        fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
        self._fd = fd
        self.loop.add_reader(fd, self._read)
        return self

    def _read(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 256)
        except OSError:
            data = b""
        if not data:  # the terminal went away: stop listening, the session goes on
            self.loop.remove_reader(self._fd)
            return
        self.prompter.feed(data.decode("utf-8", errors="ignore"))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is None or self._saved is None:
            return
        self.loop.remove_reader(self._fd)
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        self._fd = None


@contextlib.contextmanager
def operator_keys(
    session: Session, loop: asyncio.AbstractEventLoop, operator: str | None, on_change: Callable[[], None]
) -> Iterator[KeyPrompter | None]:
    """The keys for ``session`` while the block runs, or ``None`` when ``stdin`` is not a terminal."""
    if not TerminalKeys.available():
        yield None
        return
    prompter = KeyPrompter(session, operator, on_change)
    with TerminalKeys(prompter, loop):
        yield prompter


__all__ = ["HELP", "KEYS", "KeyPrompter", "TerminalKeys", "operator_keys", "slow_target"]
