"""The web console in a real browser (Debian's Chromium, driven by Selenium): ``serve --demo``'s three
chair cards update live; pausing chair 2 with a reason changes its card, its state in the API and its
audit log; the chair's detail page draws its plots and its record; a screenshot is a real picture; a
latched alarm is acknowledged from its card."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image

from consolehelpers import audit_records, clinic_file, serving, start_session

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser_missing() -> str | None:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("KETAPUMP_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def texts(driver: Any) -> dict[str, str]:
    return {
        card.get_attribute("data-chair"): card.find_element("css selector", "[data-f=dose]").text
        for card in driver.find_elements("css selector", ".card")
    }


def test_the_demo_in_a_browser_pause_chair_2_and_see_it_everywhere(browser: Any, tmp_path: Path) -> None:
    """Also the operator's other actions through their forms (slow, an observation) and chair 3's
    scripted nausea on its card."""
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    wait = WebDriverWait(browser, 60)
    # 5x: the infusions move fast enough to see; an operator's pause holds whatever the vitals do later.
    with serving("--demo", "--time-scale", "5", "--out", str(tmp_path / "demo")) as served:
        browser.get(served.url)
        wait.until(lambda d: len(d.find_elements("css selector", ".card")) == 3)
        assert [c.get_attribute("data-chair") for c in browser.find_elements("css selector", ".card")] == [
            "chair-1",
            "chair-2",
            "chair-3",
        ]
        wait.until(
            lambda d: all(
                c.get_attribute("data-pump-state") == "running"
                for c in d.find_elements("css selector", ".card")
            )
        )
        before = texts(browser)
        wait.until(lambda d: all(texts(d)[chair] != text for chair, text in before.items()))  # all three move
        assert browser.find_element("id", "connection").text == "live"
        # Each vital: its value, trend, alarm limits in force, baseline and the observation's band.
        with served.client() as client:
            sbp = client.get("/api/chairs/chair-1").json()["vitals"]["sbp"]
        # Read in one script call: the card redraws its vitals rows on every update, so a row found by
        # one WebDriver call can be gone by the next (a stale element).
        row = browser.execute_script(
            "return document.querySelector('#card-chair-1 tr[data-channel=sbp]').innerText"
        )
        band = f"band ±20 % {tenth(sbp['band_low'])}–{tenth(sbp['band_high'])}"
        assert f"baseline {tenth(sbp['baseline'])} · {band}" in row, row
        assert "alarm < 90 or ≥ 180 mmHg" in row and any(arrow in row for arrow in "↑↓→"), row

        # The operator names themself once, then pauses chair 2 with a reason.
        operator = browser.find_element("id", "operator")
        operator.send_keys("Nurse Selenium")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", operator)
        chair2 = browser.find_element("id", "card-chair-2")
        stop = chair2.find_element("css selector", "button[data-action=stop]")
        assert stop.is_displayed() and stop.is_enabled()
        chair2.find_element("css selector", "button[data-action=pause]").click()
        wait.until(lambda d: d.find_element("id", "prompt-dialog").get_attribute("open") is not None)
        assert "Why pause" in browser.find_element("id", "prompt-text").text
        browser.find_element("id", "prompt-input").send_keys("patient feels dizzy")
        browser.find_element("id", "prompt-ok").click()

        # On the page: the card says who holds the pump; STOP stays there and enabled.
        wait.until(
            lambda d: d.find_element("id", "card-chair-2").get_attribute("data-paused-by") == "operator"
        )
        badge = browser.find_element("css selector", "#card-chair-2 [data-f=badge]").text
        assert badge.lower() == "paused by operator"
        assert (
            "pause by Nurse Selenium (web) — done (patient feels dizzy)"
            in browser.find_element("css selector", "#card-chair-2 [data-f=last]").text
        )
        assert browser.find_element("css selector", "#card-chair-2 button[data-action=resume]").is_displayed()
        assert browser.find_element("css selector", "#card-chair-2 button[data-action=stop]").is_enabled()
        assert browser.find_element("id", "card-chair-1").get_attribute("data-pump-state") == "running"

        # In the API, and in the audit log: the operator, the reason, the source.
        with served.client() as client:
            card = client.get("/api/chairs/chair-2").json()
        assert card["pump_state"] == "paused" and card["paused_by"] == ["operator"]
        last = card["last_action"]
        assert (last["action"], last["operator"], last["source"], last["accepted"]) == (
            "pause",
            "Nurse Selenium",
            "web",
            True,
        )
        (record,) = [r for r in audit_records(card["session"]["log"]) if r["event"] == "operator_action"]
        assert (record["action"], record["reason"], record["operator"], record["source"]) == (
            "pause",
            "patient feels dizzy",
            "Nurse Selenium",
            "web",
        )

        # Chair 1: slow to half through the action's form (its values typed, its reason given) ...
        _, stop_before = card_glance(browser, "chair-1")
        act_in_form(browser, wait, "chair-1", "slow", {"to_fraction": "0.5"}, reason="patient nauseous")
        wait.until(
            lambda d: "slowed" in d.find_element("css selector", "#card-chair-1 [data-f=badge]").text.lower()
        )
        assert "(slowed from" in browser.find_element("css selector", "#card-chair-1 [data-f=rate]").text
        # ... its verdict shown on the card, the buttons where they were (read together, in one step) ...
        verdict, stop_now = wait.until(
            lambda d: (glance := card_glance(d, "chair-1"))[0] and glance, "no verdict"
        )
        assert verdict == "Slow: done" and stop_now == stop_before
        # ... and kept there by the card's next render.
        assert verdict_after_next_render(browser, wait, "chair-1") == "Slow: done"
        # ... and record what was seen, the kind chosen from the bedside vocabulary.
        act_in_form(browser, wait, "chair-1", "observation", {"kind": "nausea", "value": "1"}, reason="")
        wait.until(
            lambda d: (
                "observed nausea 1" in d.find_element("css selector", "#card-chair-1 [data-f=bedside]").text
            )
        )
        # Chair 3's scripted nurse: nausea recorded at minute 8, the infusion slowed, an antiemetic given.
        long_wait = WebDriverWait(browser, 300)
        long_wait.until(
            lambda d: (
                "given ondansetron 4 mg iv"
                in d.find_element("css selector", "#card-chair-3 [data-f=bedside]").text
            )
        )
        assert (
            "observed nausea 2" in browser.find_element("css selector", "#card-chair-3 [data-f=bedside]").text
        )
        with served.client() as client:
            one = client.get("/api/chairs/chair-1").json()
        assert one["slowed"] and [o["kind"] for o in one["observations"]] == ["nausea"]
        assert one["last_action"]["operator"] == "Nurse Selenium" and one["last_action"]["source"] == "web"

        shot = tmp_path / "console.png"
        assert browser.save_screenshot(str(shot))
        assert_a_real_picture(shot)

        # The chair's page: its plots are drawn and its record lists the pause.
        browser.find_element("css selector", "#card-chair-2 a[data-f=detail]").click()
        wait.until(lambda d: d.find_elements("css selector", "#record tr td"))
        wait.until(lambda d: "operator_action" in d.find_element("id", "record").text)
        assert "patient feels dizzy" in browser.find_element("id", "record").text
        # Each plot is drawn (an explicit wait: the page draws them once its series has loaded).
        for plot in ("plot-dose", "plot-rate", "plot-pressure", "plot-vitals", "plot-plasma"):
            wait.until(lambda d, plot=plot: drawn_pixels(d, plot) > 500, message=plot)
        assert "model estimate" in browser.find_element("id", "plasma-caption").text
        detail = tmp_path / "chair.png"
        browser.save_screenshot(str(detail))
        assert_a_real_picture(detail)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        latencies = browser.execute_script("return window.ketapumpLatencies")
        assert len(latencies) > 5 and all(-0.5 < x < 30 for x in latencies)


def test_a_latched_alarm_is_acknowledged_on_the_card_with_what_was_found(
    browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    # The demo patient, whose heart rate reads 131 bpm from 20 s into the infusion for two minutes.
    script = tmp_path / "tachycardia.toml"
    crossing = '[[event]]\nkind = "crossing"\nchannel = "hr"\nat_s = 20.0\nduration_s = 120.0\n'
    crossing += "value = 131.0\n"
    demo = resources.files("ketapump.data").joinpath("patients", "demo.toml").read_text(encoding="utf-8")
    script.write_text(demo + crossing, encoding="utf-8")
    wait = WebDriverWait(browser, 120)
    with serving("--config", str(clinic_file(tmp_path, vitals=f"sim:{script}"))) as served:
        with served.client() as client:
            assert start_session(client).status_code == 201
        browser.get(served.url)
        browser.find_element("id", "operator").send_keys("Nurse Selenium")
        operator = browser.find_element("id", "operator")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", operator)
        alarms = "#card-chair-1 [data-f=alarms]"
        wait.until(lambda d: "ALARM · vitals_crossing_hr" in d.find_element("css selector", alarms).text)
        card = browser.find_element("id", "card-chair-1")
        assert "alarmed" in card.get_attribute("class").split()
        found = "anxious, settled"
        act_in_form(browser, wait, "chair-1", "acknowledge", {"alarm": "vitals_crossing_hr"}, reason=found)
        wait.until(
            lambda d: "acknowledged · vitals_crossing_hr" in d.find_element("css selector", alarms).text
        )
        # Latched, not cleared: the alarm stays listed, acknowledged; the card no longer flags it.
        assert "ALARM ·" not in browser.find_element("css selector", alarms).text
        with served.client() as client:
            c = client.get("/api/chairs/chair-1").json()
        assert [(a["code"], a["acknowledged"]) for a in c["alarms"]] == [("vitals_crossing_hr", True)]
        assert (c["pump_state"], c["paused_by"]) == ("paused", ["vitals"])  # until a nurse resumes it
        wait.until(lambda d: "alarmed" not in d.find_element("id", "card-chair-1").get_attribute("class"))
    (record,) = [r for r in audit_records(c["session"]["log"]) if r["event"] == "alarms_acknowledged"]
    assert (record["alarms"], record["reason"], record["operator"], record["source"]) == (
        ["vitals_crossing_hr"],
        found,
        "Nurse Selenium",
        "web",
    )


def tenth(x: float) -> str:
    """A number as the card prints a limit or baseline: to a tenth, no trailing zero."""
    return f"{round(x, 1):g}"


def act_in_form(
    driver: Any, wait: Any, chair: str, action: str, values: dict[str, str], *, reason: str
) -> None:
    """Presses an action's button on a chair's card, fills its form (choices selected, numbers typed)
    and sends it."""
    from selenium.webdriver.support.ui import Select  # noqa: PLC0415

    driver.find_element("css selector", f"#card-{chair} button[data-action={action}]").click()
    wait.until(lambda d: d.find_element("id", "prompt-dialog").get_attribute("open") is not None)
    for name, value in values.items():
        field = driver.find_element("css selector", f"#prompt-params [data-param={name}]")
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    reason_field = driver.find_element("id", "prompt-input")
    reason_field.clear()
    reason_field.send_keys(reason)
    driver.find_element("id", "prompt-ok").click()
    wait.until(lambda d: d.find_element("id", "prompt-dialog").get_attribute("open") is None)


def card_glance(driver: Any, chair: str) -> tuple[str, dict[str, float]]:
    """The verdict line of a chair's card and where its STOP button is on the page, read in one script."""
    text, rect = driver.execute_script(
        "const card = document.getElementById(arguments[0]);"
        "const r = card.querySelector('button[data-action=stop]').getBoundingClientRect();"
        "return [card.querySelector('[data-f=error]').textContent,"
        " {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}];",
        f"card-{chair}",
    )
    return text, rect


def verdict_after_next_render(driver: Any, wait: Any, chair: str) -> str:
    """The verdict line of a chair's card as the next render leaves it (every render rewrites the
    delivered dose: a mutation observer on it reads the line right after)."""
    driver.execute_script(
        "const card = document.getElementById(arguments[0]);"
        "window.verdictAfterRender = null;"
        "new MutationObserver((_, observer) => {"
        "  window.verdictAfterRender = card.querySelector('[data-f=error]').textContent;"
        "  observer.disconnect();"
        "}).observe(card.querySelector('[data-f=dose]'),"
        " {childList: true, characterData: true, subtree: true});",
        f"card-{chair}",
    )
    (after,) = wait.until(
        lambda d: d.execute_script("const v = window.verdictAfterRender; return v === null ? null : [v];"),
        "no render",
    )
    return str(after)


def drawn_pixels(driver: Any, canvas_id: str) -> int:
    """How many pixels of a canvas are painted."""
    painted: int = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
        canvas_id,
    )
    return painted


def assert_a_real_picture(path: Path) -> None:
    """A PNG of the browser's size that is not one flat colour."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(path)
    assert pixels.shape[0] >= 500 and pixels.shape[1] >= 800
    rgb = pixels[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05
    assert len(np.unique((rgb * 255).astype(int), axis=0)) > 50


def test_the_readme_shows_serve_demo_right_after_set_up_with_a_real_screenshot() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("```", 1)[0].strip() for block in setup.split("```sh\n")[1:]]
    assert commands[0].endswith("ketapump demo") and commands[1].endswith("ketapump serve --demo")
    (shot,) = re.findall(r"!\[[^]]*\]\((docs/[^)]+\.png)\)", setup)
    assert_a_real_picture(root / shot)


def test_the_browser_test_can_tell_a_blank_picture(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    image.imsave(blank, np.ones((600, 900, 3)))
    with pytest.raises(AssertionError):
        assert_a_real_picture(blank)
