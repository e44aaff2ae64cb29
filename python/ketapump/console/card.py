"""The chair card in a terminal: the same state the browser's card shows (:meth:`ChairView.snapshot`),
drawn with rich. ``ketapump console URL`` draws one per chair of a running ``serve``; ``ketapump
session`` on a terminal draws its own session's card live (:class:`LiveCard`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ketapump.clinical import Session, SessionEvent, SessionRunner
from ketapump.console.view import ChairView, SessionInfo

ARROWS = {"up": "↑", "down": "↓", "steady": "→", None: " "}
#: How often the live card is redrawn at most (per second).
REDRAW_HZ = 4.0


def _num(value: Any, fmt: str = ".1f", missing: str = "—") -> str:
    return missing if value is None else format(value, fmt)


def _clock(seconds: Any) -> str:
    if seconds is None:
        return "—"
    s = int(max(seconds, 0.0))
    return f"{s // 60:d}:{s % 60:02d}"


def _status(card: Mapping[str, Any]) -> Text:
    """The chair's one-word state, coloured: what a nurse glances at first."""
    if card["state"] == "idle":
        return Text("idle", style="dim")
    if card["state"] == "ended":
        ended, error = card.get("ended") or {}, card.get("error")
        outcome = ended.get("outcome") or "ended"
        style = "green" if outcome == "complete" and not error else "yellow"
        return Text(f"ended: {outcome}", style=f"bold {style}")
    pump, holders = card.get("pump_state"), card.get("paused_by") or []
    if pump == "paused":
        return Text(f"PAUSED by {' and '.join(holders) or '?'}", style="bold yellow")
    if pump in {"alarm", "stopped"}:
        return Text(pump.upper(), style="bold red")
    return Text(card.get("phase") or "starting", style="bold green")


def render_card(card: Mapping[str, Any]) -> Panel:
    """One chair's card from its snapshot."""
    session = card.get("session")
    title = f"{card['name']}"
    if session:
        p = session["patient"]
        title += f" — {p['id']} ({p['weight_kg']:g} kg) — {session['protocol']}"
    body: list[RenderableType] = []
    head = Text.assemble(_status(card), "  ")
    if session:
        head.append(
            f"{card.get('phase') or ''} {_clock(card.get('phase_elapsed_s'))} elapsed, "
            f"{_clock(card.get('remaining_s'))} left"
        )
    body.append(head)
    if session:
        body.append(_numbers(card))
        body.append(_vitals_table(card))
        body.extend(_alarms_and_questions(card))
    if card.get("error"):
        body.append(Text(f"error: {card['error']}", style="red"))
    border = "red" if _unacknowledged(card) else ("yellow" if card.get("pump_state") == "paused" else "blue")
    return Panel(Group(*body), title=title, title_align="left", border_style=border, expand=True)


def _numbers(card: Mapping[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    dose = card.get("dose_mg")
    grid.add_row(
        "delivered",
        f"{_num(card.get('delivered_mg'), '.2f')} of {_num(dose, '.2f')} mg "
        f"({_num(card.get('delivered_ml'), '.2f')} of {_num(card.get('planned_ml'), '.2f')} mL); "
        f"plan now {_num(card.get('programmed_mg'), '.2f')} mg",
    )
    programmed = card.get("programmed_rate_ml_h")
    rate = f"{_num(programmed)} mL/h" + (" (slowed)" if card.get("slowed") else "") + " programmed, "
    if card.get("slowed"):
        rate += f"plan {_num(card.get('planned_rate_ml_h'))} mL/h, "
    grid.add_row(
        "rate",
        (rate if programmed is not None else "") + f"{_num(card.get('commanded_rate_ml_h'))} mL/h commanded, "
        f"{_num(card.get('measured_rate_ml_h'))} mL/h measured",
    )
    grid.add_row(
        "line pressure",
        f"{_num(card.get('pressure_mmhg'), '.0f')} mmHg (alarm at "
        f"{_num(card.get('occlusion_threshold_mmhg'), '.0f')} mmHg)",
    )
    plasma = card.get("plasma") or {}
    grid.add_row(
        "plasma ketamine",
        f"{_num(plasma.get('ug_ml'), '.3f')} µg/mL — {plasma.get('label', 'model estimate')}",
    )
    return grid


def _vitals_table(card: Mapping[str, Any]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 2))
    for header in ("vital", "now", "", "limit", "baseline"):
        table.add_column(header, style="dim" if header in {"vital", "limit", "baseline"} else None)
    for entry in card["vitals"].values():
        value = f"{_num(entry['value'], '.0f')} {entry['unit']}"
        style = "bold red" if entry["past_limit"] else "yellow" if entry.get("within_band") is False else ""
        table.add_row(
            entry["label"],
            Text(value, style=style),
            ARROWS.get(entry["trend"], " "),
            limits_text(entry),
            baseline_text(entry),
        )
    return table


def _tenth(x: float) -> str:
    return f"{round(x, 1):g}"


def limits_text(entry: Mapping[str, Any]) -> str:
    """A vital's alarm limits in force as people say them: ``alarm < 90 or ≥ 146.4 (baseline +20 %)``."""
    parts = [f"< {_tenth(entry['low'])}"] if entry.get("low") is not None else []
    parts += [f"≥ {_tenth(entry['high'])}"] if entry.get("high") is not None else []
    relative = f" (baseline +{_tenth(entry['rise_max_pct'])} %)" if entry.get("high_relative") else ""
    return "alarm " + " or ".join(parts) + relative if parts else ""


def baseline_text(entry: Mapping[str, Any]) -> str:
    """A vital's baseline and the observation's band around it: ``122 (band ±20 % 97.6–146.4)``."""
    if entry.get("baseline") is None:
        return "—"
    band = f"{_tenth(entry['band_low'])}–{_tenth(entry['band_high'])}"
    return f"{_tenth(entry['baseline'])} (band ±{_tenth(entry['band_pct'])} % {band})"


def _unacknowledged(card: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [a for a in card.get("alarms", []) if not a["acknowledged"]]


def _alarms_and_questions(card: Mapping[str, Any]) -> Iterable[RenderableType]:
    for alarm in card.get("alarms", [])[-4:]:
        style = "dim" if alarm["acknowledged"] else "bold red"
        mark = "acknowledged" if alarm["acknowledged"] else "ALARM"
        yield Text(f"{mark}: {alarm['code']} — {alarm['detail']}", style=style)
    for question in card.get("questions", []):
        yield Text(f"waiting for an answer: {question['text']}", style="bold magenta")
    for _t, text in _bedside(card)[-4:]:
        yield Text(text, style="magenta")
    action = card.get("last_action")
    if action:
        verdict = "done" if action["accepted"] else f"refused ({action['why']})"
        who = action.get("operator") or "anonymous"
        yield Text(f"last action: {action['action']} by {who} ({action['source']}): {verdict}", style="dim")


def _bedside(card: Mapping[str, Any]) -> list[tuple[float, str]]:
    """The observations and medications recorded, in time order."""
    lines = []
    for seen in card.get("observations", []):
        value = "" if seen.get("value") is None else f" {seen['value']:g}"
        note = f" ({seen['note']})" if seen.get("note") else ""
        lines.append((seen["t_s"], f"{_clock(seen['t_s'])} observed {seen['kind']}{value}{note}"))
    for given in card.get("medications", []):
        what = f"{given['drug']} {given['dose']:g} {given['unit']} {given['route']}"
        lines.append((given["t_s"], f"{_clock(given['t_s'])} given {what}"))
    return sorted(lines, key=lambda line: line[0])


def render_board(cards: Iterable[Mapping[str, Any]]) -> Group:
    """Every chair's card, one under the other."""
    return Group(*(render_card(card) for card in cards))


class LiveCard:
    """A session's card drawn live on a terminal while it runs (``ketapump session``): a
    :class:`ChairView` subscribed to the session, redrawn at most :data:`REDRAW_HZ` times a second from
    the session's own loop (the drawing thread only ever sees finished renderables). ``footer`` gives the
    lines drawn under the card (the operator's key prompt)."""

    def __init__(self, runner: SessionRunner, console: Console, *, name: str = "session") -> None:
        self.session: Session = runner.session
        self.view = ChairView(name, name, runner.setup.pump_url)
        self.view.begin(SessionInfo.of(runner, started_by=runner.setup.operator_name))
        self.footer: Callable[[], Iterable[str]] = tuple
        self.live = Live(self._render(), console=console, refresh_per_second=REDRAW_HZ)
        self._drawn_at = 0.0
        self._unsubscribe = self.session.subscribe(self._take)

    def _render(self) -> RenderableType:
        lines = [line for line in self.footer() if line]
        card = render_card(self.view.snapshot())
        return Group(card, Text("\n".join(lines))) if lines else card

    def redraw(self) -> None:
        """Draws the card and its footer now."""
        self._drawn_at = time.monotonic()
        self.live.update(self._render())

    def _take(self, event: SessionEvent) -> None:
        self.view.apply(event)
        if time.monotonic() - self._drawn_at >= 1.0 / REDRAW_HZ or event.kind != "tick":
            self.redraw()

    def __enter__(self) -> LiveCard:
        self.live.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._unsubscribe()
        self.footer = tuple
        self.redraw()
        self.live.stop()


__all__ = ["LiveCard", "render_board", "render_card"]
