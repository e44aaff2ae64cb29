"""The command line's conventions (README, "Command-line conventions"), tried as a user would: the
version, ``python -m ketapump``, one name per idea with the old spellings still working, results on
stdout and the rest on stderr, every exit code in the README's tables, flags shown as flags, the
hazard register found wherever ``qa trace`` runs, a readable campaign table with progress."""

from __future__ import annotations

import ast
import inspect
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.main import get_command
from typer.testing import CliRunner

import ketapump
from cli_contract import (
    EVERY_COMMAND,
    allowed_exit_codes,
    assert_documented,
    command_of,
    documented_exit_codes,
)
from ketapump import _core
from ketapump.cli import COMMAND_MODULES, app
from ketapump.cli.common import lazy_group, module_commands
from simhelpers import ketapump as run_cli
from simhelpers import new_course_db

ROOT = Path(__file__).resolve().parent.parent


def commands() -> Iterator[tuple[str, Any]]:
    """Every command of the app as (``qa accuracy``, its click command)."""

    def walk(prefix: str, group: TyperGroup) -> Iterator[tuple[str, Any]]:
        for name, command in group.commands.items():
            path = f"{prefix} {name}".strip()
            if isinstance(command, TyperGroup):
                yield from walk(path, command)
            else:
                yield path, command

    root = get_command(app)
    assert isinstance(root, TyperGroup)
    return walk("", root)


# ----- the version and python -m -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_package_and_the_core_build(flag: str) -> None:
    done = run_cli(flag)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"ketapump {metadata.version('ketapump')}"
    assert lines[1] == f"core {_core.__version__} ({_core.BUILD_PROFILE} build, {_core.__file__})"
    assert _core.BUILD_PROFILE in {"debug", "release"}


def test_python_dash_m_is_the_same_command_line() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    for name in ("sim", "run", "dose", "demo", "session", "log", "course", "qa"):
        assert re.search(rf"│ {name}\s", done.stdout), name
    assert "Usage: python -m ketapump" in done.stdout
    sub = run_cli("qa", "--help")
    assert sub.returncode == 0 and "accuracy" in sub.stdout and "campaign" in sub.stdout


# ----- start-up: a command imports its own module, not the others' -------------------------------------

HOMES = sorted(set(COMMAND_MODULES.values()))


def _cli_modules_loaded(tmp_path: Path, *args: str) -> set[str]:
    """The command modules (``COMMAND_MODULES``' values) a fresh interpreter has imported once
    ``ketapump ARGS`` has finished."""
    found = tmp_path / "modules.txt"
    script = textwrap.dedent(
        f"""
        import sys
        from ketapump.cli import main
        sys.argv = ["ketapump", *{list(args)!r}]
        try:
            main()
        except SystemExit:
            pass
        with open({str(found)!r}, "w") as out:
            out.write("\\n".join(sys.modules))
        """
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert found.exists(), done.stderr
    return set(found.read_text().split("\n")) & set(HOMES)


@pytest.mark.parametrize("name", list(COMMAND_MODULES))
def test_a_command_loads_only_its_own_module(tmp_path: Path, name: str) -> None:
    assert _cli_modules_loaded(tmp_path, name, "--help") == {COMMAND_MODULES[name]}


def test_a_nested_command_and_a_usage_error_load_only_their_own_module(tmp_path: Path) -> None:
    assert _cli_modules_loaded(tmp_path, "qa", "campaign", "--help") == {"ketapump.cli.qa"}
    assert _cli_modules_loaded(tmp_path, "demo", "--bogus") == {"ketapump.cli.clinical"}
    assert _cli_modules_loaded(tmp_path, "nosuch") == set()


def test_the_help_lists_every_command_in_the_tables_order() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^│ ([a-z]+) ", done.stdout, flags=re.MULTILINE)
    assert listed[-len(COMMAND_MODULES) :] == list(COMMAND_MODULES)


@pytest.mark.parametrize(
    ("args", "unknown", "meant"),
    [(("demp",), "demp", "demo"), (("qa", "campain"), "campain", "campaign"), (("nosuch",), "nosuch", None)],
)
def test_an_unknown_command_is_a_usage_error_with_a_suggestion(
    args: tuple[str, ...], unknown: str, meant: str | None
) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert f"No such command '{unknown}'." in done.stderr
    assert (f"Did you mean '{meant}'?" in done.stderr) == (meant is not None)


def test_no_command_shows_the_help() -> None:
    done = run_cli()
    assert done.returncode == 2
    assert "Usage: python -m ketapump [OPTIONS] COMMAND [ARGS]..." in done.stdout + done.stderr
    assert "│ qa " in done.stdout + done.stderr


def test_the_version_loads_no_command_and_the_help_loads_every_one(tmp_path: Path) -> None:
    assert _cli_modules_loaded(tmp_path, "--version") == set()
    assert _cli_modules_loaded(tmp_path, "--help") == set(HOMES)


def test_each_command_module_registers_exactly_the_commands_the_table_gives_it() -> None:
    for home in HOMES:
        listed = {name for name, h in COMMAND_MODULES.items() if h == home}
        assert set(module_commands(home)) == listed, home


def test_a_command_its_module_does_not_register_is_a_loud_error_and_an_unknown_one_none() -> None:
    group = lazy_group({"verify-all": "ketapump.cli.log"})(name="t")
    assert list(group.commands) == ["verify-all"]
    with pytest.raises(RuntimeError, match=re.escape("ketapump.cli.log registers no command 'verify-all'")):
        group.commands["verify-all"]
    assert group.commands.get("nosuch") is None
    assert "verify-all" in group.commands and "nosuch" not in group.commands
    with pytest.raises(KeyError):
        del group.commands["nosuch"]
    del group.commands["verify-all"]
    assert group.commands.get("verify-all") is None and list(group.commands) == []


def test_a_key_error_while_importing_a_command_module_is_not_taken_for_an_unknown_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_command_module.py").write_text("import os\nos.environ['KETAPUMP_NO_SUCH_VARIABLE']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KETAPUMP_NO_SUCH_VARIABLE", raising=False)
    group = lazy_group({"hello": "broken_command_module"})(name="t")
    with pytest.raises(RuntimeError, match="importing broken_command_module for 'hello' failed"):
        group.commands.get("hello")  # what typer's get_command calls: not None, an error


# ----- one name per idea, the old spellings kept ------------------------------------------------------

PUMP_COMMANDS = ("run", "session", "qa accuracy", "qa occlusion")


def test_the_pump_rate_and_time_scale_have_one_name_and_one_default_everywhere() -> None:
    by_path = dict(commands())
    for path in PUMP_COMMANDS:
        options = {p.name: p for p in by_path[path].params if isinstance(p, TyperOption)}
        pump = options["pump"]
        assert pump.opts == ["--pump"] and not pump.required, path
        # qa accuracy states it rather than defaulting to it: a real balance needs the real pump named.
        assert "sim://" in {pump.default, pump.show_default}, path
    for path, command in commands():
        spellings = {opt for p in command.params if not getattr(p, "hidden", False) for opt in p.opts}
        assert not spellings & {"--rate", "--duration", "--threshold", "--settle", "--release"}, path
        if any("rate" in o for o in spellings):
            assert spellings & {"--rate-ml-h"}, (path, spellings)


def test_old_spellings_of_the_accuracy_test_still_work_with_one_warning_each(tmp_path: Path) -> None:
    recording = tmp_path / "balance.csv"
    rows = ["t_s,grams"] + [f"{30 * k},{0.05 * k:.6f}" for k in range(241)]
    recording.write_text("\n".join(rows) + "\n")
    common = ["qa", "accuracy", "--balance", f"csv:{recording}", "--json", "--out", str(tmp_path / "r")]
    old = run_cli(*common, "--rate", "6", "--duration", "120m")
    new = run_cli(*common, "--rate-ml-h", "6", "--duration-min", "120")
    assert old.returncode == new.returncode == 0, old.stderr
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert json.loads(old.stdout) | {"rate_ml_h": 6.0, "duration_min": 120.0} == json.loads(old.stdout)
    assert old.stderr.splitlines() == [
        "ketapump: warning: --rate is deprecated; use --rate-ml-h",
        "ketapump: warning: --duration is deprecated; use --duration-min",
    ]
    assert new.stderr == ""
    # An old value that is not minutes, or both names at once, is a usage error naming the option.
    bad = run_cli(*common, "--rate-ml-h", "6", "--duration", "2h")
    assert bad.returncode == typer_usage_exit() and "'2h' is not a duration in minutes" in bad.stderr
    both = run_cli(*common, "--rate", "6", "--rate-ml-h", "6")
    assert both.returncode == typer_usage_exit() and "give --rate-ml-h only" in both.stderr


def test_old_spellings_of_the_occlusion_test_still_work_with_one_warning_each(tmp_path: Path) -> None:
    done = run_cli(
        "qa", "occlusion", "--rate", "5", "--threshold", "300", "--compliance", "0.002", "--settle", "100",
        "--release", "10", "--json", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["rate_ml_h"], report["threshold_mmhg"], report["compliance_ml_per_mmhg"]) == (
        5,
        300,
        0.002,
    )
    assert report["closed_at_s"] == 100.0  # the line is closed after --settle
    warnings = [line for line in done.stderr.splitlines() if "deprecated" in line]
    assert warnings == [
        f"ketapump: warning: {old} is deprecated; use {new}"
        for old, new in [
            ("--rate", "--rate-ml-h"),
            ("--threshold", "--threshold-mmhg"),
            ("--compliance", "--compliance-ml-per-mmhg"),
            ("--settle", "--settle-s"),
            ("--release", "--release-s"),
        ]
    ]
    # The old spelling's value meets the new option's checks (--release-s is at least 1 s).
    short = run_cli("qa", "occlusion", "--rate-ml-h", "5", "--release", "0.5", "--out", str(tmp_path))
    assert short.returncode == typer_usage_exit() and "--release-s" in short.stderr


def test_old_spellings_are_hidden_from_the_help() -> None:
    for path in ("qa accuracy", "qa occlusion"):
        shown = help_text(path)
        for old in ("--rate ", "--duration ", "--threshold ", "--settle ", "--release ", "--compliance "):
            assert old not in shown, (path, old)
        assert "--rate-ml-h" in shown


def typer_usage_exit() -> int:
    """Usage errors exit 2, as the README's table for every command says."""
    assert 2 in documented_exit_codes()[EVERY_COMMAND]
    return 2


# ----- help -------------------------------------------------------------------------------------------


def help_text(path: str) -> str:
    result = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", ["", *[p for p, _ in commands()]])
def test_help_shows_flags_as_flags_and_states_defaults(path: str) -> None:
    shown = help_text(path)
    assert "<bool>" not in shown
    assert "see README" not in shown and "see docs" not in shown
    command = dict(commands()).get(path)
    flags = [p for p in command.params if isinstance(p, TyperOption) and p.is_flag] if command else []
    rows = shown.splitlines()
    for flag in flags:
        row = next(line for line in rows if re.search(rf"│[\s*]+{flag.opts[0]}\s", line))
        assert not re.search(r"<\w+", row), row  # a flag takes no value: no type column
    if path in PUMP_COMMANDS:
        assert "sim://" in shown and "default" in shown


def test_environment_dependent_defaults_are_stated() -> None:
    for path in ("run", "session"):
        assert "$XDG_STATE_HOME/ketapump/logs/run-<UTC" in help_text(path)
    for path in ("session", "course show", "course note"):
        assert "$XDG_DATA_HOME/ketapump/course.sqlite3" in help_text(path)


# ----- streams and exit codes ------------------------------------------------------------------------


def test_results_go_to_stdout_and_progress_to_stderr(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    infused = run_cli("run", "--rate-ml-h", "60", "--volume-ml", "0.2", "--log", str(log))  # sim:// default
    assert infused.returncode == 0, infused.stderr
    assert infused.stdout.startswith("complete: delivered 0.") and f"audit log: {log}" in infused.stdout
    demo = run_cli("demo", "--out", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stderr
    assert "session complete" in demo.stdout and "session complete" not in demo.stderr
    dose = run_cli("dose", "--protocol", "ketamine-depression", "--weight-kg", "70")
    assert "dose            35.00 mg" in dose.stdout and dose.stderr == ""


def test_a_session_without_yes_and_no_terminal_exits_with_the_pre_check_code(tmp_path: Path) -> None:
    out, log, db = tmp_path / "out", tmp_path / "log.jsonl", new_course_db(tmp_path / "course.sqlite3")
    args = ["session", "--protocol", "ketamine-depression", "--patient", "p", "--weight-kg", "70"]
    args += ["--operator", "nurse T", "--out", str(out), "--log", str(log), "--course-db", str(db)]
    # stdin at its end (an empty pipe, /dev/null), or no stdin at all (its descriptor closed).
    for stdin in (subprocess.PIPE, subprocess.DEVNULL, None):
        done = subprocess.run(
            [sys.executable, "-m", "ketapump", *args],
            input="" if stdin is subprocess.PIPE else None,
            stdin=None if stdin is subprocess.PIPE else subprocess.DEVNULL,
            preexec_fn=None if stdin is not None else lambda: os.close(0),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert_documented(args, done.returncode, done.stderr)
        assert done.returncode == 7, done.stderr
        assert "checklist item not answered: IV placed and patent" in done.stderr
        assert "stdin is not a terminal" in done.stderr and "--yes" in done.stderr
        assert "Aborted" not in done.stderr
        assert not out.exists() and not log.exists()
        unknown = run_cli("course", "show", "p", "--course-db", str(db))  # nothing in the course history
        assert unknown.returncode == os.EX_NOINPUT, unknown.stderr


def test_a_sex_that_is_not_female_or_male_is_a_usage_error() -> None:
    for command in (["dose"], ["session", "--patient", "p", "--yes"]):
        done = run_cli(*command, "--protocol", "ketamine-depression", "--weight-kg", "70", "--sex", "f")
        assert done.returncode == typer_usage_exit()
        assert "'f' is not one of 'female', 'male'" in done.stderr


def test_the_readme_documents_every_exit_code_the_cli_package_can_raise() -> None:
    # Every command's callback, and every function of the CLI package it calls, read for the exit codes
    # it names (os.EX_*, EXIT_*, fail(..., N), typer.Exit(N)) and compared with that command's tables.
    tables = documented_exit_codes()
    names = [path for path, _ in commands()]
    assert set(tables) - {EVERY_COMMAND} <= set(names), "a table names a command that does not exist"
    for path, command in commands():
        raised = exit_codes_of(command.callback)
        assert raised, path
        undocumented = raised - allowed_exit_codes(path)
        assert not undocumented, f"`ketapump {path}` can exit {sorted(undocumented)}: not in the README"


def exit_codes_of(function: Callable[..., Any], seen: set[Any] | None = None) -> set[int]:
    seen = set() if seen is None else seen
    function = inspect.unwrap(function)
    if function in seen:
        return set()
    seen.add(function)
    namespace = function.__globals__
    codes: set[int] = set()
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith(("EX_", "EXIT_")):
            owner = resolve(node.value, namespace)  # os.EX_…, or a QA module's: qa.campaign.EXIT_…
            if owner is not None:
                codes.add(getattr(owner, node.attr))
        elif isinstance(node, ast.Name) and node.id.startswith("EXIT_"):
            codes.add(namespace[node.id])
        elif isinstance(node, ast.Call):
            callee = resolve(node.func, namespace)
            literal = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, int)]
            if callee is typer.Exit or getattr(callee, "__name__", "") == "fail":
                codes.update(literal)
            module = getattr(callee, "__module__", "") or ""
            if inspect.isfunction(callee) and module.startswith(("ketapump.cli", "ketapump.validation")):
                codes |= exit_codes_of(callee, seen)
    return codes


def resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = resolve(node.value, namespace)
        return getattr(owner, node.attr, None)
    return None


def test_the_contract_reader_finds_the_tables_and_the_commands() -> None:
    tables = documented_exit_codes()
    assert {0, 2, 130} <= tables[EVERY_COMMAND]
    assert tables["run"] >= {3, 4, 5, 74} and tables["session"] >= {6, 7}
    assert tables["qa campaign"] >= {1, 70}
    assert command_of(["qa", "campaign", "x"]) == "qa campaign"
    assert command_of(["--version"]) is None and command_of(["run", "--pump", "sim://"]) == "run"
    assert 64 not in allowed_exit_codes("dose")  # sysexits' EX_USAGE is not a ketapump code


def test_default_output_folders_are_ignored_by_git() -> None:
    ignored = set((ROOT / ".gitignore").read_text(encoding="utf-8").splitlines())
    folders = {
        path: p.default
        for path, command in commands()
        for p in command.params
        if isinstance(p, TyperOption) and p.name == "out"
    }
    assert set(folders) >= {"demo", "session", "qa accuracy", "qa occlusion", "qa campaign"}
    for path, folder in folders.items():
        assert f"{folder}/" in ignored, path


# ----- qa trace from anywhere -------------------------------------------------------------------------


def test_qa_trace_finds_the_shipped_register_from_any_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ketapump", "qa", "trace"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "H-OVERDOSE" in done.stdout and done.stderr == ""


def test_qa_trace_installed_without_a_checkout_says_the_test_ids_were_not_checked(tmp_path: Path) -> None:
    # The package alone, as a wheel installs it (no tests/ beside it), run from a folder with no checkout.
    site = tmp_path / "site"
    shutil.copytree(
        Path(ketapump.__file__).parent, site / "ketapump", ignore=shutil.ignore_patterns("__pycache__")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"PYTHONPATH": str(site)}

    def trace(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ketapump", "qa", "trace", *args],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    where = subprocess.run(
        [sys.executable, "-c", "import ketapump; print(ketapump.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site))
    done = trace()
    assert done.returncode == 0, done.stderr
    assert "H-OVERDOSE" in done.stdout
    assert "the test ids were not checked" in done.stderr and "--root" in done.stderr
    # With the checkout named, the ids are checked; a folder that is not one is refused.
    assert trace("--root", str(ROOT)).stderr == ""
    not_a_checkout = trace("--root", str(elsewhere))
    assert not_a_checkout.returncode == os.EX_NOINPUT and "not a ketapump checkout" in not_a_checkout.stderr
    # Another register: its broken links are listed, the shipped one is not used.
    broken = elsewhere / "mine.toml"
    broken.write_text('schema_version = 1\n[[hazard]]\nid = "H-X"\ntitle = "x"\ncontrols = []\n')
    mine = trace("--register", str(broken))
    assert mine.returncode == os.EX_DATAERR and "H-OVERDOSE" not in mine.stdout
    assert f"{broken}: hazard H-X has no risk control" in mine.stderr


# ----- qa campaign ------------------------------------------------------------------------------------


def test_qa_campaign_prints_a_table_and_writes_failing_seeds_only_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run_cli("qa", "campaign", "default", "--runs", "40", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "{" not in done.stdout and "'" not in done.stdout  # no Python dict syntax
    assert re.search(r"^faults injected:\n(  \w+ +\d+\n)+", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^end states:\n(  \w+ +\d+\n)+", done.stdout, re.MULTILINE), done.stdout
    assert done.stdout.rstrip().endswith("no violation; no failing seeds")
    assert not (out / "failing-seeds.json").exists()
    assert json.loads((out / "summary.json").read_text())["failing_seeds"] is None
    assert done.stderr == ""  # no progress bar drawn into a pipe


def test_qa_campaign_draws_progress_on_a_terminal_only(tmp_path: Path) -> None:
    # stderr on a pseudo-terminal, stdout a pipe: the bar is drawn on stderr, the table on stdout.
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketapump", "qa", "campaign", "default", "--runs", "400",
         "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=terminal, text=True,
        env=os.environ | {"COLUMNS": "100", "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's last writer has gone
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert re.search(rb"campaign.*\d+/400.{0,20}runs", drawn), drawn[-500:]
    assert "no violation" in stdout and "campaign" not in stdout.splitlines()[-1]
