"""The command line's contract as the README states it: the exit-code tables, read from the README itself
(so a test compares the code with the document, not with a copy of it)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

#: The key of the table that holds for every command.
EVERY_COMMAND = "*"
#: Command groups: their first argument is a command name too (``qa accuracy``, ``log verify``).
GROUPS = {"log", "course", "qa"}


@functools.cache
def documented_exit_codes() -> dict[str, frozenset[int]]:
    """Every README table whose first header cell starts with ``exit``: the commands in backticks in
    that cell (``| exit (`dose`, `session`) | meaning |``, or "every command"), and the codes in the
    first cell of each row (``69 / 74`` is two codes)."""
    codes: dict[str, set[int]] = {}
    lines = README.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or not cells[0].startswith("exit"):
            continue
        commands = re.findall(r"`([^`]+)`", cells[0]) or (
            [EVERY_COMMAND] if "every command" in cells[0] else []
        )
        assert commands, f"README.md:{n + 1}: an exit-code table that names no command"
        rows = []
        for row in lines[n + 2 :]:
            if not row.lstrip().startswith("|"):
                break
            rows.append(row.strip().strip("|").split("|")[0])
        found = {int(code) for row in rows for code in re.findall(r"\d+", row)}
        for command in commands:
            codes.setdefault(command, set()).update(found)
    return {command: frozenset(found) for command, found in codes.items()}


def command_of(argv: Sequence[str]) -> str | None:
    """The command an argument list runs (``qa accuracy``), or None for the bare program
    (``--version``, ``--help``)."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if not argv or argv[0].startswith("-") or not words:
        return None
    return " ".join(words) if words[0] in GROUPS and len(words) > 1 else words[0]


def allowed_exit_codes(command: str | None) -> frozenset[int]:
    """The codes the README documents for ``command``: its own table's and every command's."""
    tables = documented_exit_codes()
    return tables.get(EVERY_COMMAND, frozenset()) | (tables.get(command, frozenset()) if command else {0})


def assert_documented(argv: Sequence[str], returncode: int, stderr: str) -> None:
    """A CLI test's observed exit code must be one the README's tables give for that command."""
    command = command_of(argv)
    assert returncode in allowed_exit_codes(command), (
        f"`ketapump {' '.join(argv)}` exited {returncode}, which the README's exit-code tables do not "
        f"list for {command or 'ketapump'}: {stderr[-2000:]}"
    )
