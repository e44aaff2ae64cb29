"""Reading data files (protocols, drug libraries, scenarios, shipped defaults) with every problem
reported at once.

A file is checked whole: pydantic collects every problem, each named by its dotted path in the
document (``dose.mg_per_kg``, ``drugs.ketamine.dose_mg_per_kg.soft_max``), and the caller gets them
together in one :class:`DocumentError` rather than one at a time. A file that is not there (or a name
that is not shipped) is told apart from one whose content is wrong (``not_found``): the commands exit
66 for the first and 65 for the second (:func:`input_exit_code`).
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from ketapump.errors import ConfigurationError

Model = TypeVar("Model", bound=BaseModel)


class DocumentError(ConfigurationError):
    """A data file could not be used; ``problems`` lists every problem as ``path: message``.
    ``not_found``: there was no such file (or shipped name) to read, rather than a wrong one."""

    #: What kind of document this is, for the message ("protocol", "scenario", …).
    kind: ClassVar[str] = "document"

    def __init__(self, source: str, problems: list[str], *, not_found: bool = False) -> None:
        super().__init__(source, f"is not a valid {self.kind}:\n  " + "\n  ".join(problems))
        self.problems = problems
        self.not_found = not_found


def input_exit_code(error: ConfigurationError) -> int:
    """The sysexits code of refused input: 66 (``EX_NOINPUT``) for a file or shipped name not found,
    65 (``EX_DATAERR``) for anything invalid."""
    return os.EX_NOINPUT if isinstance(error, DocumentError) and error.not_found else os.EX_DATAERR


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
        return model.model_validate(document)
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
    """The TOML file at ``path`` validated as ``model``; raises ``error`` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        not_found = isinstance(e, FileNotFoundError)
        raise error(str(path), [f"cannot be read: {e.strerror}"], not_found=not_found) from e
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
