"""Validating data files (protocols, drug libraries, scenarios) with every problem reported at once.

A file is checked whole: pydantic collects every problem, each named by its dotted path in the
document (``dose.mg_per_kg``, ``drugs.ketamine.dose_mg_per_kg.soft_max``), and the caller gets them
together in one :class:`DocumentError` rather than one at a time.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from ketapump.errors import ConfigurationError

Model = TypeVar("Model", bound=BaseModel)


class DocumentError(ConfigurationError):
    """A data file could not be used; ``problems`` lists every problem as ``path: message``."""

    #: What kind of document this is, for the message ("protocol", "scenario", …).
    kind: ClassVar[str] = "document"

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(source, f"is not a valid {self.kind}:\n  " + "\n  ".join(problems))
        self.problems = problems


def problems_of(error: ValidationError) -> list[str]:
    """Each pydantic error as ``dotted.path: message`` (``(file)`` for the document itself)."""
    return [
        f"{'.'.join(str(part) for part in err['loc']) or '(file)'}: {err['msg']}" for err in error.errors()
    ]


def validate_document(
    model: type[Model], document: dict[str, Any], source: str, error: type[DocumentError]
) -> Model:
    """``document`` validated as ``model``; raises ``error`` listing every problem."""
    try:
        return model.model_validate(document)
    except ValidationError as e:
        raise error(source, problems_of(e)) from e
