"""Reading data files (protocols, drug libraries, scenarios, shipped defaults) with every problem
reported at once.

A file is checked whole: pydantic collects every problem, each named by its dotted path in the
document (``dose.mg_per_kg``, ``drugs.ketamine.dose_mg_per_kg.soft_max``), and the caller gets them
together in one :class:`DocumentError` rather than one at a time. A file that is not there (or a name
that is not shipped) is told apart from one whose content is wrong (``not_found``): the commands exit
66 for the first and 65 for the second (:func:`input_exit_code`).

Reading is bounded (:func:`read_text_file`): a data file must be a regular file (never a FIFO, a device
such as ``/dev/zero``, or a directory, also through a symlink), no larger than its limit, and UTF-8 text.
Anything else is refused at once with the path, the value and the limit, in bounded time and memory.

Types are strict: a data file says ``0.5`` or ``true``, and the strings ``"0.5"`` or ``"yes"`` are refused
rather than coerced (``validate_document`` validates in pydantic's strict mode).
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from ketapump.errors import ConfigurationError

Model = TypeVar("Model", bound=BaseModel)

#: The largest protocol, drug library, scenario, patient script or settings file read (bytes): a reviewed
#: TOML file is a few kB; anything near this is not one.
MAX_DATA_FILE_BYTES = 1024 * 1024
#: The largest recording read whole (a vitals CSV replay; bytes): hours of 1 Hz readings fit many times.
MAX_RECORDING_BYTES = 64 * 1024 * 1024

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileReadError(OSError):
    """A file could not be read as a data file: ``problem`` says why (naming the value and the limit);
    ``not_found`` when there is no such file."""

    def __init__(self, path: str, problem: str, *, not_found: bool = False) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.not_found = not_found


def file_kind(mode: int) -> str | None:
    """What a ``st_mode`` that is not a regular file is (``"a FIFO (named pipe)"``…), ``None`` for a file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def open_regular_file(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file at ``path`` (symlinks followed), without blocking: a
    FIFO is opened non-blocking and refused, as is a device or a directory. Raises
    :class:`FileReadError`."""
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FileReadError(
            where, f"cannot be read: {e.strerror or e}", not_found=isinstance(e, FileNotFoundError)
        ) from e
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise FileReadError(where, f"is {kind}, not a regular file: refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text_file(path: str | os.PathLike[str], *, limit_bytes: int = MAX_DATA_FILE_BYTES) -> str:
    """The UTF-8 text of the regular file at ``path``, at most ``limit_bytes`` long.

    Refused with :class:`FileReadError` (never read past the limit, never blocking): a missing file
    (``not_found``), one that is not a regular file, one above the limit (its size and the limit named),
    and bytes that are not UTF-8 (the offset and line named).
    """
    where = os.fspath(path)
    fd = open_regular_file(where)
    try:
        size = os.fstat(fd).st_size
        if size > limit_bytes:
            raise FileReadError(where, f"is {size} bytes, above the limit of {limit_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while total <= limit_bytes:  # a file growing while it is read is still bounded
            chunk = os.read(fd, min(1 << 16, limit_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise FileReadError(where, f"cannot be read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if total > limit_bytes:
        raise FileReadError(where, f"is larger than the limit of {limit_bytes} bytes")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FileReadError(
            where, f"is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line})"
        ) from None


class DocumentError(ConfigurationError):
    """A data file could not be used; ``problems`` lists every problem as ``path: message``.
    ``not_found``: there was no such file (or shipped name) to read, rather than a wrong one."""

    #: What kind of document this is, for the message ("protocol", "scenario", …).
    kind: ClassVar[str] = "document"

    def __init__(self, source: str, problems: list[str], *, not_found: bool = False) -> None:
        super().__init__(source, f"is not a valid {self.kind}:\n  " + "\n  ".join(problems))
        self.problems = problems
        self.not_found = not_found


class OutputPathError(ConfigurationError):
    """An output path (a report directory, an audit log) cannot be created or written; found before
    anything starts (:func:`check_output_path`)."""


def input_exit_code(error: ConfigurationError) -> int:
    """The sysexits code of refused input: 66 (``EX_NOINPUT``) for a file or shipped name not found, 65
    (``EX_DATAERR``) for anything invalid. An output that cannot be created (:class:`OutputPathError`)
    is 73 (``EX_CANTCREAT``): the commands that check outputs catch it first."""
    return os.EX_NOINPUT if isinstance(error, DocumentError) and error.not_found else os.EX_DATAERR


def check_output_path(path: Path, *, option: str, directory: bool) -> None:
    """Refuses, before anything starts, an output that could not be written at the end: ``path`` (a
    directory when ``directory``, else a file) must be writable if it exists, or creatable in the nearest
    directory that does. Writes nothing. Raises :class:`OutputPathError` naming the option and path."""
    kind = "directory" if directory else "file"
    if os.path.lexists(path):
        st = os.stat(path)
        if directory and not stat.S_ISDIR(st.st_mode):
            raise OutputPathError(option, f"{path} is not a directory")
        if not directory and not stat.S_ISREG(st.st_mode):
            raise OutputPathError(option, f"{path} is {file_kind(st.st_mode)}, not a regular file")
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            raise OutputPathError(option, f"{path} is not writable")
        return
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(option, f"{path}: cannot create this {kind}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(option, f"{path}: cannot create this {kind}: {parent} is not writable")


def problems_of(error: ValidationError, prefix: str = "") -> list[str]:
    """Each pydantic error as ``dotted.path: message`` (``(file)`` for the document itself), the path
    under ``prefix`` when the model is one part of a larger document (``protocol.vitals``)."""
    return [
        f"{'.'.join(str(part) for part in (prefix, *err['loc']) if str(part)) or '(file)'}: {err['msg']}"
        for err in error.errors()
    ]


def validate_document(
    model: type[Model],
    document: dict[str, Any],
    source: str,
    error: type[DocumentError],
    *,
    prefix: str = "",
) -> Model:
    """``document`` validated as ``model``; raises ``error`` listing every problem (its paths under
    ``prefix`` when the document is one part of the file)."""
    try:
        # Strict, over the document's JSON form (what TOML holds: strings, numbers, booleans, arrays,
        # tables): a string is never a number or a boolean ("0.5", "yes"), a number never a boolean, a
        # float never an integer; an array is still a tuple. A TOML date becomes its ISO text.
        text = json.dumps(document, default=str)
        return model.model_validate_json(text, strict=True)
    except ValidationError as e:
        raise error(source, problems_of(e, prefix)) from e


def parse_document(model: type[Model], text: str, source: str, error: type[DocumentError]) -> Model:
    """TOML ``text`` validated as ``model``; raises ``error`` for bad TOML or listing every problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(source, [f"is not valid TOML: {e}"]) from e
    return validate_document(model, document, source, error)


def read_document(model: type[Model], path: Path, error: type[DocumentError]) -> Model:
    """The TOML file at ``path`` validated as ``model``; raises ``error`` naming the file (a file that is
    not a regular UTF-8 file within :data:`MAX_DATA_FILE_BYTES` is refused, see :func:`read_text_file`)."""
    try:
        text = read_text_file(path)
    except FileReadError as e:
        raise error(str(path), [e.problem], not_found=e.not_found) from e
    return parse_document(model, text, str(path), error)


def shipped_settings(resource: str) -> dict[str, Any]:
    """A shipped defaults file of ``ketapump/data`` as one flat dict: its ``[sections]`` are only for
    reading (setting names are unique across them); ``schema_version`` is left out."""
    text = resources.files("ketapump.data").joinpath(resource).read_text(encoding="utf-8")
    flat: dict[str, Any] = {}
    for section, values in tomllib.loads(text).items():
        if section != "schema_version":
            flat.update(values)
    return flat
