"""The audit log: a durable, hash-chained record of everything the bridge commanded, saw and decided.

The bridge records every command (intent, before acting), acknowledgement (outcome, after acting), state
transition, alarm, operator action and a periodic telemetry summary. After an incident this file is the
only account of what the software did, so it must survive a crash and reveal tampering or damage:

* **Durable.** Each record is written, flushed and ``os.fsync``-ed before :meth:`AuditWriter.write`
  returns; the directory is fsync-ed after a file is created so the file itself survives a power cut.
  structlog's own loggers flush but never fsync, which is why the last step goes through our writer.
* **Group commit.** Inside :func:`record_group` (the control loop opens one per tick) records are
  chained at once but held in memory, and :meth:`RecordGroup.commit` writes them with one ``write`` and
  one ``fsync`` — the loop commits before it commands the pump, so whatever the pump was told is on disk
  first, and a crash loses at most the records of the tick in progress (none of which was acted on,
  except a stop: stop first, log second). The format is the same line for line, so :func:`verify`
  checks a group-committed file exactly like any other.
* **Fail-safe.** Any ``OSError`` while writing raises :class:`~ketapump.errors.AuditWriteError`; the
  bridge stops the pump when it sees one, and the writer refuses every later write (sticky failure) so a
  half-working log can never silently continue with a hole in it.
* **One chain per file.** Every record carries ``seq``, ``prev`` (the previous record's hash) and
  ``hash = sha256(prev + canonical_json(record without hash and mac))``. Two writers on one file would
  fork the chain, so :meth:`AuditWriter.open` returns one shared instance per real path (and an advisory
  ``flock`` keeps a second process out). A new file starts with a ``log_opened`` record carrying the
  previous file's final hash, which chains files across rotation, and ends with a ``log_closed`` record
  when the writer closes it.
* **Keyed.** Every record also carries ``mac = HMAC-SHA256(key, hash)`` with the installation's audit key
  (:mod:`ketapump.bridge.auditkey`), which is not in the log: a record edited and re-chained, or forged
  and appended with its hash recomputed, fails its MAC. ``log_opened`` names the key (``key_id``).
* **A full disk loses no evidence silently.** A write that fails part-way is cut back to the last whole
  record, and the writer marks the end it reached: an ``audit_write_failed`` record (the lost record's
  event and the error) and ``log_closed``, written into space reserved beyond the end of the file before
  each record (``fallocate`` without changing the size, where the file system supports it). The log then
  verifies up to its marked end.
* **Verifiable.** :func:`verify` recomputes every hash and MAC and names the first bad line and what is
  wrong with it (:class:`VerifyResult`: ``edited``, ``forged``, ``reordered``, ``truncated``,
  ``closing_missing``…); the ``ketapump log verify FILE`` command (:mod:`ketapump.cli.log`) exposes it with
  sysexits exit codes.

Library diagnostics (pymodbus, asyncio, our transports) are a different stream with different rules —
noisy, lossy and not evidence — and :func:`configure_diagnostics` keeps them out of the audit file.
Nothing here configures logging on import, and structlog is never configured globally: the bridge wires
both explicitly at start-up.

Record layout (one JSON object per line, keys sorted, no spaces)::

    {"event":"rate_set","hash":"…","level":"info","mono_ns":…,"prev":"…","pump_id":"p1","rate_ml_h":5.0,
     "seq":12,"session_id":"s-1","timestamp":"2025-01-01T12:00:00.000000Z"}

``mono_ns`` is ``time.monotonic_ns()``: it orders records within one process run even when the wall clock
steps, but it restarts from an arbitrary origin in every process, so it is not checked across a
``log_reopened`` record.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as _dt
import enum
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Final, Literal, cast

import structlog

from ketapump.bridge.auditkey import AuditKey, AuditKeyError, load_key
from ketapump.errors import AuditWriteError
from ketapump.validation import open_regular_file

__all__ = [
    "CHAINABLE",
    "DIAGNOSTIC_LOGGERS",
    "GENESIS_HASH",
    "MAX_RECORD_BYTES",
    "AuditWriter",
    "RecordGroup",
    "Seal",
    "VerifyResult",
    "audit_logger",
    "canonical_json",
    "configure_diagnostics",
    "read_records",
    "record_group",
    "record_hash",
    "remove_diagnostics",
    "verify",
]

#: ``prev`` of the first record of a file that continues no earlier file.
GENESIS_HASH: Final = "0" * 64

#: Loggers whose stdlib records :func:`configure_diagnostics` routes to the diagnostics stream.
DIAGNOSTIC_LOGGERS: Final = ("pymodbus", "asyncio", "ketapump.transport", "ketapump.sim")

#: The longest line :func:`verify` reads as one record (bytes); a longer one is not a record of ours.
MAX_RECORD_BYTES: Final = 1024 * 1024
#: Space kept allocated beyond the end of the file for the records that mark a failed write (bytes).
MARK_RESERVE_BYTES: Final = 4096

# Keys the writer owns; a caller's field with one of these names would corrupt the chain's bookkeeping.
_RESERVED: Final = frozenset({"timestamp", "seq", "mono_ns", "prev", "hash", "mac"})
# The record a writer adds after a write that failed, and the one it ends every file with.
_WRITE_FAILED: Final = "audit_write_failed"
_CLOSED: Final = "log_closed"
# Stable, greppable event names: a value interpolated into a name (f"set {rate}") breaks every query.
_EVENT_NAME: Final = re.compile(r"[a-z][a-z0-9_]*\Z")
_HEX64: Final = re.compile(r"[0-9a-f]{64}\Z")
_TAIL_BLOCK: Final = 64 * 1024


# --------------------------------------------------------------------------------------------------------
# Canonical form and hashing
# --------------------------------------------------------------------------------------------------------


def canonical_json(obj: object) -> str:
    """The one serialisation the hash is computed over (and each line is written in).

    Sorted keys and no whitespace make it independent of dict insertion order; ``allow_nan=False`` makes
    an unsanitised NaN a loud bug instead of a line that strict JSON parsers reject.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(prev: str, record_without_hash: Mapping[str, object]) -> str:
    """``sha256(prev + canonical_json(record))`` as lowercase hex (the record without ``hash`` and
    ``mac``): the link that chains each record."""
    return hashlib.sha256((prev + canonical_json(record_without_hash)).encode("utf-8")).hexdigest()


def _reserve_space(fd: int, offset: int, length: int) -> bool:
    """Allocates ``[offset, offset + length)`` of the file without changing its size, so appends into it
    cannot fail for want of space. Returns ``False`` where the platform or file system cannot (nothing is
    reserved then); raises ``OSError`` (``ENOSPC``) when the disk is full."""
    if _FALLOCATE is None:
        return False
    if _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV}:
        return False
    raise OSError(err, os.strerror(err))


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """glibc's ``fallocate(2)`` wrapper, or ``None`` where there is none (the os module lacks the
    keep-size mode)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOCATE: Final = _libc_fallocate()


def _finite(value: float) -> object:
    """A JSON-safe stand-in for a float: non-finite values become the strings ``nan``/``inf``/``-inf``.

    A NaN reading is evidence (a sensor failed), so it is kept as a string rather than dropped.
    """
    if math.isfinite(value):
        return float(value)
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _jsonable(value: object) -> object:
    """Reduce ``value`` to plain JSON types whose serialisation survives a parse/serialise round trip.

    The verifier recomputes each hash from the *parsed* line, so whatever the writer hashes must be
    exactly what ``json.loads`` gives back: tuples become lists, keys become strings, non-finite floats
    become strings, lone surrogates are escaped (they cannot be encoded as UTF-8), and anything else is
    written as ``str(value)``.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = str.__str__(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    return _jsonable(str(value))


def _utc_timestamp() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_record(text: str, key: AuditKey) -> tuple[dict[str, Any] | None, str, str]:
    """Parse one line and check it on its own (JSON, fields, own hash, canonical form, MAC).

    Returns ``(record, "", "")`` or ``(None, status, reason)`` with ``status`` ``edited`` (the content
    does not match its hash, or is not a record) or ``forged`` (the hash matches, the MAC does not: it was
    recomputed without the key). Links to neighbouring lines are the caller's job.
    """

    def _no_constants(token: str) -> object:
        raise ValueError(f"{token} is not valid JSON")

    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        return None, "edited", f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return None, "edited", "not a JSON object"
    for name in ("hash", "prev"):
        if not isinstance(obj.get(name), str) or not _HEX64.match(obj[name]):
            return None, "edited", f"missing or malformed {name!r} (expected 64 lowercase hex digits)"
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None, "edited", "missing or malformed 'seq' (expected a non-negative integer)"
    if not isinstance(obj.get("event"), str):
        return None, "edited", "missing or malformed 'event'"
    body = {k: v for k, v in obj.items() if k not in {"hash", "mac"}}
    if record_hash(obj["prev"], body) != obj["hash"]:
        return None, "edited", "hash mismatch: the record was modified after it was written"
    if canonical_json(obj) != text:
        return None, "edited", "not in canonical form: whitespace, key order or escaping was changed"
    mac = obj.get("mac")
    if not isinstance(mac, str) or not _HEX64.match(mac):
        return None, "forged", "forged: no MAC (the record was not written by an audit writer with a key)"
    if not key.verifies(obj["hash"], mac):
        return None, "forged", "forged (bad MAC): the hash was recomputed without the audit key"
    return obj, "", ""


def _read_last_line(fd: int, size: int) -> bytes:
    """The bytes after the last-but-one newline, read backwards so large logs re-open quickly."""
    end = size
    data = b""
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        data = os.pread(fd, end - start, start) + data
        end = start
        # A newline before the final byte ends the previous line: everything after it is the last line.
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0:
            return data[cut + 1 :]
    return data


# --------------------------------------------------------------------------------------------------------
# Group commit
# --------------------------------------------------------------------------------------------------------


class RecordGroup:
    """The records of one unit of work (a control tick), committed together; see :func:`record_group`."""

    def __init__(self) -> None:
        self._writers: list[AuditWriter] = []
        #: False once the group's block has ended: a record written after that (by a task the block
        #: started) is written on its own, never left waiting for a commit that will not come.
        self.open = True

    def _join(self, writer: AuditWriter) -> None:
        if writer not in self._writers:
            self._writers.append(writer)

    def commit(self) -> None:
        """Writes every record buffered so far with one ``write`` and one ``fsync`` per audit file.

        Raises :class:`AuditWriteError` if a file cannot be written (the writer then refuses every later
        write). Records written after a commit are buffered again until the next one.
        """
        for writer in self._writers:
            writer._commit()


_current_group: ContextVar[RecordGroup | None] = ContextVar("ketapump_audit_record_group", default=None)


def record_group() -> _RecordGroupBlock:
    """Group-commits the audit records written in this block (in this thread or asyncio task).

    Every :meth:`AuditWriter.write` inside the block chains its record at once (``seq``, ``prev`` and
    ``hash`` are final) but only buffers it; :meth:`RecordGroup.commit` makes the buffered records
    durable in one ``write`` + ``fsync``, and leaving the block commits the rest. A block inside an open
    group joins it. The caller decides what must be durable before it acts: the control loop commits
    before it commands the pump.
    """
    return _RecordGroupBlock()


class _RecordGroupBlock:
    """:func:`record_group`'s ``with`` block: a plain context manager rather than a generator one, as
    the control loop enters one at every tick."""

    __slots__ = ("_group", "_token")

    def __enter__(self) -> RecordGroup:
        outer = _current_group.get()
        if outer is not None and outer.open:
            self._group, self._token = outer, None  # joined: the outer block commits
            return outer
        group = RecordGroup()
        self._group, self._token = group, _current_group.set(group)
        return group

    def __exit__(self, *_exc: object) -> None:
        token, group = self._token, self._group
        if token is None:
            return
        _current_group.reset(token)
        group.open = False
        group.commit()


# --------------------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------------------


class AuditWriter:
    """The one writer of one audit file: serialises, chains, authenticates and fsyncs every record under
    one lock.

    Obtain it with :meth:`open`, never by calling the class: the registry is what guarantees a single
    chain per file. :meth:`write` is thread-safe; records from all threads form one sequence.
    """

    _registry: ClassVar[dict[str, AuditWriter]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str, fd: int, key: AuditKey, *, seq: int, last_hash: str) -> None:
        """Internal: wrap an already opened, locked fd. Use :meth:`open`."""
        self._path = path
        self._fd = fd
        self._key = key
        self._ino = (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        #: Bytes of whole records in the file: what a failed write is cut back to.
        self._size = os.fstat(fd).st_size
        self._next_seq = seq
        self._last_hash = last_hash
        self._lock = threading.Lock()
        self._failure: AuditWriteError | None = None
        self._closed = False
        #: Records chained but not yet written (inside a :func:`record_group`), oldest first, and their
        #: events (named by the failure's mark if they cannot be written).
        self._pending = bytearray()
        self._pending_events: list[str] = []
        #: ``(next_seq, last_hash)`` of the records on disk: where a failed write cuts the chain back to.
        self._durable = (seq, last_hash)
        self._syncs = 0

    # -- opening ------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, chain_from: Path | None = None, key: AuditKey | None = None
    ) -> AuditWriter:
        """The shared writer of ``path``, opening (or creating) the file on first use in this process.

        Records are authenticated with ``key`` (default: this installation's audit key, created on first
        use; :mod:`ketapump.bridge.auditkey`). A new (or empty) file starts with a ``log_opened`` record
        naming the key and whose ``prev`` is the final hash of ``chain_from`` or :data:`GENESIS_HASH`;
        ``chain_from`` must verify with the key (a crash may have left it without its closing records,
        or with an incomplete last line, which is noted as ``chain_from_problem``; an edited or forged
        one is refused). An existing file continues its chain: its last line, which must verify with the
        key, gives ``seq`` and ``prev``, and a ``log_reopened`` record marks the restart (``mono_ns``
        restarts with the process). ``chain_from`` is ignored for an existing file, whose first record
        already says what it continues. A file whose last line is incomplete or corrupt is refused
        rather than appended to: start a new file chained from it.

        Raises :class:`AuditWriteError` when the file cannot be opened, locked, read or written, or the
        key cannot be had, and ``ValueError`` when ``chain_from`` is still open for writing in this
        process (close it first, or the two files would both keep growing from the same point).
        """
        real = os.path.realpath(os.fspath(path))
        with cls._registry_lock:
            existing = cls._registry.get(real)
            if existing is not None:
                return existing
            if chain_from is not None and os.path.realpath(chain_from) in cls._registry:
                raise ValueError(f"chain_from {chain_from} is still open for writing; close it first")
            try:
                secret = key if key is not None else load_key(create=True)
            except AuditKeyError as exc:
                raise AuditWriteError(real, f"no audit key: {exc}") from exc
            fd, _created = cls._open_fd(real)
            try:
                for other in cls._registry.values():  # a hard link or bind mount of an open log
                    if other._ino == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                        os.close(fd)
                        return other
                writer = cls._start(real, fd, secret, chain_from)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            cls._registry[real] = writer
            return writer

    @staticmethod
    def _open_fd(real: str) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd, created = os.open(real, flags | os.O_CREAT | os.O_EXCL, 0o640), True
            except FileExistsError:
                fd, created = os.open(real, flags | os.O_NONBLOCK), False
                if not os.path.isfile(real):
                    os.close(fd)
                    raise AuditWriteError(real, "is not a regular file") from None
                os.set_blocking(fd, True)
        except OSError as exc:
            raise AuditWriteError(real, f"cannot open: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise AuditWriteError(
                real, "locked by another process: a second writer would fork the chain"
            ) from exc
        if created:
            # The new directory entry is only durable once the directory itself is synced.
            try:
                dir_fd = os.open(os.path.dirname(real) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                os.close(fd)
                raise AuditWriteError(real, f"cannot sync its directory: {exc.strerror or exc}") from exc
        return fd, created

    @classmethod
    def _start(cls, real: str, fd: int, key: AuditKey, chain_from: Path | None) -> AuditWriter:
        try:
            size = os.fstat(fd).st_size
            tail = _read_last_line(fd, size) if size > 0 else b""
        except OSError as exc:
            raise AuditWriteError(real, f"cannot read its last record: {exc.strerror or exc}") from exc
        if not tail:
            opened: dict[str, object] = {
                "pid": os.getpid(),
                "key_id": key.key_id,
                "chain_from": None,
                "chain_from_hash": None,
            }
            prev = GENESIS_HASH
            if chain_from is not None:
                result = verify(chain_from, key=key)
                if result.final_hash is None or result.status not in CHAINABLE:
                    raise AuditWriteError(
                        real, f"cannot chain from {chain_from}: line {result.bad_line}: {result.reason}"
                    )
                prev = result.final_hash
                opened |= {"chain_from": str(chain_from), "chain_from_hash": prev}
                opened["chain_from_records"] = result.records
                if result.status not in {"ok", "write_failed"}:
                    opened["chain_from_problem"] = f"line {result.bad_line}: {result.reason}"
            writer = cls(real, fd, key, seq=0, last_hash=prev)
            writer.write("log_opened", **opened)
            return writer
        if not tail.endswith(b"\n"):
            raise AuditWriteError(
                real, "last line is incomplete; verify it and start a new file chained from it"
            )
        try:
            record, _status, reason = _check_record(tail[:-1].decode("utf-8"), key)
        except UnicodeDecodeError:
            record, reason = None, "not valid UTF-8"
        if record is None:
            raise AuditWriteError(real, f"last line is corrupt ({reason}); start a new file chained from it")
        writer = cls(real, fd, key, seq=record["seq"] + 1, last_hash=record["hash"])
        writer.write("log_reopened", pid=os.getpid(), key_id=key.key_id)
        return writer

    # -- state --------------------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The real (symlink-resolved) path of the audit file."""
        return self._path

    @property
    def last_hash(self) -> str:
        """Hash of the last record written: what the next file chains from after rotation."""
        return self._last_hash

    @property
    def next_seq(self) -> int:
        """``seq`` the next record will carry (the file's record count when it started at seq 0)."""
        return self._next_seq

    @property
    def key_id(self) -> str:
        """The id of the key that authenticates this file's records."""
        return self._key.key_id

    @property
    def failed(self) -> AuditWriteError | None:
        """The write failure that made this writer refuse further writes, if any."""
        return self._failure

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def syncs(self) -> int:
        """How many times this writer has fsync-ed the file (one per record, or one per group commit)."""
        return self._syncs

    # -- writing ------------------------------------------------------------------------------------------

    def _seal(self, event: str, fields: Mapping[str, object], seq: int, prev: str) -> tuple[bytes, str]:
        """One record as written: the line (bytes) and its hash. The per-record chain link and MAC are
        computed here, and only here, whichever way records reach the file."""
        body = cast(dict[str, object], _jsonable(fields))
        body["event"] = event
        body |= {"timestamp": _utc_timestamp(), "seq": seq, "mono_ns": time.monotonic_ns(), "prev": prev}
        digest = record_hash(prev, body)
        body["hash"] = digest
        body["mac"] = self._key.mac(digest)
        return (canonical_json(body) + "\n").encode("utf-8"), digest

    def _append(self, data: bytes) -> None:
        """Writes whole records and fsyncs them, first reserving the space they and a failure mark need
        (raises ``OSError`` with nothing written when the disk has no room for them)."""
        _reserve_space(self._fd, self._size, len(data) + MARK_RESERVE_BYTES)
        # A raw fd has no user-space buffer, so os.write is write + flush; loop on short writes.
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        self._size += len(data)

    def write(self, event: str, **fields: object) -> str:
        """Append one record, durably, and return its hash.

        Outside a :func:`record_group`, returns only after write and fsync succeeded, so the caller may act
        on the logged intent; inside one, the record is chained, authenticated and buffered, and durable
        once the group commits. ``event`` must be a stable snake_case name; values go in ``fields``
        (non-finite floats become strings, other non-JSON values ``str()``). Raises
        :class:`AuditWriteError` on any I/O failure (and on every call after one, or after :meth:`close`),
        ``ValueError`` for a bad event name or a field named like one of the writer's own keys. After a
        failure the file ends at its last whole record, followed (where there is room) by the marks of the
        failure (:meth:`_fail`).
        """
        if not _EVENT_NAME.match(event):
            raise ValueError(f"audit event name {event!r} is not a stable snake_case name")
        clash = _RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} are reserved for the writer")
        with self._lock:
            if self._failure is not None:
                raise AuditWriteError(
                    self._path, f"refusing to write after an earlier failure ({self._failure.detail})"
                )
            if self._closed:
                raise AuditWriteError(self._path, "writer is closed")
            digest = self._chain(event, fields)
            group = _current_group.get()
            if group is not None and group.open:
                group._join(self)
            else:
                self._flush()
            return digest

    def _chain(self, event: str, fields: Mapping[str, object]) -> str:
        """Seals the next record onto the chain and buffers it; the caller holds the lock."""
        data, digest = self._seal(event, fields, self._next_seq, self._last_hash)
        self._pending += data
        self._pending_events.append(event)
        self._next_seq += 1
        self._last_hash = digest
        return digest

    def _commit(self) -> None:
        """Writes and fsyncs the buffered records (nothing to do when there are none)."""
        with self._lock:
            if self._pending:
                if self._failure is not None:
                    raise AuditWriteError(
                        self._path, f"refusing to write after an earlier failure ({self._failure.detail})"
                    )
                self._flush()

    def _flush(self) -> None:
        """Writes every pending record with one ``write`` (looping on short writes) and one ``fsync``;
        the caller holds the lock. A failure is sticky, and the file's end is marked (:meth:`_fail`)."""
        if not self._pending:
            return
        data, events = bytes(self._pending), list(self._pending_events)
        self._pending.clear()
        self._pending_events.clear()
        try:
            self._append(data)
        except OSError as exc:
            raise self._fail(events, exc) from exc
        self._durable = (self._next_seq, self._last_hash)
        self._syncs += 1

    def _fail(self, lost: list[str], exc: OSError) -> AuditWriteError:
        """After a failed write of the records ``lost`` (their events, oldest first): cut the file back
        to its last whole record (no space needed) and the chain back to it, then mark the end with
        ``audit_write_failed`` and ``log_closed`` in the reserved space, so the log verifies up to there.
        Where even that cannot be written the file still ends at a whole record. The writer refuses every
        later write; the caller holds the lock."""
        why = exc.strerror or str(exc)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)
        self._next_seq, self._last_hash = self._durable
        failed_seq = self._next_seq
        failed = {"failed_seq": failed_seq, "failed_event": lost[0], "lost_records": len(lost), "error": why}
        marked, hash_marked = self._seal(_WRITE_FAILED, failed, failed_seq, self._last_hash)
        closing = {"records": failed_seq + 2, "reason": "write_failed"}
        closed, hash_closed = self._seal(_CLOSED, closing, failed_seq + 1, hash_marked)
        try:
            view = memoryview(marked + closed)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
                os.fsync(self._fd)
            detail = f"write of record seq {failed_seq} failed: {why} (the end could not be marked)"
        else:
            self._size += len(marked) + len(closed)
            self._next_seq += 2
            self._last_hash = hash_closed
            self._durable = (self._next_seq, self._last_hash)
            detail = f"write of record seq {failed_seq} failed: {why} (the log's end is marked)"
        self._failure = AuditWriteError(self._path, detail)
        return self._failure

    # -- closing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Commits any buffered records and ends the file with a ``log_closed`` record (unless a failure
        already marked its end), then releases it and its registry slot; the next :meth:`open` of the path
        re-opens it. Never raises: a failed final commit is kept in :attr:`failed`, and the file then
        ends at its last whole record or the failure's marks."""
        with self._registry_lock, self._lock:
            if self._closed:
                return
            if self._failure is None:
                self._chain(_CLOSED, {"records": self._next_seq + 1})
                with contextlib.suppress(AuditWriteError):
                    self._flush()
            self._closed = True
            if self._registry.get(self._path) is self:
                del self._registry[self._path]
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # gives back the reserved space
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "failed" if self._failure else "closed" if self._closed else "open"
        return f"<AuditWriter {self._path} {state} next_seq={self._next_seq}>"


# --------------------------------------------------------------------------------------------------------
# structlog integration
# --------------------------------------------------------------------------------------------------------


class _AuditSink:
    """The "logger" at the end of the structlog chain: it hands each finished event dict to the writer.

    Every level method does the same thing: the audit log filters nothing, and the level is already a
    field (``add_log_level``).
    """

    def __init__(self, writer: AuditWriter) -> None:
        self._writer = writer

    def msg(self, event_dict: MutableMapping[str, Any]) -> None:
        fields = dict(event_dict)
        event = fields.pop("event")
        self._writer.write(str(event), **fields)

    debug = info = warning = warn = error = exception = critical = fatal = msg


def _nonfinite_to_str(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Turn NaN/inf (also nested) into strings before they reach JSON, which cannot represent them."""

    def fix(value: object) -> object:
        if isinstance(value, float):
            return _finite(value)
        if isinstance(value, Mapping):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fix(v) for v in value]
        return value

    return {k: fix(v) for k, v in event_dict.items()}


def _hand_to_writer(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Final processor: pass the dict itself (as the one positional argument) to :class:`_AuditSink`.

    Returning ``((event_dict,), {})`` rather than the dict keeps structlog from spreading the fields as
    keyword arguments, so no field name can collide with the sink's parameters.
    """
    return (event_dict,), {}


def audit_logger(writer: AuditWriter, **context: object) -> structlog.typing.FilteringBoundLogger:
    """A structlog bound logger whose every event becomes one audit record in ``writer``'s chain.

    Built with :func:`structlog.wrap_logger`, so nothing global is configured: diagnostics and other
    structlog users are unaffected. ``context`` is bound up front (e.g. ``session_id``, ``pump_id``);
    ``.bind()`` and :mod:`structlog.contextvars` both add more. Exceptions (``log.exception``) are stored
    as structured tracebacks without local variables, which could hold patient data. An
    :class:`AuditWriteError` propagates out of the logging call: it must reach the code that stops the
    pump.
    """
    processors: list[Callable[..., Any]] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        _nonfinite_to_str,
        _hand_to_writer,
    ]
    logger = structlog.wrap_logger(
        _AuditSink(writer),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        context_class=dict,
    )
    # bind() rather than wrap_logger(**context): a field named like a wrap_logger parameter stays a field.
    logger = logger.bind(**context)
    return cast(structlog.typing.FilteringBoundLogger, logger)


# --------------------------------------------------------------------------------------------------------
# Diagnostics (not evidence: a separate stream)
# --------------------------------------------------------------------------------------------------------


class _DiagnosticsHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler :func:`configure_diagnostics` installed, so a second call replaces it."""

    def __init__(self, stream: IO[str], owned: bool) -> None:
        super().__init__(stream)
        self.owned = owned

    def close(self) -> None:
        try:
            if self.owned:
                self.flush()
                self.stream.close()
        finally:
            super().close()


def configure_diagnostics(stream_or_path: IO[str] | str | os.PathLike[str]) -> None:
    """Route stdlib logging of the libraries in :data:`DIAGNOSTIC_LOGGERS` to ``stream_or_path`` as JSON.

    Library diagnostics are high-volume and unsynced; mixing them into the audit file would bury the
    evidence and break its chain, so a path that is an open audit log is refused (``ValueError``). Each
    listed logger gets one handler whose ``structlog.stdlib.ProcessorFormatter`` renders a JSON line
    (timestamp, level, logger, event, exception). Calling again replaces the previous handlers (closing a
    file it opened), so the call is idempotent. Logger levels and propagation are left to the application.
    """
    if isinstance(stream_or_path, (str, os.PathLike)):
        real = os.path.realpath(os.fspath(stream_or_path))
        if real in AuditWriter._registry:
            raise ValueError(f"{stream_or_path} is an audit log; diagnostics must go elsewhere")
        stream: IO[str] = open(real, "a", encoding="utf-8")  # noqa: SIM115 - owned by the handler
        owned = True
    else:
        name = getattr(stream_or_path, "name", None)
        if isinstance(name, str) and os.path.realpath(name) in AuditWriter._registry:
            raise ValueError(f"{name} is an audit log; diagnostics must go elsewhere")
        stream, owned = stream_or_path, False
    remove_diagnostics()
    handler = _DiagnosticsHandler(stream, owned)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _nonfinite_to_str,
                structlog.processors.JSONRenderer(sort_keys=True, separators=(",", ":"), default=str),
            ],
        )
    )
    for name in DIAGNOSTIC_LOGGERS:
        logging.getLogger(name).addHandler(handler)


def remove_diagnostics() -> None:
    """Detach (and close) the handlers :func:`configure_diagnostics` installed; for shutdown and tests."""
    seen: set[int] = set()
    for name in DIAGNOSTIC_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, _DiagnosticsHandler):
                logger.removeHandler(handler)
                if id(handler) not in seen:
                    seen.add(id(handler))
                    handler.close()


# --------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------


#: What :func:`verify` found (:attr:`VerifyResult.status`), from intact to worst.
VerifyStatus = Literal[
    "ok",  # every record authentic, the log closed by its writer
    "write_failed",  # authentic up to where a failed write stopped the writer, which marked its end there
    "closing_missing",  # authentic, but the closing records are gone (or the writer died before them)
    "truncated",  # authentic up to an incomplete last line (a write cut short by a crash)
    "reordered",  # a record is missing, inserted, duplicated or out of order in the chain
    "edited",  # a record's content does not match its hash (or is not a record)
    "forged",  # a record's hash was recomputed without the key: its MAC does not match
    "unauthenticated",  # the log names a key this installation does not have
    "empty",  # no records at all
]
#: The results a later file may chain from (``run --resume``): authentic as far as they go.
CHAINABLE: Final = frozenset({"ok", "write_failed", "closing_missing", "truncated"})


@dataclasses.dataclass(frozen=True)
class Seal:
    """What a log's end must be, recorded elsewhere when it was closed (the course history's
    :class:`~ketapump.clinical.course.LogSeal`): the number of records and the last one's hash."""

    records: int
    head: str
    where: str


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`.

    ``status`` says what was found (:data:`VerifyStatus`); ``ok`` is true for ``ok`` and for a log whose
    writer marked where a failed write stopped it (``write_failed``). ``records`` and ``final_hash``
    describe the authentic prefix (all of the file when ``ok``); ``bad_line`` is the 1-based number of the
    first line that fails, ``reason`` says how (for ``write_failed``, what the writer marked).
    """

    ok: bool
    records: int
    final_hash: str | None
    bad_line: int | None
    reason: str
    status: VerifyStatus = "ok"
    key_id: str | None = None


def verify(
    path: Path,
    *,
    expect_prev: str | None = None,
    key: AuditKey | None = None,
    seal: Seal | None = None,
) -> VerifyResult:
    """Recompute the chain of an audit file, authenticate every record, and name the first line that
    fails and how (:data:`VerifyStatus`).

    Checks, line by line: a regular file; complete lines (trailing newline) no longer than
    :data:`MAX_RECORD_BYTES`; UTF-8; a JSON object with the writer's fields; the record's own hash (an
    edited value) and canonical form (an edited layout); its MAC with ``key`` (default: this installation's
    audit key; a log naming another key cannot be authenticated); ``seq`` continuity and the ``prev`` link
    (a dropped, duplicated or reordered line shows at the line after the gap). The first line must be
    ``log_opened`` with ``seq`` 0 and a ``prev`` equal to its ``chain_from_hash`` (or the genesis hash),
    and to ``expect_prev`` when given — the final hash of the previous file, which is how a rotated set
    of files is checked end to end. The last record must be ``log_closed``: without it the closing
    records are missing. ``seal`` (the record count and last hash stored elsewhere when the log was
    closed) catches a log cut back to an earlier, still-closed state. Raises ``OSError`` (a
    :class:`~ketapump.validation.FileReadError` for a path that is not a regular file) if the file cannot
    be read.
    """
    records = 0
    last_hash: str | None = None
    last: dict[str, Any] | None = None
    last_seq = -1
    marked: dict[str, Any] | None = None
    key_id: str | None = None

    def bad(line: int, status: VerifyStatus, reason: str) -> VerifyResult:
        return VerifyResult(False, records, last_hash, line, reason, status, key_id)

    fd = open_regular_file(path)
    with os.fdopen(fd, "rb") as fh:
        lineno = 0
        while raw := fh.readline(MAX_RECORD_BYTES + 1):
            lineno += 1
            if not raw.endswith(b"\n"):
                if len(raw) > MAX_RECORD_BYTES:
                    return bad(lineno, "edited", f"longer than {MAX_RECORD_BYTES} bytes: not a record")
                return bad(
                    lineno,
                    "truncated",
                    f"truncated after record {records} (incomplete last write: no newline)",
                )
            try:
                text = raw[:-1].decode("utf-8")
            except UnicodeDecodeError as exc:
                return bad(lineno, "edited", f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
            if lineno == 1:
                declared = _declared_key(text)
                if declared is None:
                    # Not keyed: an edit shows as one; an intact unkeyed header is not authentic either.
                    _, status, reason = _check_record(text, AuditKey(b"", "(none)"))
                    if status == "edited":
                        return bad(1, "edited", reason)
                    head = json.loads(text)
                    if head.get("event") != "log_opened" or head.get("seq") != 0:
                        return bad(
                            1,
                            "reordered",
                            f"first record is {head.get('event')!r} seq {head.get('seq')}, "
                            "expected 'log_opened' seq 0",
                        )
                    return bad(1, "forged", "forged: the first record names no audit key")
                key_id = declared
                try:
                    key = key if key is not None else load_key()
                except AuditKeyError as exc:
                    return bad(1, "unauthenticated", f"cannot authenticate (key {declared}): {exc}")
                if key.key_id != declared:
                    return bad(
                        1,
                        "unauthenticated",
                        f"written with audit key {declared}; the key at {key.path} is {key.key_id}: "
                        "verify it where it was written, or with that installation's key",
                    )
            assert key is not None
            record, status, reason = _check_record(text, key)
            if record is None:
                return bad(lineno, cast(VerifyStatus, status), reason)
            seq, prev = record["seq"], record["prev"]
            if lineno == 1:
                if record["event"] != "log_opened" or seq != 0:
                    return bad(
                        1,
                        "reordered",
                        f"first record is {record['event']!r} seq {seq}, expected 'log_opened' seq 0",
                    )
                declared_prev = record.get("chain_from_hash") or GENESIS_HASH
                if prev != declared_prev:
                    return bad(1, "reordered", "prev does not match the chain_from_hash this record declares")
                if expect_prev is not None and prev != expect_prev:
                    return bad(
                        1, "reordered", f"prev {prev} does not match the expected previous hash {expect_prev}"
                    )
            else:
                if seq != last_seq + 1:
                    return bad(
                        lineno,
                        "reordered",
                        f"seq {seq} follows seq {last_seq} (expected {last_seq + 1}): "
                        "a record is missing, duplicated or out of order",
                    )
                if prev != last_hash:
                    return bad(
                        lineno,
                        "reordered",
                        f"prev does not match the hash of line {lineno - 1}: "
                        "a record is missing, inserted or out of order",
                    )
            records += 1
            last_hash = record["hash"]
            last_seq = seq
            last = record
            if record["event"] == _WRITE_FAILED and marked is None:
                marked = record
        if lineno == 0:
            return bad(1, "empty", "empty file: expected a log_opened record")
    assert last is not None
    if seal is not None and (records < seal.records or (records == seal.records and last_hash != seal.head)):
        return bad(
            min(records, seal.records) + 1,
            "closing_missing",
            f"closing records missing: {seal.where} recorded {seal.records} records ending in "
            f"{seal.head[:16]}…, this log has {records} ending in {(last_hash or '')[:16]}…",
        )
    if last["event"] != _CLOSED:
        return bad(
            lineno + 1,
            "closing_missing",
            f"closing records missing after record {records}: the log ends without log_closed "
            "(records were dropped from its end, or its writer died)",
        )
    if marked is not None:
        reason = (
            f"incomplete tail marked by its writer: record seq {marked.get('failed_seq')} "
            f"({marked.get('failed_event')}) could not be written ({marked.get('error')}) and the writer "
            f"ended the log there; all {records} records verify"
        )
        return VerifyResult(True, records, last_hash, None, reason, "write_failed", key_id)
    return VerifyResult(True, records, last_hash, None, "", "ok", key_id)


def _declared_key(first_line: str) -> str | None:
    """The ``key_id`` a log's first line names (read before the line is checked, to pick the key), or
    ``None`` when it names none (or is not JSON)."""
    try:
        obj = json.loads(first_line)
    except ValueError:
        return None
    key_id = obj.get("key_id") if isinstance(obj, dict) else None
    return key_id if isinstance(key_id, str) and key_id else None


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit file that parses as JSON, in order, read bounded (a regular file, lines
    up to :data:`MAX_RECORD_BYTES`); an incomplete or unparsable line ends the list. Check the file with
    :func:`verify` first: this reads what it says, it does not authenticate it."""
    out: list[dict[str, Any]] = []
    with os.fdopen(open_regular_file(path), "rb") as fh:
        while (raw := fh.readline(MAX_RECORD_BYTES + 1)).endswith(b"\n"):
            try:
                entry = json.loads(raw)
            except ValueError:
                break
            if not isinstance(entry, dict):
                break
            out.append(entry)
    return out
