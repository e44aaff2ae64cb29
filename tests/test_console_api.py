"""The console's HTTP API against a real ``ketapump serve`` (uvicorn) on loopback, driven with httpx:
sessions on simulated chairs, the event stream, operator actions with reasons, refusals with every
finding, the token beyond loopback, and clients that disconnect or stall without touching the infusion."""

from __future__ import annotations

import datetime
import itertools
import math
import os
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from consolehelpers import (
    audit_records,
    clinic_file,
    events,
    serving,
    start_all_chairs,
    start_serve,
    start_session,
    wait_for,
)
from ketapump.clinical import CourseHistory
from simhelpers import ketapump as run_cli


def card(client: httpx.Client, chair: str = "chair-1") -> dict[str, Any]:
    reply = client.get(f"/api/chairs/{chair}")
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def card_when(
    client: httpx.Client, condition: Any, chair: str = "chair-1", timeout: float = 60.0
) -> dict[str, Any]:
    """The chair's card once ``condition(card)`` holds."""

    def check() -> dict[str, Any] | None:
        c = card(client, chair)
        return c if condition(c) else None

    return wait_for(check, timeout=timeout)  # type: ignore[no-any-return]


def infusing(client: httpx.Client, chair: str = "chair-1") -> dict[str, Any] | None:
    c = card(client, chair)
    return c if c["pump_state"] == "running" and c["phase"] == "infusion" else None


def act(
    client: httpx.Client, action: str, reason: str = "", chair: str = "chair-1", **body: Any
) -> httpx.Response:
    return client.post(
        f"/api/chairs/{chair}/actions/{action}", json={"operator": "nurse A", "reason": reason} | body
    )


# ----- a session, its events, its actions --------------------------------------------------------------


def test_a_session_on_a_simulated_chair_streams_its_events_and_takes_actions_with_reasons(
    tmp_path: Path,
) -> None:
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        assert client.get("/api/chairs").json()[0]["state"] == "idle"
        started = start_session(client)
        assert started.status_code == 201, started.text
        session = started.json()["session"]
        assert session["patient"]["id"] == "p-1" and session["started_by"] == "nurse A"
        assert session["source"] == "api"
        wait_for(lambda: infusing(client))

        # The stream: the card first, then typed events; telemetry at >= 2 Hz per chair.
        got = events(client, "/api/chairs/chair-1/events", seconds=4.0)
        assert got[0][0] == "chair" and got[0][1]["chair"] == "chair-1"
        ticks = [d for k, d in got if k == "tick"]
        assert len(ticks) >= 6, [k for k, _ in got]
        assert all(t["phase"] == "infusion" and t["pump_state"] == "running" for t in ticks)
        assert all(b["t_s"] > a["t_s"] for a, b in itertools.pairwise(ticks))
        assert all(b["delivered_ml"] >= a["delivered_ml"] for a, b in itertools.pairwise(ticks))
        assert {"measured_rate_ml_h", "pressure_mmhg", "vitals", "emitted_at"} <= ticks[-1].keys()

        # Pause, with its reason: carried out at the next tick, recorded with who and from where.
        refused = act(client, "pause", "")
        assert refused.status_code == 422 and refused.json()["code"] == "invalid_action"
        assert "pause needs a reason" in refused.json()["problems"][0]
        nameless = client.post("/api/chairs/chair-1/actions/pause", json={"operator": "  ", "reason": "x"})
        assert nameless.status_code == 422 and nameless.json()["code"] == "invalid_request"
        paused = act(client, "pause", "patient anxious")
        assert paused.status_code == 200, paused.text
        assert paused.json() | {"status": "done", "accepted": True, "source": "api"} == paused.json()
        c = card_when(client, lambda c: c["pump_state"] == "paused")
        assert c["paused_by"] == ["operator"] and c["last_action"]["reason"] == "patient anxious"
        held = c["delivered_ml"]
        later = card_when(client, lambda later: later["t_s"] >= c["t_s"] + 10.0)  # 10 s of session time
        assert later["pump_state"] == "paused" and later["delivered_ml"] - held < 0.05  # nothing delivered

        resumed = act(client, "resume", "settled")
        assert resumed.json()["status"] == "done"
        wait_for(lambda: infusing(client))
        again = act(client, "resume", "twice")
        assert again.json()["status"] == "refused" and again.json()["why"]  # nothing holds the pump

        # Slow to half (through the kernel's rate path), record what was seen and given, restore.
        slowed = act(client, "slow", "nausea", params={"to_fraction": 0.5})
        assert slowed.json()["status"] == "done", slowed.text
        c = card_when(client, lambda c: c["slowed"])
        assert c["programmed_rate_ml_h"] == pytest.approx(c["planned_rate_ml_h"] * 0.5)
        assert "slow" in {a["name"] for a in client.get("/api/actions").json()}
        too_fast = act(client, "slow", "x", params={"to_fraction": 1.5})  # the engine's own check
        assert too_fast.status_code == 422 and too_fast.json()["code"] == "invalid_action"
        assert "to_fraction must be between 0 and 1" in too_fast.json()["problems"][0]
        unknown_kind = act(client, "observation", params={"kind": "hunger", "value": 1})
        assert (
            unknown_kind.status_code == 422 and "unknown observation kind" in unknown_kind.json()["message"]
        )
        observed = act(client, "observation", params={"kind": "nausea", "value": 2, "note": "queasy"})
        assert observed.json()["status"] == "done", observed.text
        given = act(
            client,
            "medication",
            "nausea",
            params={"drug": "ondansetron", "dose": 4, "unit": "mg", "route": "iv"},
            operator="nurse B",
        )
        assert given.json()["status"] == "done", given.text
        restored = act(client, "restore", "settled")
        assert restored.json()["status"] == "done", restored.text
        c = card_when(client, lambda c: not c["slowed"] and c["medications"])
        assert [(o["kind"], o["value"], o["operator"]) for o in c["observations"]] == [
            ("nausea", 2, "nurse A")
        ]
        assert [(m["drug"], m["operator"]) for m in c["medications"]] == [("ondansetron", "nurse B")]

        stopped = act(client, "stop", "patient asked to stop")
        assert stopped.json()["status"] == "done" and stopped.json()["accepted"]
        c = card_when(client, lambda c: c["phase"] == "observation")
        log = c["session"]["log"]
        unknown = act(client, "bolus", "now")
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_action"
        busy = start_session(client)
        assert busy.status_code == 409 and busy.json()["code"] == "chair_busy"
        # In the observation a stop is refused (the engine's rule); only end_observation with a reason
        # ends it early.
        late = act(client, "stop", "stop again")
        assert late.json()["status"] == "refused" and "observation" in late.json()["why"], late.text
        blank = act(client, "end_observation", " ")
        assert blank.status_code == 422 and blank.json()["code"] == "invalid_action"
        ended = act(client, "end_observation", "patient collected by their driver")
        assert ended.json()["status"] == "done", ended.text
        card_when(client, lambda c: c["state"] == "ended")

    # The audit log names every action, its reason, its operator and its source.
    records = audit_records(log)
    actions = [
        (r["action"], r["reason"], r["operator"], r["source"])
        for r in records
        if r["event"] == "operator_action"
    ]
    assert actions[:2] == [
        ("pause", "patient anxious", "nurse A", "api"),
        ("resume", "settled", "nurse A", "api"),
    ]
    refusals = [
        (r["request"], r["reason"], r["operator"]) for r in records if r["event"] == "request_refused"
    ]
    assert refusals == [("resume", "twice", "nurse A"), ("stop", "stop again", "nurse A")]
    assert actions[2:6] == [
        ("slow", "nausea", "nurse A", "api"),
        ("record_observation", "", "nurse A", "api"),
        ("give_medication", "nausea", "nurse B", "api"),
        ("restore_rate", "settled", "nurse A", "api"),
    ]
    assert ("stop", "patient asked to stop", "nurse A", "api") in actions
    assert ("end_observation", "patient collected by their driver", "nurse A", "api") in actions
    (seen,) = [r for r in records if r["event"] == "observation_recorded"]
    assert (seen["kind"], seen["value"], seen["operator"], seen["source"]) == ("nausea", 2, "nurse A", "api")
    (med,) = [r for r in records if r["event"] == "medication_given"]
    assert (med["drug"], med["dose"], med["operator"]) == ("ondansetron", 4, "nurse B")
    (planned,) = [r for r in records if r["event"] == "session_planned"]
    assert planned["operator"] == "nurse A" and planned["source"] == "api"
    # SIGTERM ended the session: its pump told to stop, the course history not left "in progress".
    with CourseHistory.open(tmp_path / "course.sqlite3", create=False) as course:
        (ended,) = course.sessions("p-1")
        assert not ended.in_progress
        # The course holds the actions, the observation and the medication, each with who.
        assert [(a.action, a.who, a.source) for a in course.actions(ended.session_id)][:2] == [
            ("pause", "nurse A", "api"),
            ("resume", "nurse A", "api"),
        ]
        assert [(o.kind, o.who) for o in course.observations(ended.session_id)] == [("nausea", "nurse A")]
        assert [(m.drug, m.who) for m in course.medications(ended.session_id)] == [("ondansetron", "nurse B")]


def test_several_chairs_run_side_by_side_and_an_action_on_one_leaves_the_others_alone(
    tmp_path: Path,
) -> None:
    with serving("--config", str(clinic_file(tmp_path, chairs=3))) as served, served.client() as client:
        assert [c["chair"] for c in client.get("/api/chairs").json()] == ["chair-1", "chair-2", "chair-3"]
        for n in (1, 2):
            patient = {"id": f"p-{n}", "weight_kg": 60.0 + 10 * n}
            assert start_session(client, f"chair-{n}", patient=patient).status_code == 201
        for chair in ("chair-1", "chair-2"):
            wait_for(lambda chair=chair: infusing(client, chair))
        # One stream carries every chair's telemetry, each at >= 2 Hz.
        got = events(client, "/api/events", seconds=4.0)
        assert {d["chair"] for k, d in got if k == "chair"} == {"chair-1", "chair-2", "chair-3"}
        for chair in ("chair-1", "chair-2"):
            assert len([d for k, d in got if k == "tick" and d["chair"] == chair]) >= 6, chair
        assert not [d for k, d in got if k == "tick" and d["chair"] == "chair-3"]  # idle: no telemetry
        paused = act(client, "pause", "patient nauseous", chair="chair-2", operator="nurse B")
        assert paused.json()["status"] == "done", paused.text
        card_when(client, lambda c: c["pump_state"] == "paused", chair="chair-2")
        one = card(client, "chair-1")
        later = card_when(client, lambda c: c["t_s"] >= one["t_s"] + 10.0, chair="chair-1")
        assert (later["pump_state"], later["last_action"]) == ("running", None)
        assert later["delivered_ml"] > one["delivered_ml"]
        assert card(client, "chair-3")["state"] == "idle"
        assert act(client, "pause", "x", chair="chair-3").json()["code"] == "no_session"
        logs = {chair: card(client, chair)["session"]["log"] for chair in ("chair-1", "chair-2")}
    assert logs["chair-1"] != logs["chair-2"]
    acted = {
        chair: [(r["action"], r["operator"]) for r in audit_records(log) if r["event"] == "operator_action"]
        for chair, log in logs.items()
    }
    assert acted == {"chair-1": [], "chair-2": [("pause", "nurse B")]}


def test_checklist_items_wait_for_answers_from_the_card_and_name_who_answered(tmp_path: Path) -> None:
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        assert start_session(client, checklist="ask").status_code == 201
        for _ in range(10):
            question = wait_for(lambda: card(client)["questions"] or card(client)["phase"] != "precheck")
            if not isinstance(question, list):
                break
            q = question[0]
            bad = client.post(
                f"/api/chairs/chair-1/questions/{q['question_id']}",
                json={"operator": "nurse B", "value": "yes"},
            )
            assert bad.status_code == 422 and bad.json()["code"] == "invalid_answer"
            ok = client.post(
                f"/api/chairs/chair-1/questions/{q['question_id']}",
                json={"operator": "nurse B", "value": True},
            )
            assert ok.status_code == 200, ok.text
            wait_for(
                lambda q=q: q["question_id"] not in {x["question_id"] for x in card(client)["questions"]}
            )
        c = wait_for(lambda: infusing(client))
        gone = client.post("/api/chairs/chair-1/questions/q999", json={"operator": "nurse B", "value": True})
        assert gone.status_code == 404 and gone.json()["code"] == "question_not_found"
        log = c["session"]["log"]
    answered = [r for r in audit_records(log) if r["event"] == "question_answered"]
    assert answered and all(r["operator"] == "nurse B" and r["source"] == "api" for r in answered)


def test_stop_while_a_checklist_item_waits_aborts_with_nothing_delivered(tmp_path: Path) -> None:
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        assert start_session(client, checklist="ask").status_code == 201
        wait_for(lambda: card(client)["questions"])
        stopped = act(client, "stop", "patient declined")
        assert stopped.status_code == 200 and stopped.json()["accepted"], stopped.text
        c = card_when(client, lambda c: c["state"] == "ended" and c["error"])  # the records closed
        assert c["ended"]["outcome"] == "aborted" and c["delivered_ml"] == 0.0
        assert "stopped by the operator" in c["error"]


# ----- refusals ------------------------------------------------------------------------------------------


def test_refusals_return_every_finding_and_write_nothing(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    with CourseHistory.create(tmp_path / "course.sqlite3", at=now - datetime.timedelta(days=3)) as course:
        # an earlier session 20 h ago
        course.ensure_patient("p-1", 70.0, 175.0, at=now - datetime.timedelta(days=3))
        course.begin_session(
            "earlier", "p-1", "ketamine-depression", now - datetime.timedelta(hours=20), 35.0
        )
        course.end_session("earlier", now - datetime.timedelta(hours=19), 35.0, "complete")
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        # A hard limit (weight) and a course rule (44 h) at once: refused, with both findings.
        light = start_session(client, patient={"id": "p-1", "weight_kg": 25.0})
        assert light.status_code == 422
        body = light.json()
        assert body["code"] == "limit_refused" and body["needs_reason"] == []
        kinds = {(f["kind"], f["severity"]) for f in body["findings"]}
        assert {("weight_kg", "hard"), ("hours_since_last_start", "soft")} <= kinds
        # The course rule alone: a reason is needed, and named.
        soft = start_session(client)
        assert soft.status_code == 422 and soft.json()["code"] == "confirmation_required"
        assert soft.json()["needs_reason"] == ["hours_since_last_start"]
        blank = start_session(client, confirmations={"hours_since_last_start": "  "})
        assert blank.status_code == 422 and blank.json()["code"] == "invalid_request"
        invalid = start_session(client, protocol="no-such-protocol", patient={"id": "p-2", "weight_kg": -1})
        assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_request"
        assert any("weight_kg" in p for p in invalid.json()["problems"])
        missing = start_session(client, protocol="no-such-protocol")
        assert missing.status_code == 422 and missing.json()["code"] == "invalid_session"
        assert "no-such-protocol" in missing.json()["problems"][0]
        assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())
        assert card(client)["state"] == "idle"
        # With the reason, it starts, and the reason is kept as the course's override.
        confirmed = start_session(client, confirmations={"hours_since_last_start": "psychiatrist's order"})
        assert confirmed.status_code == 201, confirmed.text
        wait_for(lambda: infusing(client))
        course = client.get("/api/patients/p-1/course").json()
        assert [o["reason"] for o in course["overrides"]] == ["psychiatrist's order"]
        assert len(course["sessions"]) == 2
        assert client.get("/api/patients/nobody/course").json()["code"] == "patient_not_found"


def test_a_new_patient_one_typo_from_a_recorded_one_is_refused_up_front_until_given_a_reason(
    tmp_path: Path,
) -> None:
    # The cause of the 16-chair bench's stall: p-11 is one typo from p-10, so its session waited in the
    # pre-check for a new_patient reason the start request was never told it needed (it answered 201).
    now = datetime.datetime.now(datetime.UTC)
    with CourseHistory.create(tmp_path / "course.sqlite3", at=now - datetime.timedelta(days=3)) as course:
        course.ensure_patient("p-10", 70.0, 175.0, at=now - datetime.timedelta(days=3))
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        patient = {"id": "p-11", "weight_kg": 70.0}
        refused = start_session(client, patient=patient)
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert (body["code"], body["needs_reason"]) == ("confirmation_required", ["new_patient"])
        (finding,) = body["findings"]
        assert (finding["kind"], finding["severity"], finding["near"]) == ("new_patient", "soft", ["p-10"])
        assert "p-11 is not in the course history, but p-10 is" in body["message"]
        assert card(client)["state"] == "idle"
        assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").iterdir())
        # A hard finding refuses as before, and still lists the reason the start will also need.
        light = start_session(client, patient={"id": "p-11", "weight_kg": 25.0})
        assert light.json()["code"] == "limit_refused", light.text
        assert {f["kind"] for f in light.json()["findings"]} >= {"weight_kg", "new_patient"}
        # With the reason it starts, never stops to ask, and the reason is the course's override.
        reason = "a new patient: checked the ID card"
        started = start_session(client, patient=patient, confirmations={"new_patient": reason})
        assert started.status_code == 201, started.text
        assert not wait_for(lambda: infusing(client))["questions"]
        overrides = client.get("/api/patients/p-11/course").json()["overrides"]
        assert [(o["kind"], o["reason"]) for o in overrides] == [("new_patient", reason)]


def test_sixteen_simulated_chairs_all_reach_running(tmp_path: Path) -> None:
    chairs = 16
    clinic = clinic_file(tmp_path, chairs=chairs, time_scale=1.0)
    with serving("--config", str(clinic)) as served, served.client() as client:
        start_all_chairs(client, chairs)


# ----- the token, the origin, CORS -------------------------------------------------------------------


def test_beyond_loopback_a_token_is_required_to_start_and_for_every_api_call(tmp_path: Path) -> None:
    clinic = str(clinic_file(tmp_path))
    argv = ["serve", "--config", clinic, "--host", "0.0.0.0", "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "KETAPUMP_TOKEN"}
    refused = run_cli(*argv, env=env, timeout=60)
    assert refused.returncode == 2 and "--token" in refused.stderr

    with serving("--config", clinic, "--host", "0.0.0.0", env={"KETAPUMP_TOKEN": "s3cret-token"}) as served:
        assert served.ready["token_required"] is True
        port = served.url.rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=15.0) as anonymous:
            for path in ("/api/chairs", "/api/events", "/api/openapi.json", "/api/chairs/chair-1/record"):
                reply = anonymous.get(path)
                assert reply.status_code == 401, path
                assert reply.json()["code"] == "unauthorized"
                assert reply.headers["www-authenticate"].startswith("Bearer")
            assert start_session(anonymous).status_code == 401
            wrong = anonymous.get("/api/chairs", headers={"Authorization": "Bearer s3cret-tokeN"})
            assert wrong.status_code == 401
            assert anonymous.get("/").status_code == 200  # the page holds no data; it asks for the token
            assert "access-control-allow-origin" not in anonymous.get("/").headers
        auth = {"Authorization": "Bearer s3cret-token"}
        with httpx.Client(base_url=base, timeout=15.0, headers=auth) as client:
            assert client.get("/api/chairs").status_code == 200
            assert client.get("/api/openapi.json").json()["info"]["title"] == "ketapump console"
            forged = client.post(
                "/api/chairs/chair-1/session",
                json={"operator": "x"},
                headers={"Origin": "http://evil.example"},
            )
            assert forged.status_code == 403 and forged.json()["code"] == "forbidden_origin"
            form = client.post(
                "/api/chairs/chair-1/actions/stop",
                content=b"operator=x",
                headers={"Content-Type": "text/plain"},
            )
            assert form.status_code == 415 and form.json()["code"] == "unsupported_media_type"
            preflight = client.options(
                "/api/chairs/chair-1/session", headers={"Origin": "http://evil.example"}
            )
            assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
            assert start_session(client).status_code == 201
        # The terminal client without the token: refused, exit 77.
        argv = ["console", base + "/"]
        attached = run_cli(*argv, env=env, timeout=60)
        assert attached.returncode == os.EX_NOPERM and "refused the token" in attached.stderr


def test_on_loopback_without_a_token_a_foreign_host_name_is_refused(tmp_path: Path) -> None:
    with (
        serving("--config", str(clinic_file(tmp_path)), "--host", "127.0.0.2") as served,
        served.client() as client,
    ):
        assert served.url.startswith("http://127.0.0.2:")
        assert client.get("/api/chairs").status_code == 200
        rebound = client.get("/api/chairs", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403 and rebound.json()["code"] == "forbidden_host"


def test_a_port_in_use_or_a_bad_clinic_file_is_a_clear_error(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        argv = ["serve", "--config", str(clinic_file(tmp_path)), "--port", str(port)]
        done = run_cli(*argv, timeout=60)
        assert done.returncode == os.EX_UNAVAILABLE and f"cannot serve on 127.0.0.1:{port}" in done.stderr
    finally:
        busy.close()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'schema_version = 1\n[[chair]]\nid = "Chair 1"\npump = "sim://"\n'
        '[[chair]]\nid = "c2"\npump = "ftp://x"\nprotocol = "nope"\nvitals = "csv:/no/such.csv"\n'
        '[[chair]]\nid = "c2"\npump = "sim://"\n',
        encoding="utf-8",
    )
    argv = ["serve", "--config", str(bad)]
    done = run_cli(*argv, timeout=60)
    assert done.returncode == os.EX_DATAERR, done.stderr
    assert "chair.0.id" in done.stderr and "chair ids must be unique: c2" in done.stderr
    (tmp_path / "fine.toml").write_text(
        'schema_version = 1\n[[chair]]\nid = "c1"\npump = "ftp://x"\nprotocol = "nope"\n'
        '[[chair]]\nid = "c2"\npump = "sim://"\nvitals = "csv:/no/such.csv"\n',
        encoding="utf-8",
    )
    argv = ["serve", "--config", str(tmp_path / "fine.toml")]
    done = run_cli(*argv, timeout=60)
    assert done.returncode == os.EX_DATAERR, done.stderr
    assert "chair[0].protocol" in done.stderr and "chair[1].vitals" in done.stderr
    argv = ["serve", "--config", str(tmp_path / "missing.toml")]
    done = run_cli(*argv, timeout=60)
    assert done.returncode == os.EX_NOINPUT


# ----- clients that go away, or stall ------------------------------------------------------------


def test_disconnecting_or_stalled_event_clients_leave_the_infusion_untouched(tmp_path: Path) -> None:
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        assert start_session(client).status_code == 201
        before = wait_for(lambda: infusing(client))
        # Ten clients connect, read a little and drop the connection mid-stream.
        for _ in range(10):
            got = events(client, "/api/events", seconds=0.3)
            assert got and got[0][0] == "chair"
        # Another opens the stream and never reads a byte; a third vanishes without closing.
        host, port = served.url.split("//")[1].rstrip("/").rsplit(":", 1)
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        vanished = socket.create_connection((host, int(port)))
        vanished.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        vanished.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        vanished.close()  # a reset, not a goodbye
        after = card_when(client, lambda c: c["t_s"] >= before["t_s"] + 20.0)  # 20 s of session time
        assert (after["phase"], after["pump_state"]) == ("infusion", "running"), after
        # Delivery went on at the programmed rate, with no alarm and no action taken.
        elapsed_h = (after["t_s"] - before["t_s"]) / 3600.0
        rate = (after["delivered_ml"] - before["delivered_ml"]) / elapsed_h
        assert rate == pytest.approx(after["session"]["plan"]["rate_ml_h"], rel=0.1)
        assert after["alarms"] == [] and after["last_action"] is None
        stalled.close()
        log = after["session"]["log"]
    touched = {"operator_action", "request_refused", "alarm", "pump_alarm", "vitals_alarm", "paused"}
    assert [r["event"] for r in audit_records(log) if r["event"] in touched] == []


# ----- a killed serve, and its unfinished sessions ------------------------------------------------


def test_a_restarted_serve_lists_the_sessions_a_killed_one_left_unfinished(tmp_path: Path) -> None:
    clinic = str(clinic_file(tmp_path))
    served = start_serve("--config", clinic)
    with served.client() as client:
        assert start_session(client).status_code == 201
        c = card_when(client, lambda c: c["pump_state"] == "running" and c["delivered_ml"] > 0.3)
    session_id = c["session"]["session_id"]
    served.stop(signal.SIGKILL)  # no goodbye: the course history still holds the session in progress
    with serving("--config", clinic) as again, again.client() as client:
        assert again.ready["interrupted"] == 1
        (found,) = client.get("/api/interrupted").json()
        assert found["session_id"] == session_id and found["chair"] == "chair-1"
        assert found["pump"] == c["pump"] and found["problem"] == ""
        assert found["delivered_ml"] is not None
        command = found["resume_command"]
        assert (
            command[:2] == ["ketapump", "run"]
            and command[command.index("--resume") + 1] == c["session"]["log"]
        )
        # A session running in this serve is not "interrupted".
        assert start_session(client, patient={"id": "p-2", "weight_kg": 70.0}).status_code == 201
        assert [s["session_id"] for s in client.get("/api/interrupted").json()] == [session_id]


def test_a_two_syringe_session_asks_for_the_next_syringe_on_the_card_answered_over_http(
    tmp_path: Path,
) -> None:
    """134 kg on the standard protocol (67 mL: two 60 mL syringes) on a simulated chair: after the first
    syringe's share the pump is held and the card asks for the next syringe; answered over HTTP (with
    the operator's name), the simulator loads it, the new slack is taken up and the dose runs on, counted
    across both syringes. Time scale 18 (near the fastest a chair allows): the 40-min infusion takes
    about 2 min 15 s."""
    with (
        serving("--config", str(clinic_file(tmp_path, time_scale=18.0))) as served,
        served.client() as client,
    ):
        started = start_session(
            client,
            patient={"id": "p-134", "weight_kg": 134.0},
            confirmations={"vtbi_ml": "large patient, reviewed", "syringe_fill_ml": "two syringes drawn up"},
        )
        assert started.status_code == 201, started.text
        asking = card_when(
            client, lambda c: any(q["question"] == "syringe_change" for q in c["questions"]), timeout=300.0
        )
        (q,) = [q for q in asking["questions"] if q["question"] == "syringe_change"]
        assert "Load syringe 2" in q["text"]
        assert asking["pump_state"] == "syringe_change" and "syringe" in asking["paused_by"]
        assert math.isclose(asking["delivered_ml"], 33.5, abs_tol=0.3)
        # The hold is the syringe's: an operator's resume does not lift it.
        refused = act(client, "resume", "trying to go on")
        assert refused.json()["status"] == "refused", refused.text
        bad = client.post(
            f"/api/chairs/chair-1/questions/{q['question_id']}", json={"operator": "nurse B", "value": "ok"}
        )
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_answer"
        ok = client.post(
            f"/api/chairs/chair-1/questions/{q['question_id']}", json={"operator": "nurse B", "value": True}
        )
        assert ok.status_code == 200, ok.text
        card_when(client, lambda c: c["pump_state"] == "running" and c["delivered_ml"] > 34.0, timeout=60.0)
        done = card_when(
            client, lambda c: c["phase"] in {"observation", "discharge", "complete"}, timeout=300.0
        )
        assert math.isclose(done["delivered_ml"], 67.0, rel_tol=0.02), done
        log = done["session"]["log"]
        ended = act(client, "end_observation", "test: the syringe change is what is checked")
        assert ended.status_code == 200, ended.text
    records = audit_records(log)
    answered = [r for r in records if r["event"] == "question_answered" and r["question"] == "syringe_change"]
    assert [(r["answer"], r["operator"], r["source"]) for r in answered] == [(True, "nurse B", "api")]
    (changed,) = [r for r in records if r["event"] == "syringe_changed"]
    assert changed["by"] == "nurse B" and changed["simulated"] is True and changed["syringe"] == 2
    causes = [r["cause"] for r in records if r["event"] == "state_transition"]
    assert causes.count("take_up_done") == 2 and "syringe_loaded" in causes


def test_the_sitter_given_at_start_is_checked_and_reaches_the_session(tmp_path: Path) -> None:
    # Without a sitter the discharge is never confirmed: the console must be able to record one, checked
    # as the CLI's --sitter-name/--sitter-phone are.
    with serving("--config", str(clinic_file(tmp_path))) as served, served.client() as client:
        bad = start_session(client, sitter={"name": "Sam Doe", "phone": "call me"})
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
        assert any("sitter" in p and "phone" in p for p in bad.json()["problems"]), bad.json()
        assert card(client)["state"] == "idle"
        started = start_session(client, sitter={"name": " Sam Doe ", "phone": "+44 20 7946 0958"})
        assert started.status_code == 201, started.text
        assert card(client)["session"]["sitter"] == {"name": "Sam Doe", "phone": "+44 20 7946 0958"}
        client.post("/api/chairs/chair-1/actions/stop", json={"operator": "nurse A", "reason": "test over"})
