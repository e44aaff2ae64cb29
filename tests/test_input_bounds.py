"""Input that is not what it claims is refused at once, in bounded time and memory, with a clear error.

A protocol that is a symlink to ``/dev/zero`` or a FIFO, a file that is not UTF-8, a file far above
any real data file, a directory: every reader of user-named files (protocols, drug libraries, patient
scripts, vitals recordings, scenarios, audit logs) refuses them without reading past its limit, and
the commands exit with their documented code and no traceback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_contract import assert_documented
from ketapump.bridge import verify
from ketapump.clinical import CsvVitalsFeed, load_library, load_patient_script, load_protocol
from ketapump.errors import ConfigurationError
from ketapump.sim import load_scenario
from ketapump.validation import MAX_RECORDING_BYTES, FileReadError, read_text_file
from simhelpers import new_course_db

#: Memory a refusal may take (bytes traced by tracemalloc): far below any file it refuses.
PEAK_BYTES = 256 * 1024


def _make(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.toml"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)  # nobody ever writes to it: a blocking read would wait for ever
    elif kind == "non-utf8":
        path.write_bytes(b'schema_version = 1\nname = "caf\xe9"\n')
    elif kind == "oversize":  # sparse: above every reader's limit, without filling the disk
        with path.open("wb") as f:
            f.truncate(MAX_RECORDING_BYTES + 1)
    elif kind == "directory":
        path.mkdir()
    return path


KINDS = ("dev-zero", "fifo", "non-utf8", "oversize", "directory")
PROBLEMS = {
    "dev-zero": "is a character device, not a regular file",
    "fifo": "is a FIFO (named pipe), not a regular file",
    "non-utf8": "is not UTF-8 text: byte 0xe9 at offset 30 (line 2)",
    "oversize": f"is {MAX_RECORDING_BYTES + 1} bytes, above the limit of ",
    "directory": "is a directory, not a regular file",
}
READERS: dict[str, Callable[[Path], object]] = {
    "protocol": load_protocol,
    "drug library": load_library,
    "patient script": load_patient_script,
    "scenario": load_scenario,
    "vitals recording": CsvVitalsFeed,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", list(READERS))
def test_every_data_file_reader_refuses_at_once_in_bounded_memory(
    tmp_path: Path, kind: str, reader: str
) -> None:
    path = _make(kind, tmp_path)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(ConfigurationError) as info:
            READERS[reader](path)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < PEAK_BYTES, peak
    assert str(path) in str(info.value) and PROBLEMS[kind] in str(info.value)


def test_a_file_growing_past_its_limit_while_read_is_still_bounded(tmp_path: Path) -> None:
    """The size is checked before reading and the read itself stops at the limit."""
    path = tmp_path / "small.toml"
    path.write_bytes(b"x" * 100)
    with pytest.raises(FileReadError, match="above the limit of 10 bytes"):
        read_text_file(path, limit_bytes=10)
    assert read_text_file(path, limit_bytes=100) == "x" * 100


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "long-line"])
def test_log_verify_refuses_what_is_not_a_log_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    if kind == "long-line":
        path = tmp_path / "long.jsonl"
        path.write_bytes(b"a" * (8 * 1024 * 1024))  # a regular file of one 8 MiB "line"
    else:
        path = _make(kind, tmp_path)
    tracemalloc.start()
    start = time.monotonic()
    try:
        if kind == "long-line":
            result = verify(path)
            assert (result.ok, result.status, result.bad_line) == (False, "edited", 1)
            assert "longer than 1048576 bytes: not a record" in result.reason
        else:
            with pytest.raises(FileReadError, match="not a regular file"):
                verify(path)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 4 * 1024 * 1024, peak  # one record's worth at most, never the file


def _ketapump_in_1_gib(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real command line with its address space capped at 1 GiB: a read of /dev/zero would fail
    with a MemoryError traceback instead of its documented refusal."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "ketapump", *args],
        capture_output=True, text=True, timeout=timeout, preexec_fn=cap, check=False,
    )  # fmt: skip
    assert_documented(args, done.returncode, done.stderr)
    return done


@pytest.mark.parametrize("kind", KINDS)
def test_the_commands_refuse_unreadable_input_with_their_documented_codes(tmp_path: Path, kind: str) -> None:
    path = _make(kind, tmp_path)
    start = time.monotonic()
    dose = _ketapump_in_1_gib("dose", "--protocol", str(path), "--weight-kg", "70")
    assert dose.returncode == os.EX_DATAERR, dose.stderr
    assert PROBLEMS[kind] in dose.stderr and "Traceback" not in dose.stderr
    db = new_course_db(tmp_path / "course.sqlite3")
    log, out = tmp_path / "audit.jsonl", tmp_path / "out"
    for vitals in (f"sim:{path}", f"csv:{path}"):
        session = _ketapump_in_1_gib(
            "session", "--protocol", "ketamine-depression", "--patient", "p-1", "--weight-kg", "70",
            "--vitals", vitals, "--yes", "--operator", "nurse T", "--course-db", str(db), "--log", str(log),
            "--out", str(out),
        )  # fmt: skip
        assert session.returncode == os.EX_DATAERR, session.stderr
        assert PROBLEMS[kind] in session.stderr and "Traceback" not in session.stderr
        assert not log.exists() and not out.exists()  # refused before anything was written
    verify_cli = _ketapump_in_1_gib("log", "verify", str(path))
    expected = os.EX_NOINPUT if kind in {"dev-zero", "fifo", "directory"} else os.EX_DATAERR
    assert verify_cli.returncode == expected, verify_cli.stderr
    assert "Traceback" not in verify_cli.stderr
    assert time.monotonic() - start < 100  # the old readers hung on the FIFO or read 4 GB of zeros
