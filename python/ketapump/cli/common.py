"""What every command shares (README, "Command-line conventions"): where output goes, how a command
fails, its exit codes, how its help shows flags, and the old spellings of renamed options.

- Results (the human summary or ``--json``) go to stdout (:func:`result`, :func:`result_json`);
  progress, diagnostics and warnings to stderr (:func:`warn`, :func:`progress_console`).
- A failure is one ``ketapump: …`` line on stderr and an exit code (:func:`fail`). The README's
  exit-code tables are the contract: every code here is in them. Data and environment failures use the
  sysexits codes (``os.EX_DATAERR`` 65, ``os.EX_NOINPUT`` 66, …); usage errors exit 2 (typer's).
- A renamed option keeps its old spelling as a hidden alias that still works and warns once
  (:class:`Renamed`, :func:`command_class`).
- A command's module is imported when the command is looked up, not at start-up (:func:`lazy_group`):
  each module registers its commands with ``register_cli(app)``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup, TyperOption

from ketapump import clinical

#: Outcomes of the commands that run a pump (``run``, ``session``, ``demo``).
EXIT_COMPLETE: Final = 0
EXIT_INTERLOCK: Final = 3  # stopped by a kernel interlock or a pump-side alarm; a session that ended early
EXIT_OPERATOR_STOP: Final = 4  # ``run`` stopped by the operator (SIGINT/SIGTERM)
EXIT_LINK_LOST: Final = 5  # the link to the pump was lost mid-run (the pump was told to stop)
EXIT_LIMIT: Final = 6  # refused by a hard limit, or a soft limit / course rule not confirmed with a reason
EXIT_ABORTED: Final = 7  # aborted in the pre-check (an item not confirmed, no baseline): nothing delivered
EXIT_USAGE: Final = 2  # a usage error (typer's code for an unknown option or a malformed value)

#: ``--pump``: the same option, help and default wherever a command drives a pump.
DEFAULT_PUMP: Final = "sim://"
PUMP_HELP: Final = (
    "Pump URL: sim:// (the built-in simulator), modbus-tcp://HOST:PORT, modbus-rtu://PATH, "
    "nesp://PATH or harvard://PATH (README, 'Pump URLs')."
)

#: Defaults that depend on the environment, as ``--help`` states them.
AUDIT_LOG_DEFAULT: Final = "$XDG_STATE_HOME/ketapump/logs/run-<UTC time>.jsonl, XDG_STATE_HOME ~/.local/state"
COURSE_DB_DEFAULT: Final = "$XDG_DATA_HOME/ketapump/course.sqlite3, XDG_DATA_HOME ~/.local/share"

#: Who acts or confirms: every command that does records it (issue 20 reuses it for the course commands).
OPERATOR_ENV: Final = "KETAPUMP_OPERATOR"
OPERATOR_HELP: Final = f"Your name, recorded with everything you do or confirm (or ${OPERATOR_ENV})."


def operator_name(value: str | None, *, required: bool = True) -> str | None:
    """The ``--operator`` value, checked (blank, too long or with control characters: a usage error);
    ``None`` when not given and not ``required``."""
    if value is None:
        if required:
            raise fail(f"--operator NAME (or ${OPERATOR_ENV}) is required", EXIT_USAGE)
        return None
    try:
        return clinical.check_operator_name(value)
    except ValueError as e:
        raise fail(f"--operator: {e}", EXIT_USAGE) from None


def fail(message: str, code: int) -> typer.Exit:
    """Prints ``ketapump: message`` on stderr and returns the exit to raise (``raise fail(...)``)."""
    typer.echo(f"ketapump: {message}", err=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """A warning: ``ketapump: warning: message`` on stderr (never mixed into the results)."""
    typer.echo(f"ketapump: warning: {message}", err=True)


def result(text: str = "") -> None:
    """A line of the human-readable result, on stdout."""
    typer.echo(text)


def result_json(document: Mapping[str, Any]) -> None:
    """The machine-readable result (``--json``): one JSON document on one line of stdout."""
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def output_dir(path: Path) -> Path:
    """``path`` created if missing, for a command's reports; exit 73 (``EX_CANTCREAT``) if it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(f"cannot create {path}: {e.strerror or e}", os.EX_CANTCREAT) from e
    return path


def progress_console() -> Console:
    """Where progress bars and live status go: stderr (rich draws them only on a terminal)."""
    return Console(stderr=True)


# ----- renamed options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Renamed:
    """An option renamed to follow the conventions: ``old`` still works, hidden from the help, and
    prints one warning naming ``new``. ``convert`` turns an old-style value into a new-style one
    (e.g. ``120m`` into ``120`` for ``--duration`` → ``--duration-min``); it raises
    :class:`typer.BadParameter` for a value it cannot convert."""

    old: str
    new: str
    convert: Callable[[str], str] | None = None


def minutes(value: str) -> str:
    """An old-style duration (``120m``, ``120min`` or ``120``) as a number of minutes."""
    number = value.strip().removesuffix("min").removesuffix("m")
    try:
        float(number)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a duration in minutes (e.g. 120m)") from None
    return number


class _DeprecatedAlias(TyperOption):
    """The old spelling of ``target``: the parser accepts it under its own name, and before the target
    is processed its value is handed over (with one warning), so the target's type, range and
    required-ness apply to it exactly as to the new spelling."""

    def __init__(self, renamed: Renamed, target: TyperOption) -> None:
        assert not target.is_flag, "a renamed flag needs no value conversion: declare both names"
        super().__init__(
            param_decls=[renamed.old, f"deprecated_{target.name}"],
            type_descriptor=target.type_descriptor,
            multiple=target.multiple,
            hidden=True,
            expose_value=False,
        )
        self.renamed = renamed
        self.target = target

    def handle_parse_result(
        self, ctx: Any, opts: Mapping[str, Any], args: list[str]
    ) -> tuple[Any, list[str]]:
        # Parameters given on the command line are processed in the order given, before the others:
        # the target (under its new name) either was given too (a conflict) or comes after this one.
        if self.name in opts:
            old, new = self.renamed.old, self.renamed.new
            if self.target.name in opts:
                raise typer.BadParameter(f"give {new} only ({old} is its old name)", ctx, param_hint=old)
            raw = dict(opts).get(self.name)
            warn(f"{old} is deprecated; use {new}")
            convert = self.renamed.convert
            try:
                value = convert(raw) if convert is not None and isinstance(raw, str) else raw
            except typer.BadParameter as e:
                e.ctx, e.param_hint = ctx, old
                raise
            assert isinstance(opts, dict)
            del opts[self.name]
            opts[self.target.name] = value
        return None, args


def _flags_as_flags(params: list[Any]) -> list[Any]:
    """typer 0.29's rich help prints every option's type in its own column, a flag's too (``<bool>``),
    as if the flag took a value; an empty metavar leaves the column blank for flags."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """Every ``ketapump`` command: flags shown as flags, and the hidden aliases of its renamed options
    (a subclass per command from :func:`command_class`)."""

    renamed: ClassVar[tuple[Renamed, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        by_spelling = {opt: p for p in self.params if isinstance(p, TyperOption) for opt in p.opts}
        self.params += [_DeprecatedAlias(r, by_spelling[r.new]) for r in self.renamed]

    def get_params(self, ctx: Any) -> list[Any]:  # ctx: typer's vendored click Context
        return _flags_as_flags(super().get_params(ctx))


def command_class(*renamed: Renamed) -> type[Command]:
    """The command class of a command whose options ``renamed`` lists (``app.command(cls=...)``)."""
    return type("Command", (Command,), {"renamed": renamed})


class Group(TyperGroup):
    """Every ``ketapump`` command group: its own options (``--help``, ``--version``) shown as flags."""

    def get_params(self, ctx: Any) -> list[Any]:  # ctx: typer's vendored click Context
        return _flags_as_flags(super().get_params(ctx))


def command_group(name: str | None = None, *, cls: type[Group] = Group, **settings: Any) -> typer.Typer:
    """A ``ketapump`` command group: help without arguments, flags shown as flags, and help texts
    reflowed as Markdown (the docstrings' line breaks are not the terminal's)."""
    return typer.Typer(name=name, cls=cls, no_args_is_help=True, rich_markup_mode="markdown", **settings)


def module_commands(module_name: str) -> dict[str, Any]:
    """The click commands (and groups) the CLI module ``module_name`` registers with its
    ``register_cli(app)``, by name. typer builds them on a group made like the root one
    (:func:`command_group`: the same help rendering and error settings), so they are what
    registering them on the root would have made."""
    module = importlib.import_module(module_name)
    carrier = command_group()
    module.register_cli(carrier)
    return dict(typer.main.get_group(carrier).commands)


class _CommandsOnDemand(MutableMapping[str, Any]):
    """A group's commands by name, in ``homes``' order, each module's imported on the first look-up of
    one of its commands (the mapping typer's group keeps, so listing or testing names loads nothing)."""

    def __init__(self, homes: Mapping[str, str], loaded: Mapping[str, Any]) -> None:
        self._names = list(loaded) + [name for name in homes if name not in loaded]
        self._homes = homes
        self._loaded = dict(loaded)

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)  # a user's unknown command: typer says "No such command"
        if name not in self._loaded:
            home = self._homes[name]
            try:
                self._loaded.update(module_commands(home))
            except KeyError as e:  # would pass for an unknown command in the group's ``get``
                raise RuntimeError(f"importing {home} for {name!r} failed: {e!r}") from e
            if name not in self._loaded:  # a mistake in ``homes``
                raise RuntimeError(f"{home} registers no command {name!r}")
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._names.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def lazy_group(homes: Mapping[str, str]) -> type[Group]:
    """The class of a group whose commands live in the modules ``homes`` names (command → module, in
    the help's order): a module is imported when one of its commands runs or the help lists them, so
    a command does not pay for the others' imports at start-up (``qa campaign`` loads neither the
    session engine nor the console)."""

    class LazyGroup(Group):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.commands = _CommandsOnDemand(homes, self.commands)

        def list_commands(self, ctx: Any) -> list[str]:
            # typer's lists ``commands.items()``, which would import every module (e.g. to complete
            # ``ketapump q<TAB>``); the names alone are enough for a list.
            return list(self.commands)

    return LazyGroup


def set_diagnostic_levels(debug: bool) -> None:
    """Levels of the diagnostics stream's loggers: ``--debug`` lets the transports and the simulator
    trace every frame. pymodbus's logger (no transport of ours uses pymodbus; a script beside the
    bridge may) stays quiet unless ``--debug``: the transports report every failure themselves,
    naming the endpoint."""
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    for name in ("ketapump.transport", "ketapump.sim"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.INFO)
