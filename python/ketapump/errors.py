"""The ketapump exception hierarchy, organised by the phase in which a failure happens.

Every error ketapump raises, whether from Python or from the Rust core, is one of these. The Rust core
maps its errors through one function (``rust/src/errors.rs``) onto this module's classes.

::

    KetapumpError (Exception)
    ├── ConfigurationError (+ ValueError)        bad configuration, program or rate; names the field
    │   └── LimitError                            an order outside its drug's limits; lists every finding
    │       ├── LimitRefused                      a hard limit: refused, re-program
    │       └── ConfirmationRequired              a soft limit not confirmed with a reason
    ├── StateTransitionError (+ RuntimeError)     operator command not valid in the current state
    ├── InterlockError (+ RuntimeError)           a command was refused and latched a safety alarm
    ├── TransportError (+ OSError)                the pump could not be reached or answered wrongly
    │   └── PumpTimeoutError (+ TimeoutError)     no answer within the timeout; names the endpoint
    ├── AuditWriteError (+ OSError)               the audit log could not be written; names the file
    └── CourseError (+ ValueError)                a course-history write refused; names the record
        ├── CourseRecordNotFoundError (+ LookupError)  no such patient, session or database file
        └── CourseStorageError                    the database cannot be read or written (read-only, full…)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol


class Finding(Protocol):
    """What a limit error needs of a finding (:class:`ketapump.clinical.druglib.LimitFinding` is one):
    its kind (what ``KIND=REASON`` confirms), its severity and a message a person can act on. Declared
    here so the floor never imports the clinical layer."""

    @property
    def kind(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def message(self) -> str: ...


def finding_line(finding: Finding) -> str:
    """One finding as a refusal lists it: a hard one as it is, a soft one with the kind a reason confirms
    (``… [soft: confirm as vtbi_ml=REASON]``)."""
    if finding.severity == "soft":
        return f"{finding.message} [soft: confirm as {finding.kind}=REASON]"
    return f"{finding.message} [hard]"


class KetapumpError(Exception):
    """Base class of every ketapump error."""


class ConfigurationError(KetapumpError, ValueError):
    """A configuration value, program or rate was refused.

    ``field`` names the offending setting exactly as it is spelled in the configuration;
    ``problem`` says why (``"must be a finite number"``, ``"is above the hard limit max_rate_ml_h"``…);
    ``value`` is the refused value and ``limit`` the limit it broke, when there are numbers to name (the
    Rust core passes both), so the message reads ``rate_ml_h 1000 is above the hard limit max_rate_ml_h
    (120)``.
    """

    def __init__(
        self, field: str, problem: str, value: float | None = None, limit: float | None = None
    ) -> None:
        self.value = value
        self.limit = None if limit is None or math.isnan(limit) else limit
        named = field if value is None else f"{field} {_number(value)}"
        bound = "" if self.limit is None else f" ({_number(self.limit)})"
        super().__init__(f"{named} {problem}{bound}")
        self.field = field
        self.problem = problem


def _number(value: float) -> str:
    """A number as a message shows it: up to 6 significant digits (``120``, ``0.1``, ``1e-09``)."""
    return f"{value:.6g}"


class LimitError(ConfigurationError):
    """An order is outside its drug's limits (checked by the Rust core, :mod:`ketapump.clinical.druglib`).

    ``findings`` holds every finding concerned, ``problems`` their human messages; ``also`` the order's
    other findings (a refusal by a hard limit still lists the soft ones it will need confirmed), so the
    message lists every finding, hard ones first, each soft one with its kind; ``field`` is ``"order"``.
    """

    def __init__(self, problem: str, findings: Sequence[Finding], also: Sequence[Finding] = ()) -> None:
        self.findings: tuple[Finding, ...] = tuple(findings)
        self.also: tuple[Finding, ...] = tuple(also)
        self.problems = [f.message for f in self.findings]
        lines = [finding_line(f) for f in (*self.findings, *self.also)]
        super().__init__("order", f"{problem}:\n  " + "\n  ".join(lines))


class LimitRefused(LimitError):  # noqa: N818 (the name the orchestrator and docs use)
    """A hard limit was crossed: the order is refused and must be re-programmed; every hard finding is
    listed. No confirmation can lift it."""

    def __init__(self, findings: Sequence[Finding], also: Sequence[Finding] = ()) -> None:
        n = len(findings)
        super().__init__(f"is refused by {n} hard limit{'s' if n != 1 else ''}", findings, also)


class ConfirmationRequired(LimitError):  # noqa: N818 (ditto)
    """Soft limits were crossed and not confirmed: the order proceeds only once each is confirmed with
    a reason (a blank reason is not a reason). Every unconfirmed soft finding is listed."""

    def __init__(self, findings: Sequence[Finding]) -> None:
        n = len(findings)
        super().__init__(
            f"needs a confirmation with a reason for {n} soft limit{'s' if n != 1 else ''}", findings
        )


class StateTransitionError(KetapumpError, RuntimeError):
    """An operator command is not valid in the kernel's current state (``why``, when the state alone
    does not say: a start before the plunger's position is known); nothing changed."""

    def __init__(self, state: str, command: str, why: str = "") -> None:
        super().__init__(f"cannot {command} while {state}" + (f": {why}" if why else ""))
        self.state = state
        self.command = command
        self.why = why


class InterlockError(KetapumpError, RuntimeError):
    """A command was refused and latched a safety alarm; the pump is stopped until acknowledged."""

    def __init__(self, alarm: str, detail: str) -> None:
        super().__init__(f"interlock {alarm}: {detail}")
        self.alarm = alarm
        self.detail = detail


class TransportError(KetapumpError, OSError):
    """The pump could not be reached, or answered with something that is not a valid reply."""

    def __init__(self, endpoint: str, detail: str) -> None:
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint
        self.detail = detail


class PumpTimeoutError(TransportError, TimeoutError):
    """The pump did not answer within the timeout."""


class AuditWriteError(KetapumpError, OSError):
    """The audit log could not be written durably; the bridge must stop the pump.

    An infusion that continues without its audit trail cannot be reconstructed afterwards, so a failed
    write is a safety event, not a logging hiccup. ``path`` is the audit file, ``detail`` the cause.
    The writer that raised it refuses every further write (the failure is sticky).
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"audit log {path}: {detail}")
        self.path = path
        self.detail = detail


class CourseError(KetapumpError, ValueError):
    """The course history refused a write or a query: a late journal note, a session ended twice, a naive
    timestamp… Nothing was written. ``subject`` names the record (``"session s-1"``, ``"patient p-7"``, the
    database file), ``problem`` says why.
    """

    def __init__(self, subject: str, problem: str) -> None:
        super().__init__(f"{subject}: {problem}")
        self.subject = subject
        self.problem = problem


class CourseRecordNotFoundError(CourseError, LookupError):
    """The patient, session or course database named does not exist."""


class CourseStorageError(CourseError):
    """The course database could not be read or written: a read-only file or file system, a full disk,
    an I/O error, a write lock held too long. The data is not at fault; ``subject`` names the file."""
