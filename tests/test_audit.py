"""The audit log: durable hash chain, one writer per file, tamper detection, structlog and CLI wiring.

Everything runs against real files in ``tmp_path``; the only substitutions are OS-level (a counting or
failing ``os.fsync``) to observe or provoke what a disk does.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cli_contract import assert_documented
from fshelpers import ketapump_on_a_small_disk
from ketapump.bridge.audit import (
    GENESIS_HASH,
    AuditWriter,
    Seal,
    VerifyResult,
    audit_logger,
    canonical_json,
    configure_diagnostics,
    record_group,
    record_hash,
    remove_diagnostics,
    verify,
)
from ketapump.bridge.auditkey import load_key
from ketapump.cli import app
from ketapump.errors import AuditWriteError, KetapumpError
from simhelpers import ketapump


@pytest.fixture(autouse=True)
def _isolation() -> Iterator[None]:
    """Every test starts with no open writers, no bound contextvars and no diagnostics handlers."""
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
    remove_diagnostics()
    for writer in list(AuditWriter._registry.values()):
        writer.close()


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in _lines(path)]


def _write_chain(path: Path, n: int = 5) -> AuditWriter:
    """A log_opened record followed by ``n`` rate_set records (lines 2..n+1), closed again (log_closed,
    line n+2)."""
    writer = AuditWriter.open(path)
    for i in range(n):
        writer.write("rate_set", pump_id="p1", rate_ml_h=1.5 + i, operator="op-7")
    writer.close()
    return writer


def _run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["log", "verify", *args])
    assert_documented(["log", "verify", *args], result.exit_code, result.stderr)
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------------------


def test_chain_verifies_and_records_are_well_formed(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = _write_chain(log, 5)
    result = verify(log)
    assert result == VerifyResult(True, 7, writer.last_hash, None, "", "ok", writer.key_id)
    recs = _records(log)
    assert [r["seq"] for r in recs] == list(range(7))
    assert recs[0]["event"] == "log_opened"
    assert recs[0]["prev"] == GENESIS_HASH
    assert recs[0]["chain_from"] is None
    assert recs[0]["key_id"] == writer.key_id == load_key().key_id
    assert (recs[-1]["event"], recs[-1]["records"]) == ("log_closed", 7)
    for before, rec in itertools.pairwise(recs):
        assert rec["prev"] == before["hash"]
    for line, rec in zip(_lines(log), recs, strict=True):
        assert line == canonical_json(rec) + "\n"
        body = {k: v for k, v in rec.items() if k not in {"hash", "mac"}}
        assert rec["hash"] == record_hash(str(rec["prev"]), body)
        assert load_key().verifies(str(rec["hash"]), str(rec["mac"]))
        assert str(rec["timestamp"]).endswith("Z")
        assert isinstance(rec["mono_ns"], int)
    assert [r["mono_ns"] for r in recs] == sorted(r["mono_ns"] for r in recs)  # type: ignore[type-var]


def test_cli_reports_ok_with_record_count_and_final_hash(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = _write_chain(log, 3)
    code, out, err = _run_cli(str(log))
    assert code == 0, err
    assert out.strip() == f"OK: 5 records, final hash {writer.last_hash}"


def _edit_field(path: Path) -> int:
    lines = _lines(path)
    rec = json.loads(lines[2])
    rec["rate_ml_h"] = 99.0  # plausible-looking edit that keeps the line canonical
    lines[2] = canonical_json(rec) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    return 3


def _delete_line(path: Path) -> int:
    lines = _lines(path)
    del lines[2]
    path.write_text("".join(lines), encoding="utf-8")
    return 3  # the line after the gap


def _swap_lines(path: Path) -> int:
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines), encoding="utf-8")
    return 3


def _truncate_last(path: Path) -> int:
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    return len(_lines(path))


def _non_json(path: Path) -> int:
    lines = _lines(path)
    lines[1] = "rate set to 5 ml/h\n"
    path.write_text("".join(lines), encoding="utf-8")
    return 2


def _reformat(path: Path) -> int:
    lines = _lines(path)
    lines[4] = json.dumps(json.loads(lines[4]), sort_keys=True) + "\n"  # same content, spaces added
    path.write_text("".join(lines), encoding="utf-8")
    return 5


@pytest.mark.parametrize(
    ("damage", "reason_part"),
    [
        (_edit_field, "hash mismatch"),
        (_delete_line, "seq 3 follows seq 1 (expected 2)"),
        (_swap_lines, "seq 3 follows seq 1 (expected 2)"),
        (_truncate_last, "incomplete last write"),
        (_non_json, "not valid JSON"),
        (_reformat, "not in canonical form"),
    ],
    ids=["edited-field", "deleted-line", "swapped-lines", "truncated-last-line", "non-json", "reformatted"],
)
def test_damage_is_reported_at_the_first_bad_line(
    tmp_path: Path, damage: Callable[[Path], int], reason_part: str
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 6)
    bad_line = damage(log)
    result = verify(log)
    assert not result.ok
    assert result.bad_line == bad_line
    assert reason_part in result.reason
    assert result.records == bad_line - 1
    code, out, err = _run_cli(str(log))
    assert code == os.EX_DATAERR
    assert out == ""
    assert err.strip() == f"ketapump: {log}: line {bad_line}: {result.reason}"


def test_deleting_the_first_line_is_reported_at_line_1(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 2)
    log.write_text("".join(_lines(log)[1:]), encoding="utf-8")
    result = verify(log)
    assert (result.ok, result.bad_line) == (False, 1)
    assert "expected 'log_opened' seq 0" in result.reason


def _rechain(lines: list[str], start: int) -> list[str]:
    """What someone without the key can do: recompute every SHA-256 from line ``start`` (0-based) on."""
    out = lines[:start]
    prev = json.loads(lines[start - 1])["hash"] if start else GENESIS_HASH
    for line in lines[start:]:
        rec = json.loads(line)
        rec["prev"] = prev
        rec["hash"] = prev = record_hash(prev, {k: v for k, v in rec.items() if k not in {"hash", "mac"}})
        out.append(canonical_json(rec) + "\n")
    return out


def test_an_edit_rechained_to_the_end_is_caught_as_forged(tmp_path: Path) -> None:
    """An editor who recomputes the edited record's hash and every later link still lacks the key."""
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 4)
    lines = _lines(log)
    rec = json.loads(lines[2])
    rec["rate_ml_h"] = 0.1
    lines[2] = canonical_json(rec) + "\n"
    log.write_text("".join(_rechain(lines, 2)), encoding="utf-8")
    result = verify(log)
    assert (result.ok, result.status, result.bad_line, result.records) == (False, "forged", 3, 2)
    assert "forged (bad MAC)" in result.reason
    code, _, err = _run_cli(str(log))
    assert code == os.EX_DATAERR and f"{log}: line 3: forged (bad MAC)" in err


def test_a_forged_record_appended_with_its_hash_recomputed_is_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 3)
    lines = _lines(log)
    forged = json.loads(lines[-1]) | {"event": "rate_set", "rate_ml_h": 1.0, "seq": len(lines)}
    lines.append(canonical_json(forged) + "\n")
    log.write_text("".join(_rechain(lines, len(lines) - 1)), encoding="utf-8")
    result = verify(log)
    assert (result.status, result.bad_line, result.records) == ("forged", len(lines), len(lines) - 1)


def test_dropped_closing_records_are_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = _write_chain(log, 3)
    lines = _lines(log)
    log.write_text("".join(lines[:-2]), encoding="utf-8")  # a whole-line cut: every record still authentic
    result = verify(log)
    assert (result.ok, result.status, result.records) == (False, "closing_missing", 3)
    assert "closing records missing after record 3" in result.reason
    # A seal stored elsewhere when the log was closed catches a cut back to an earlier closed state too.
    log.write_text("".join(lines), encoding="utf-8")
    assert verify(log, seal=Seal(writer.next_seq, writer.last_hash, "the course history")).ok
    sealed = verify(log, seal=Seal(writer.next_seq + 2, "0" * 64, "the course history"))
    assert sealed.status == "closing_missing"
    assert "the course history recorded 7 records" in sealed.reason


def test_a_log_written_with_another_key_cannot_be_authenticated(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    other = load_key(tmp_path / "other.key", create=True)
    writer = AuditWriter.open(log, key=other)
    writer.write("rate_set", rate_ml_h=1.0)
    writer.close()
    assert verify(log, key=other).ok
    result = verify(log)
    assert (result.ok, result.status, result.bad_line) == (False, "unauthenticated", 1)
    assert other.key_id in result.reason


def test_empty_file_fails_verification(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.touch()
    result = verify(log)
    assert (result.ok, result.bad_line, result.final_hash) == (False, 1, None)
    assert "empty file" in result.reason


def test_cli_missing_file_exits_noinput(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    code, out, err = _run_cli(str(missing))
    assert code == os.EX_NOINPUT
    assert out == ""
    assert f"{missing}: no such file" in err


def test_cli_in_a_real_process(tmp_path: Path) -> None:
    """The exit code survives a real interpreter exit, not just CliRunner's bookkeeping."""
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 4)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return ketapump("log", "verify", *args, timeout=60)

    ok = run(str(log))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: 6 records, final hash ")
    _delete_line(log)
    bad = run(str(log))
    assert bad.returncode == 65
    assert bad.stderr.startswith(f"ketapump: {log}: line 3: ")
    assert run(str(tmp_path / "missing.jsonl")).returncode == 66


# --------------------------------------------------------------------------------------------------------
# Re-opening, chaining files, the registry
# --------------------------------------------------------------------------------------------------------


def test_reopen_continues_seq_and_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    first = _write_chain(log, 3)
    second = AuditWriter.open(log)
    assert second is not first
    assert second.next_seq == 6  # 0..4 written (4: log_closed), seq 5 is the log_reopened record
    second.write("alarm_raised", alarm="occlusion")
    second.close()
    recs = _records(log)
    assert [r["seq"] for r in recs] == list(range(8))
    assert recs[5]["event"] == "log_reopened"
    assert recs[5]["prev"] == first.last_hash
    assert verify(log).ok


def test_reopen_refuses_a_file_with_a_truncated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _write_chain(log, 2)
    log.write_bytes(log.read_bytes()[:-7])
    with pytest.raises(AuditWriteError, match="last line is incomplete") as info:
        AuditWriter.open(log)
    assert info.value.path == str(log.resolve())


def test_new_file_chains_from_the_previous_one(tmp_path: Path) -> None:
    old, new = tmp_path / "audit-1.jsonl", tmp_path / "audit-2.jsonl"
    old_writer = _write_chain(old, 3)
    writer = AuditWriter.open(new, chain_from=old)
    writer.write("session_started", session_id="s-2")
    writer.close()
    head = _records(new)[0]
    assert head["event"] == "log_opened"
    assert head["seq"] == 0
    assert head["prev"] == old_writer.last_hash
    assert head["chain_from"] == str(old)
    assert head["chain_from_hash"] == old_writer.last_hash
    assert verify(new, expect_prev=verify(old).final_hash).ok
    wrong = verify(new, expect_prev=GENESIS_HASH)
    assert (wrong.ok, wrong.bad_line) == (False, 1)
    assert "expected previous hash" in wrong.reason
    code, _, err = _run_cli(str(new), "--expect-prev", GENESIS_HASH)
    assert code == 65
    assert f"{new}: line 1: " in err
    code, _, _ = _run_cli(str(new), "--expect-prev", old_writer.last_hash)
    assert code == 0


def test_chaining_from_a_file_still_open_is_refused(tmp_path: Path) -> None:
    old = AuditWriter.open(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="still open"):
        AuditWriter.open(tmp_path / "b.jsonl", chain_from=tmp_path / "a.jsonl")
    old.close()


def test_same_path_returns_the_same_writer(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    link = tmp_path / "link.jsonl"
    link.symlink_to(log)
    assert AuditWriter.open(log) is writer
    assert AuditWriter.open(str(log)) is writer
    assert AuditWriter.open(tmp_path / "sub" / ".." / "audit.jsonl") is writer
    assert AuditWriter.open(link) is writer
    writer.close()
    assert AuditWriter.open(log) is not writer


def test_a_second_process_cannot_fork_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    AuditWriter.open(log)
    script = (
        "import sys\n"
        "from ketapump.bridge.audit import AuditWriter\n"
        "from ketapump.errors import AuditWriteError\n"
        "try:\n"
        "    AuditWriter.open(sys.argv[1])\n"
        "except AuditWriteError as e:\n"
        "    print(e)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(log)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 3, proc.stderr
    assert "locked by another process" in proc.stdout


def test_concurrent_threads_leave_one_valid_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    n_threads, per_thread = 8, 200
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            writer = AuditWriter.open(log)  # every thread asks the registry: one shared instance
            barrier.wait()
            for i in range(per_thread):
                writer.write("telemetry_summary", thread=t, i=i, volume_ml=i * 0.1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    AuditWriter.open(log).close()
    result = verify(log)
    assert result.ok, result
    assert result.records == 2 + n_threads * per_thread
    recs = _records(log)[1:-1]
    for t in range(n_threads):
        assert [r["i"] for r in recs if r["thread"] == t] == list(range(per_thread))


# --------------------------------------------------------------------------------------------------------
# Durability and failure
# --------------------------------------------------------------------------------------------------------


def test_fsync_per_record_and_directory_on_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    synced: list[str] = []

    def counting_fsync(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    writer = AuditWriter.open(tmp_path / "audit.jsonl")
    assert synced == ["dir", "file"]  # directory entry made durable, then the log_opened record
    synced.clear()
    for i in range(10):
        writer.write("pump_ack", i=i)
    assert synced == ["file"] * 10


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_fails_open_naming_the_path(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(AuditWriteError) as info:
            AuditWriter.open(ro / "audit.jsonl")
    finally:
        ro.chmod(0o755)
    assert str(ro / "audit.jsonl") in str(info.value)


def test_missing_directory_fails_open_naming_the_path(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "audit.jsonl"
    with pytest.raises(AuditWriteError) as info:
        AuditWriter.open(target)
    assert info.value.path == str(target)
    assert str(target) in str(info.value)
    assert target.name not in {p.name for p in tmp_path.iterdir()}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_device_is_not_an_audit_log() -> None:
    with pytest.raises(AuditWriteError) as info:
        AuditWriter.open("/dev/full")
    assert info.value.path == "/dev/full"
    assert "is not a regular file" in str(info.value)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, KetapumpError)
    assert "/dev/full" not in AuditWriter._registry  # a failed open leaves nothing behind


def test_a_full_disk_mid_run_leaves_a_log_that_verifies_up_to_its_marked_end(tmp_path: Path) -> None:
    """A real run whose log is on a 64 KiB file system: the write that finds the disk full is cut back,
    the writer marks the end in the space it kept, the pump is stopped, and the log verifies (exit 0)
    up to the mark instead of ending in half a record."""
    mount, kept = tmp_path / "small", tmp_path / "kept"
    done = ketapump_on_a_small_disk(
        mount,
        64,
        kept,
        "run",
        "--pump",
        "sim://",
        "--rate-ml-h",
        "60",
        "--volume-ml",
        "30",
        "--log",
        str(mount / "run.jsonl"),
    )  # fmt: skip  (a 30-min run logs ~140 KB: the disk fills at about half of it)
    assert done.returncode == os.EX_IOERR, done.stderr
    assert "No space left on device (the log's end is marked); the pump was told to stop" in done.stderr
    log = kept / "run.jsonl"
    assert log.read_bytes().endswith(b"\n")
    result = verify(log)
    assert (result.ok, result.status) == (True, "write_failed"), result
    failed, closed = _records(log)[-2:]
    assert (failed["event"], failed["error"], closed["event"]) == (
        "audit_write_failed",
        "No space left on device",
        "log_closed",
    )
    assert failed["seq"] == failed["failed_seq"] and closed["records"] == result.records
    assert failed["lost_records"] >= 1  # a tick's group commit: all of its records, none on disk
    code, out, _ = _run_cli(str(log))
    assert code == 0 and "incomplete tail marked by its writer" in out


def test_a_group_commit_that_finds_the_disk_full_is_cut_back_and_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick's records fail together: the chain goes back to the last record on disk, the mark names the
    first lost record and how many were lost, and the file verifies up to the mark."""
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    writer.write("session_started", rate_ml_h=5.0)
    on_disk = writer.next_seq
    real_write, calls = os.write, [0]

    def full_once(fd: int, data: bytes | memoryview) -> int:
        calls[0] += 1
        if calls[0] == 1:  # the group's one write: half of it lands, then the disk is full
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with pytest.raises(AuditWriteError, match="No space left on device"), record_group():
        for i in range(4):
            writer.write("state_transition", i=i)
        monkeypatch.setattr(os, "write", full_once)
    monkeypatch.undo()
    writer.close()
    failed, closed = _records(log)[-2:]
    assert (failed["event"], failed["seq"], failed["failed_seq"]) == ("audit_write_failed", on_disk, on_disk)
    assert (failed["failed_event"], failed["lost_records"]) == ("state_transition", 4)
    assert closed["event"] == "log_closed" and closed["records"] == on_disk + 2
    result = verify(log)
    assert (result.ok, result.status, result.records) == (True, "write_failed", on_disk + 2), result


def test_write_failure_is_sticky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    writer.write("infusion_started", rate_ml_h=5.0)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", failing_fsync)
        with pytest.raises(AuditWriteError) as info:
            writer.write("rate_set", rate_ml_h=6.0)
    assert info.value.path == str(log)
    assert str(log) in str(info.value)
    assert "Input/output error" in info.value.detail
    assert writer.failed is info.value
    # The disk works again, but the chain may have a hole: the writer stays refused.
    with pytest.raises(AuditWriteError, match="refusing to write after an earlier failure"):
        writer.write("rate_set", rate_ml_h=6.0)
    assert AuditWriter.open(log) is writer  # still the registered (failed) writer until closed


def test_write_failure_when_the_fd_is_gone(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    os.close(writer._fd)  # the descriptor vanishes under the writer (EBADF on write)
    with pytest.raises(AuditWriteError, match="Bad file descriptor"):
        writer.write("rate_set", rate_ml_h=1.0)
    with pytest.raises(AuditWriteError, match="refusing"):
        writer.write("rate_set", rate_ml_h=1.0)


def test_write_after_close_is_refused(tmp_path: Path) -> None:
    with AuditWriter.open(tmp_path / "audit.jsonl") as writer:
        writer.write("session_started")
    with pytest.raises(AuditWriteError, match="closed"):
        writer.write("session_ended")


def test_non_finite_values_are_written_as_valid_json(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    writer.write(
        "telemetry_summary",
        pressure_kpa=math.nan,
        rate=math.inf,
        low=-math.inf,
        nested={"v": [1.0, math.nan]},
    )
    line = _lines(log)[-1]
    for token in ("NaN", "Infinity"):
        assert token not in line

    def reject(token: str) -> object:
        raise AssertionError(f"{token} written")

    rec = json.loads(line, parse_constant=reject)
    assert (rec["pressure_kpa"], rec["rate"], rec["low"], rec["nested"]) == (
        "nan",
        "inf",
        "-inf",
        {"v": [1.0, "nan"]},
    )
    writer.close()
    assert verify(log).ok


def test_field_values_round_trip_through_the_hash(tmp_path: Path) -> None:
    """Tuples, paths, non-str keys and lone surrogates are normalised so verify recomputes the same hash."""
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    writer.write("odd_values", t=(1, 2), p=tmp_path, m={1: "a"}, s="bad\udc80", big=10**30, tiny=1e-300)
    writer.close()
    assert verify(log).ok


def test_bad_event_names_and_reserved_fields_are_rejected(tmp_path: Path) -> None:
    writer = AuditWriter.open(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match="snake_case"):
        writer.write("Rate set to 5")
    with pytest.raises(ValueError, match="reserved"):
        writer.write("rate_set", seq=3)
    assert verify(tmp_path / "audit.jsonl").records == 1


# --------------------------------------------------------------------------------------------------------
# structlog and diagnostics
# --------------------------------------------------------------------------------------------------------


def test_bound_logger_writes_bound_context(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    audit = audit_logger(writer, session_id="s-1").bind(pump_id="p-9")
    audit.info("rate_command", rate_ml_h=5.0, intent=True)
    audit.warning("alarm_raised", alarm="occlusion", pressure_kpa=math.nan)
    rec1, rec2 = _records(log)[1:]
    assert rec1["event"] == "rate_command"
    assert (rec1["session_id"], rec1["pump_id"], rec1["rate_ml_h"], rec1["level"]) == (
        "s-1",
        "p-9",
        5.0,
        "info",
    )
    assert (rec2["level"], rec2["pressure_kpa"], rec2["session_id"]) == ("warning", "nan", "s-1")
    assert rec2["seq"] == rec1["seq"] + 1  # type: ignore[operator]
    writer.close()
    assert verify(log).ok


def test_contextvars_binding_reaches_the_audit_record(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = audit_logger(AuditWriter.open(log))
    structlog.contextvars.bind_contextvars(session_id="s-ctx", pump_id="p-ctx")
    audit.info("operator_action", action="pause")
    structlog.contextvars.unbind_contextvars("pump_id")
    audit.info("operator_action", action="resume")
    rec1, rec2 = _records(log)[1:]
    assert (rec1["session_id"], rec1["pump_id"], rec1["action"]) == ("s-ctx", "p-ctx", "pause")
    assert rec2["session_id"] == "s-ctx"
    assert "pump_id" not in rec2


def test_exception_is_recorded_as_structured_traceback(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = audit_logger(AuditWriter.open(log))
    secret = "patient-name"  # a local that must not leak into the record
    try:
        raise RuntimeError("pump did not answer")
    except RuntimeError:
        audit.exception("command_failed", command="start")
    rec = _records(log)[-1]
    assert rec["level"] == "error"
    assert "pump did not answer" in json.dumps(rec["exception"])
    assert secret not in _lines(log)[-1]
    AuditWriter.open(log).close()
    assert verify(log).ok


def test_audit_write_error_propagates_through_the_logger(tmp_path: Path) -> None:
    writer = AuditWriter.open(tmp_path / "audit.jsonl")
    audit = audit_logger(writer, pump_id="p1")
    os.close(writer._fd)
    with pytest.raises(AuditWriteError):
        audit.info("rate_command", rate_ml_h=1.0)


def test_diagnostics_go_to_their_own_stream_not_the_audit_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit = audit_logger(AuditWriter.open(log), pump_id="p1")
    stream = io.StringIO()
    configure_diagnostics(stream)
    configure_diagnostics(stream)  # idempotent: still one handler, one line per record
    logging.getLogger("pymodbus").warning("retrying unit %d", 3)
    logging.getLogger("ketapump.transport.modbus").warning("reconnect")
    audit.info("rate_command", rate_ml_h=2.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    diag = json.loads(lines[0])
    assert (diag["event"], diag["level"], diag["logger"]) == ("retrying unit 3", "warning", "pymodbus")
    assert "timestamp" in diag
    assert json.loads(lines[1])["logger"] == "ketapump.transport.modbus"
    audit_text = log.read_text(encoding="utf-8")
    assert "retrying" not in audit_text
    assert "reconnect" not in audit_text
    assert "rate_command" not in stream.getvalue()
    AuditWriter.open(log).close()
    assert verify(log).ok


def test_diagnostics_to_a_file_and_never_to_the_audit_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    AuditWriter.open(log)
    with pytest.raises(ValueError, match="audit log"):
        configure_diagnostics(log)
    diag = tmp_path / "diag.jsonl"
    configure_diagnostics(diag)
    logging.getLogger("asyncio").error("loop stalled")
    remove_diagnostics()
    assert json.loads(diag.read_text(encoding="utf-8"))["event"] == "loop stalled"
    assert verify(log).records == 1


# --------------------------------------------------------------------------------------------------------
# Group commit (one write and one fsync per control tick)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every fsync of a regular file, by fd."""
    real_fsync = os.fsync
    synced: list[int] = []

    def counting_fsync(fd: int) -> None:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return synced


def test_a_group_is_chained_at_once_and_written_with_one_fsync_per_commit(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    fsyncs.clear()
    size = log.stat().st_size
    with record_group() as group:
        digests = [writer.write("state_transition", i=i) for i in range(5)]
        assert writer.last_hash == digests[-1] and writer.next_seq == 6  # chained at once ...
        assert log.stat().st_size == size and fsyncs == []  # ... but nothing written yet
        group.commit()
        assert fsyncs == [writer._fd] and len(_lines(log)) == 6
        writer.write("command", rate_ml_h=5.0)  # after the commit: buffered again
        writer.write("command_failed", consecutive=1)
        assert len(_lines(log)) == 6
    assert fsyncs == [writer._fd] * 2 and writer.syncs == 3  # log_opened, the commit, the exit
    writer.close()  # log_closed ends the file
    result = verify(log)
    assert result.ok and result.records == 9 and result.final_hash == writer.last_hash
    assert [r["seq"] for r in _records(log)] == list(range(9))


def test_a_block_inside_an_open_group_joins_it_and_an_empty_group_writes_nothing(
    tmp_path: Path, fsyncs: list[int]
) -> None:
    writer = AuditWriter.open(tmp_path / "audit.jsonl")
    fsyncs.clear()
    with record_group() as outer:
        writer.write("tick")
        with record_group() as inner:
            assert inner is outer
            writer.write("alarm")
        assert fsyncs == []  # the inner block's end is not a commit
    assert len(fsyncs) == 1
    with record_group():
        pass
    assert len(fsyncs) == 1


def test_a_write_from_another_thread_is_durable_when_it_returns(tmp_path: Path, fsyncs: list[int]) -> None:
    # The group is the loop thread's; another thread's write must not wait for its commit. It writes
    # the records buffered so far with its own, in chain order.
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    with record_group():
        writer.write("tick", n=1)
        other = threading.Thread(target=lambda: writer.write("operator_note", text="from another thread"))
        other.start()
        other.join()
        assert [r["event"] for r in _records(log)] == ["log_opened", "tick", "operator_note"]
        writer.write("tick", n=2)
    writer.close()
    assert verify(log).ok and verify(log).records == 5


def test_an_edit_inside_a_group_committed_file_is_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    for tick in range(3):
        with record_group():
            for i in range(4):
                writer.write("state_transition", tick=tick, i=i, delivered_ml=0.1 * i)
    writer.close()
    lines = _lines(log)
    lines[6] = lines[6].replace('"delivered_ml":0.1', '"delivered_ml":0.2')
    log.write_text("".join(lines), encoding="utf-8")
    result = verify(log)
    assert not result.ok and result.bad_line == 7 and "hash mismatch" in result.reason


def test_a_failed_group_commit_raises_and_is_sticky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    # Leaving the block commits: that is where the failure surfaces.
    with pytest.raises(AuditWriteError, match="No space left on device"), record_group():
        writer.write("command", rate_ml_h=5.0)
        monkeypatch.setattr(os, "fsync", failing_fsync)
    monkeypatch.undo()
    with pytest.raises(AuditWriteError, match="refusing to write after an earlier failure"):
        writer.write("command", rate_ml_h=5.0)


def test_close_commits_what_a_group_still_holds(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    writer = AuditWriter.open(log)
    with record_group():
        writer.write("session_ended")
        writer.close()
    assert [r["event"] for r in _records(log)] == ["log_opened", "session_ended", "log_closed"]
    assert verify(log).ok


#: A run of the control loop on the in-process simulator, group-committing to the audit log given as
#: argv[1], that dies by SIGKILL (no cleanup, no flush: a crash) where argv[2] says:
#: ``command:N`` as the N-th rate is being sent to the pump, ``tick:N`` inside the N-th tick's
#: on_tick hook, before that tick commits. Every rate sent to the pump is first appended to argv[3].
CRASHING_RUN = """
import asyncio, os, signal, sys
from ketapump.bridge import AuditWriter, ControlLoop, InfusionPlan, audit_logger, syringe_spec
from ketapump.clock import VirtualClock
from ketapump.config import kernel_config
from ketapump.wire import ReferencePumpDriver, open_transport

log, where, sent = sys.argv[1], sys.argv[2], sys.argv[3]
kind, n = where.split(":")
capacity, diameter = syringe_spec("bd-plastipak-50")
clock = VirtualClock()
driver = ReferencePumpDriver(open_transport("sim://?seed=3", clock=clock))
set_rate, count = driver.set_rate_ml_h, [0, 0]

async def sending(rate):
    count[0] += 1
    if kind == "command" and count[0] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)
    with open(sent, "a") as f:
        f.write(f"{rate!r}\\n")
    await set_rate(rate)

def on_tick(out, telemetry):
    count[1] += 1
    if kind == "tick" and count[1] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)

driver.set_rate_ml_h = sending
config = kernel_config(syringe_diameter_mm=diameter, syringe_capacity_ml=capacity, syringe_fill_ml=capacity)
events = audit_logger(AuditWriter.open(log), session_id="crash")
loop = ControlLoop(driver, config, clock, events, on_tick=on_tick)
asyncio.run(loop.run(InfusionPlan(rate_ml_h=52.5, volume_ml=2.0, syringe_diameter_mm=diameter)))
print("not killed")
"""


def crash(tmp_path: Path, where: str) -> tuple[list[dict[str, object]], list[float]]:
    """Runs :data:`CRASHING_RUN` until it is killed; returns the log's records and the rates sent."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    log, sent = tmp_path / "audit.jsonl", tmp_path / "sent.txt"
    sent.touch()
    run = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(log), where, str(sent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == -9, run.stdout + run.stderr
    records = _records(log)
    result = verify(log)
    # Whole, authentic records only (the crash cut between two group commits); a killed writer never
    # wrote log_closed, and verify says exactly that after the last of them.
    assert result.status == "closing_missing" and result.records == len(records), result
    assert result.bad_line == len(records) + 1 and "the log ends without log_closed" in result.reason
    return records, [float(line) for line in sent.read_text().split()]


def test_a_crash_while_the_pump_is_being_commanded_finds_the_command_on_disk(tmp_path: Path) -> None:
    records, sent = crash(tmp_path, "command:4")  # take-up, the programmed rate, a first trim, this one
    commands = [r for r in records if r["event"] == "command"]
    assert len(sent) == 3 and [c["rate_ml_h"] for c in commands[:3]] == sent
    # The fourth was committed before the pump was to get it: the log is never behind the pump.
    assert len(commands) == 4 and records[-1] is commands[-1]


def test_a_crash_in_a_tick_before_its_commit_loses_that_tick_and_nothing_else(tmp_path: Path) -> None:
    # The run is deterministic (virtual time, seeded pump): a first run finds the tick that ends the
    # take-up (a state transition and a new rate), a second is killed in that tick before it commits.
    reference, _ = crash(tmp_path / "reference", "command:3")
    ended = next(r for r in reference if r.get("cause") == "take_up_done")
    tick = round(float(ended["t_s"]) / 0.1)  # ticks are due every 0.1 s from t = 0
    records, sent = crash(tmp_path / "crashed", f"tick:{tick}")

    def content(r: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in r.items() if k not in {"timestamp", "mono_ns", "prev", "hash", "mac", "pid"}}

    # Everything before the killed tick is on disk, whole and in order; nothing of that tick is.
    assert [content(r) for r in records] == [content(r) for r in reference[: len(records)]]
    assert reference[len(records)] is ended
    # Its new rate never reached the pump, and the log says exactly what the pump was told.
    assert sent == [120.0]
    assert [r["rate_ml_h"] for r in records if r["event"] == "command"] == sent


# --------------------------------------------------------------------------------------------------------
# Tampering with a real session log: every edit is caught
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The lines of a real session's log: ``ketapump run`` of 1 mL on the simulator, as a user runs it."""
    log = tmp_path_factory.mktemp("real") / "run.jsonl"
    done = ketapump("run", "--pump", "sim://", "--rate-ml-h", "60", "--volume-ml", "1", "--log", str(log))
    assert done.returncode == 0, done.stderr
    assert verify(log).ok
    return _lines(log)


def _tweak(value: object) -> object:
    """A different value of the same kind (what an editor would write instead)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.25
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, 0]
    if isinstance(value, dict):
        return {**value, "added": 1}
    return 0


def _renumbered(lines: list[str], start: int) -> list[str]:
    """Lines from ``start`` on given consecutive ``seq`` and recomputed ``prev`` and SHA-256 ``hash``:
    everything an editor without the key can make consistent."""
    out = lines[:start]
    prev = json.loads(lines[start - 1])["hash"] if start else GENESIS_HASH
    seq = json.loads(lines[start - 1])["seq"] + 1 if start else 0
    for line in lines[start:]:
        rec = json.loads(line)
        rec["seq"], rec["prev"] = seq, prev
        rec["hash"] = prev = record_hash(prev, {k: v for k, v in rec.items() if k not in {"hash", "mac"}})
        out.append(canonical_json(rec) + "\n")
        seq += 1
    return out


@st.composite
def _edits(draw: st.DrawFn, lines: list[str]) -> tuple[str, bytes]:
    """One edit of the log (what it is, the edited file): change a field, drop, swap or duplicate a
    record, truncate, or append a forged record; each but truncation optionally re-chained with
    recomputed SHA-256 hashes, as someone without the key would."""
    n = len(lines)
    kind = draw(st.sampled_from(["change", "drop", "swap", "duplicate", "truncate", "append"]))
    rechain = draw(st.booleans())
    edited = list(lines)
    at = draw(st.integers(0, n - 1))
    if kind == "change":
        rec = json.loads(edited[at])
        key = draw(st.sampled_from(sorted(rec)))
        rec[key] = _tweak(rec[key])
        edited[at] = canonical_json(rec) + "\n"
    elif kind == "drop":
        del edited[at]
    elif kind == "swap":
        other = draw(st.integers(0, n - 1).filter(lambda j: edited[j] != edited[at]))
        edited[at], edited[other] = edited[other], edited[at]
        at = min(at, other)
    elif kind == "duplicate":
        edited.insert(at, edited[at])
    elif kind == "append":
        rec = json.loads(edited[draw(st.integers(1, n - 1))])
        rec["delivered_ml"] = draw(st.floats(0.0, 100.0, allow_nan=False))
        edited.append(canonical_json(rec) + "\n")
        at = n
    if kind == "truncate":
        data = "".join(lines).encode("utf-8")
        return f"truncate at byte {at}", data[: draw(st.integers(0, len(data) - 1))]
    if rechain and edited:
        edited = _renumbered(edited, min(at, len(edited) - 1))
    return f"{kind} line {at + 1}{' re-chained' if rechain else ''}", "".join(edited).encode("utf-8")


def test_every_random_edit_of_a_real_session_log_is_rejected(real_log: list[str], tmp_path: Path) -> None:
    """Change, drop, swap, duplicate, truncate or append — with or without every SHA-256 recomputed —
    and ``log verify`` rejects the log: the chain, the MACs and the closing record leave no edit out."""
    target = tmp_path / "edited.jsonl"

    @settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(edit=_edits(real_log))
    def check(edit: tuple[str, bytes]) -> None:
        what, data = edit
        assume(data != "".join(real_log).encode("utf-8"))
        target.write_bytes(data)
        result = verify(target)
        assert not result.ok, f"{what}: accepted as {result.status}"
        assert result.status in {"edited", "forged", "reordered", "truncated", "closing_missing", "empty"}

    check()
