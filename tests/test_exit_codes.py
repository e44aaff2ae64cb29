"""The README's exit-code tables: one for every command, and every code a test observes is in its table.

The second half of the contract is checked where the codes are observed: every test that runs the command
line goes through a helper that calls :func:`cli_contract.assert_documented` on the code it got. This
module checks that every command has a table and that the checker refuses what no table lists."""

from __future__ import annotations

import pytest
import typer.main

from cli_contract import (
    EVERY_COMMAND,
    allowed_exit_codes,
    assert_documented,
    command_of,
    documented_exit_codes,
)
from ketapump.cli import app


def _commands() -> set[str]:
    """Every command of the ``ketapump`` CLI, group commands with their group (``course show``)."""
    root = typer.main.get_command(app)
    names: set[str] = set()
    for name, command in getattr(root, "commands", {}).items():
        subcommands = getattr(command, "commands", None)  # a group
        names |= {f"{name} {sub}" for sub in subcommands} if subcommands else {name}
    return names


def test_every_command_has_an_exit_code_table_and_every_table_a_command() -> None:
    tables = documented_exit_codes()
    assert _commands() == set(tables) - {EVERY_COMMAND}, "README exit-code tables and CLI commands differ"
    for command in _commands():
        assert {0, 2} <= allowed_exit_codes(command), command


def test_the_checker_refuses_an_undocumented_code() -> None:
    assert command_of(["course", "show", "p-1", "--json"]) == "course show"
    assert command_of(["session", "--protocol", "x"]) == "session"
    assert_documented(["run", "--pump", "sim://"], 73, "")
    assert_documented(["course", "init", "db"], 73, "")
    with pytest.raises(AssertionError, match="exited 75, which the README's exit-code tables do not list"):
        assert_documented(["session"], 75, "")
