"""The chair card in a real terminal (a pseudo-terminal driven with pexpect): ``ketapump session`` draws
its own session's card live and shows a pause; ``ketapump console URL`` draws every chair of a running
``serve`` and follows a pause made in the API."""

from __future__ import annotations

import datetime
import os
import signal
import sys
from pathlib import Path

import pexpect

from cli_contract import assert_documented
from consolehelpers import serving
from ketapump.clinical import CourseHistory

ENV = {**os.environ, "COLUMNS": "120", "LINES": "60", "TERM": "xterm-256color"}
ENV.pop("NO_COLOR", None)


def spawn(*args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable, ["-m", "ketapump", *args], env=ENV, encoding="utf-8", timeout=60, dimensions=(60, 120)
    )


def test_a_session_on_a_terminal_draws_its_card_live_and_shows_a_pause(tmp_path: Path) -> None:
    CourseHistory.create(tmp_path / "course.sqlite3", at=datetime.datetime.now(datetime.UTC)).close()
    child = spawn(
        "session", "--protocol", "ketamine-depression", "--patient", "p-1", "--weight-kg", "70",
        "--height-cm", "175", "--sex", "male", "--yes", "--time-scale", "5", "--pump", "sim://",
        "--operator", "nurse T",
        "--course-db", str(tmp_path / "course.sqlite3"), "--log", str(tmp_path / "audit.jsonl"),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    try:
        child.expect("p-1 \\(70 kg\\) — ketamine-depression")
        child.expect("infusion")
        for label in (
            "delivered",
            "rate",
            "line pressure",
            "plasma ketamine",
            "model estimate",
            "SBP",
            "SpO₂",
            r"\(band ±20 % ",  # each vital's baseline and the observation's band
        ):
            child.expect(label)
        child.kill(signal.SIGUSR1)  # the operator's pause
        child.expect("PAUSED by operator")
        child.expect(r"last action: pause by nurse T \(signal\): done")
        child.kill(signal.SIGUSR2)
        child.expect(r"last action: resume by nurse T \(signal\): done")
    finally:
        child.terminate(force=True)


def test_console_attaches_to_a_running_serve_and_follows_its_chairs(tmp_path: Path) -> None:
    with serving("--demo", "--time-scale", "5", "--out", str(tmp_path / "demo")) as served:
        child = spawn("console", served.url)
        try:
            for name in ("Chair 1", "Chair 2", "Chair 3"):
                child.expect(name)
            child.expect("demo-ben \\(84 kg\\)")
            child.expect("delivered")
            with served.client() as client:
                reply = client.post(
                    "/api/chairs/chair-3/actions/pause", json={"operator": "nurse T", "reason": "restless"}
                )
                assert reply.status_code == 200, reply.text
            child.expect("PAUSED by operator")
            child.expect(r"last action: pause by nurse T \(api\): done")
            child.sendintr()
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0, child.before
        assert_documented(["console", served.url], child.exitstatus, "")
    # The console gone, ``console`` says so and exits 69.
    child = spawn("console", served.url)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == os.EX_UNAVAILABLE and "cannot reach the console" in child.before
