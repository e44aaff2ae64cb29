"""``ketapump console URL``: a terminal attached to a running ``serve``, every chair's card live.

It reads what a browser reads: ``GET /api/chairs`` for the cards, then the event stream
(``/api/events``), whose ``chair`` events are the cards as they change; it redraws at most
:data:`REDRAW_HZ` times a second. It only watches: acting stays with the browser and the API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.live import Live

from ketapump.console.card import REDRAW_HZ, render_board
from ketapump.errors import KetapumpError


class AttachError(KetapumpError, RuntimeError):
    """The console could not be followed: ``why`` is ``unreachable``, ``unauthorized`` or ``protocol``."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events from a stream's lines: ``(type, JSON data)``; comments are skipped."""
    kind, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def attach(url: str, token: str | None, console: Console) -> str:
    """Follows the console at ``url`` until its stream ends (returns why) or the task is cancelled.
    Raises :class:`AttachError` when it cannot be reached or refuses the token."""
    import httpx  # noqa: PLC0415 (the console extra)

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(10.0, read=None)  # the stream is quiet between events
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
        try:
            reply = await client.get("/api/chairs")
        except httpx.HTTPError as e:
            raise AttachError("unreachable", f"cannot reach the console at {url}: {e}") from e
        _check(reply.status_code, reply.text, url)
        cards = {card["chair"]: card for card in reply.json()}
        drawn_at = 0.0
        with Live(render_board(cards.values()), console=console, refresh_per_second=REDRAW_HZ) as live:
            try:
                async with client.stream("GET", "/api/events") as stream:
                    _check(stream.status_code, "", url)
                    async for kind, data in sse_events(stream.aiter_lines()):
                        if kind == "closed":
                            return str(data.get("reason", "the console closed the stream"))
                        if kind != "chair":
                            continue
                        cards[data["chair"]] = data
                        if time.monotonic() - drawn_at >= 1.0 / REDRAW_HZ:
                            drawn_at = time.monotonic()
                            live.update(render_board(cards.values()))
            except httpx.HTTPError as e:
                raise AttachError("unreachable", f"lost the console at {url}: {e}") from e
            finally:
                live.update(render_board(cards.values()))
    return "the console closed the stream"


def _check(status: int, text: str, url: str) -> None:
    if status == 401:
        raise AttachError("unauthorized", f"the console at {url} refused the token (give --token)")
    if status != 200:
        raise AttachError("protocol", f"the console at {url} answered {status}: {text[:200]}")


async def attach_until_stopped(url: str, token: str | None, console: Console) -> str:
    """:func:`attach`, ended quietly by SIGINT or SIGTERM (then returns ``"stopped"``)."""
    import signal  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(attach(url, token, console))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return "stopped"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["AttachError", "attach", "attach_until_stopped", "sse_events"]
