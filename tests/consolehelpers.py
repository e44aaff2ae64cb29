"""Helpers for the console's tests: a real ``ketapump serve`` process on loopback, its clinic file, and
reading its event stream with httpx."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cli_contract import assert_documented
from ketapump.clinical import CourseHistory
from ketapump.clinical.course import near_patient_ids

#: The tests' time scale: the infusion moves (a 40-min infusion takes 8 min); each chair's pump watchdog
#: outlasts the serve's shared-loop jitter (console.SHARED_LOOP_JITTER_S, real time).
TIME_SCALE = 5.0
SIM_PUMP = "sim://?seed={seed}"
READY_TIMEOUT_S = 60.0


def clinic_file(
    tmp_path: Path,
    *,
    chairs: int = 1,
    time_scale: float = TIME_SCALE,
    extra: str = "",
    vitals: str | None = None,
) -> Path:
    """A clinic of ``chairs`` simulated chairs, its records under ``tmp_path``; ``vitals``: every chair's
    vitals feed (default: the demo patient)."""
    text = [
        "schema_version = 1",
        "[clinic]",
        'name = "test clinic"',
        f'course_db = "{tmp_path / "course.sqlite3"}"',
        f'log_dir = "{tmp_path / "logs"}"',
        f'out_dir = "{tmp_path / "reports"}"',
        f"time_scale = {time_scale}",
        extra,
    ]
    for n in range(1, chairs + 1):
        text += [
            "[[chair]]",
            f'id = "chair-{n}"',
            f'name = "Chair {n}"',
            f'pump = "{SIM_PUMP.format(seed=n)}"',
            *([f'vitals = "{vitals}"'] if vitals else []),
        ]
    path = tmp_path / "clinic.toml"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    course = tmp_path / "course.sqlite3"
    if not course.exists():  # a course history is created explicitly (ketapump course init)
        CourseHistory.create(course, at=datetime.datetime.now(datetime.UTC)).close()
    return path


@dataclass
class Served:
    url: str
    ready: dict[str, Any]
    process: subprocess.Popen[str]
    args: list[str]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=15.0, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Stops the server with ``sig``; its exit code (documented) and its stderr."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _out, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _out, err = self.process.communicate()
            raise AssertionError(f"serve did not stop within 30 s of {sig}: {err[-2000:]}") from None
        if sig != signal.SIGKILL:
            assert_documented(self.args, self.process.returncode, err)
        return self.process.returncode, err


def start_serve(*args: str, env: dict[str, str] | None = None) -> Served:
    """Starts ``ketapump serve ARGS --port 0`` and waits for its ready line (stdout's first line)."""
    argv = ["serve", *args, "--port", "0"] if "--port" not in args else ["serve", *args]
    process = subprocess.Popen(
        [sys.executable, "-m", "ketapump", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line:
                info = json.loads(line)
                return Served(info["url"], info, process, argv)
        if process.poll() is not None:
            _out, err = process.communicate()
            raise AssertionError(f"serve exited {process.returncode} before it was ready: {err[-3000:]}")
    process.kill()
    raise AssertionError("serve was not ready within 60 s")


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    served = start_serve(*args, env=env)
    try:
        yield served
    finally:
        if served.process.poll() is None:
            code, err = served.stop()
            assert code == 0, err[-3000:]


def patient_ids(count: int) -> list[str]:
    """``count`` patient ids no two of which are one typo apart (``p-10`` and ``p-11`` are: a session
    for the second waits for a ``new_patient`` reason once the first is recorded)."""
    ids = [f"p{n:02d}-{n:02d}" for n in range(1, count + 1)]  # two digits differ between any two
    assert not any(near_patient_ids(i, ids) for i in ids)
    return ids


def start_session(client: httpx.Client, chair: str = "chair-1", **body: Any) -> httpx.Response:
    request = {
        "operator": "nurse A",
        "patient": {"id": "p-1", "weight_kg": 70.0, "height_cm": 175.0, "sex": "male"},
        "checklist": "confirmed",
    } | body
    return client.post(f"/api/chairs/{chair}/session", json=request)


def events(
    client: httpx.Client, path: str, *, seconds: float, stop_when: Any = None
) -> list[tuple[str, dict[str, Any]]]:
    """The stream's events for ``seconds`` (or until ``stop_when(kind, data)``); then it hangs up."""
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + seconds
    with client.stream("GET", path, timeout=httpx.Timeout(15.0, read=5.0)) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        kind, data = "message", []
        for line in reply.iter_lines():
            if time.monotonic() > deadline:
                break
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                got.append((kind, json.loads("\n".join(data))))
                if stop_when is not None and stop_when(kind, got[-1][1]):
                    break
                kind, data = "message", []
    return got


def wait_for(check: Any, *, timeout: float = 60.0, every: float = 0.2) -> Any:
    """Polls ``check()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {check}")
        time.sleep(every)


def start_all_chairs(client: httpx.Client, chairs: int) -> None:
    """Starts a session on each of ``chairs`` chairs (``chair-1``…), each a different patient of 70 kg
    (:func:`patient_ids`), and waits until every chair's pump runs."""
    for n, patient in enumerate(patient_ids(chairs), start=1):
        reply = start_session(client, f"chair-{n}", patient={"id": patient, "weight_kg": 70.0})
        assert reply.status_code == 201, reply.text
    wait_all_running(client)


def wait_all_running(client: httpx.Client, *, timeout: float = 120.0) -> None:
    """Waits until every chair's pump runs; if one does not, fails naming each such chair with its phase
    and the questions it waits on."""

    def stalled() -> list[tuple[str, Any, Any]]:
        cards = client.get("/api/chairs").json()
        return [(c["chair"], c["phase"], c["questions"]) for c in cards if c["pump_state"] != "running"]

    try:
        wait_for(lambda: not stalled(), timeout=timeout)
    except AssertionError:
        assert stalled() == []  # which chairs, in which phase, waiting on which question


def audit_records(log: str) -> list[dict[str, Any]]:
    with open(log, encoding="utf-8") as f:
        return [json.loads(line) for line in f]
