"""A protocol-driven session from Python: the session engine of ``ketapump session``
(:class:`~ketapump.clinical.Session`) with its records (audit log, course history, report), opened by
the same validation every face uses (:func:`~ketapump.clinical.prepare_session`)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ketapump.clinical import (
    CourseHistory,
    Operator,
    Patient,
    Question,
    ScriptedOperator,
    SessionEvent,
    SessionOutcome,
    SessionRunner,
    Sitter,
    VitalsFeed,
    prepare_session,
)
from ketapump.clinical import Session as Engine

Answer = bool | str | None


def init_course(path: str | os.PathLike[str]) -> Path:
    """Creates a new, empty course database at ``path`` (``ketapump course init PATH``): a session
    records into an existing one only. An existing file is refused and left as it is
    (:class:`~ketapump.errors.CourseError`)."""
    with CourseHistory.create(path, at=datetime.datetime.now(datetime.UTC)) as history:
        return history.path


class Session:
    """One clinical session: validated and its records opened when built, run by :meth:`run` (or
    :meth:`run_async`). Commands (:meth:`pause`, :meth:`resume`, :meth:`stop`, :meth:`acknowledge`,
    :meth:`answer`) may be given before or while it runs, from a subscriber or from the same event loop;
    each is carried out at the next control tick and answered by an ``ActionTaken`` event.

    ``vitals`` is ``"sim"`` (the demo patient's scripted monitor), ``"sim:SCRIPT.toml"``,
    ``"csv:PATH"``, or a feed object (:class:`~ketapump.CallbackVitalsFeed` for a monitor your code
    reads). ``operator_name`` is the person responsible (required unless the protocol allows anonymous
    QA runs). ``course_db`` is an existing course database (:func:`init_course` creates one).
    ``operator`` answers the session's questions (default: a :class:`~ketapump.ScriptedOperator`
    that confirms every checklist item and declines every soft limit). ``time_scale=None`` runs a
    ``sim://`` pump in virtual time (a 40-minute session in seconds). ``sitter`` (name and phone) is who
    takes the patient home: the discharge asks that they are present, and is not confirmed without one.

    Raises :class:`~ketapump.errors.ConfigurationError` for anything invalid (protocol, patient, URL,
    feed) before anything is written, ``OSError`` when a record cannot be opened.
    """

    def __init__(
        self,
        protocol: str,
        patient: Patient,
        *,
        pump: str = "sim://",
        vitals: str | VitalsFeed = "sim",
        operator: Operator | None = None,
        library: str | os.PathLike[str] | None = None,
        course_db: str | os.PathLike[str] | None = None,
        log: str | os.PathLike[str] | None = None,
        out: str | os.PathLike[str] = "ketapump-session",
        time_scale: float | None = None,
        operator_name: str | None = None,
        sitter: Sitter | None = None,
    ) -> None:
        setup = prepare_session(
            protocol=protocol,
            patient=patient,
            operator=operator or ScriptedOperator(),
            pump=pump,
            vitals=vitals if isinstance(vitals, str) else "sim",
            library=Path(library) if library is not None else None,
            course_db=Path(course_db) if course_db is not None else None,
            log=Path(log) if log is not None else None,
            out=Path(out),
            time_scale=time_scale,
            operator_name=operator_name,
            sitter=sitter,
        )
        if not isinstance(vitals, str):
            setup = dataclasses.replace(setup, vitals=vitals)
        self._runner = SessionRunner.open(setup)
        self._ran = False
        #: The engine itself (its events, phases and results), for what this wrapper does not forward.
        self.engine: Engine = self._runner.session
        self.session_id: str = setup.session_id

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def subscribe(self, subscriber: Callable[[SessionEvent], None]) -> Callable[[], None]:
        """Calls ``subscriber`` with every event from now on; returns the function that unsubscribes."""
        return self.engine.subscribe(subscriber)

    def pause(self, reason: str, *, operator: str | None = None) -> None:
        self.engine.pause(reason, source="api", operator=operator)

    def resume(self, reason: str = "", *, operator: str | None = None) -> None:
        self.engine.resume(reason, source="api", operator=operator)

    def stop(self, reason: str, *, operator: str | None = None) -> None:
        self.engine.stop(reason, source="api", operator=operator)

    def acknowledge(self, reason: str = "", *, operator: str | None = None) -> None:
        self.engine.acknowledge(reason, source="api", operator=operator)

    def answer(self, question_id: str, value: Answer) -> bool:
        """Answers a pending question (:class:`~ketapump.QuestionAsked`); False if it is not pending."""
        return self.engine.answer(question_id, value, source="api")

    def pending_questions(self) -> list[Question]:
        return self.engine.pending_questions()

    async def run_async(self) -> SessionOutcome:
        """Runs the session to its end and writes the report; closes the records whatever happens.
        Raises what the engine raises before anything is delivered (``LimitRefused``,
        ``ConfirmationRequired``, ``SessionAbortedError``) and ``TransportError``."""
        if self._ran:
            raise RuntimeError(f"session {self.session_id} has already run")
        self._ran = True
        return await self._runner.run()

    def run(self) -> SessionOutcome:
        """:meth:`run_async`, blocking (in a new event loop)."""
        return asyncio.run(self.run_async())

    def close(self) -> None:
        """Closes the records of a session that will not run (after :meth:`run` they are closed)."""
        if not self._ran:
            self._ran = True
            self._runner.close()
