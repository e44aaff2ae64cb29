"""The Harvard Apparatus Pump 11 Elite / PHD ULTRA command set over a serial line (``harvard://`` URLs).

The wire protocol as implemented is in ``docs/harvard-protocol.md`` (with its sources). In short: a
request is ``<address><command>[ <arguments>]\\r\\n``; a reply is ``\\r\\n``, then one line per body
line, ``<AA><prompt><body>\\r\\n``, then the bare prompt line ``<AA><prompt>\\r\\n`` that ends it. ``AA``
is the two-digit address, the prompt the pump's state (``:`` idle, ``>`` infusing, ``<`` withdrawing,
``*`` stalled, ``T*`` target reached). An error is a body line: ``Command error``, ``Unknown command``,
``Argument error``, ``Out of range``, the pump's answer (:class:`PumpRefusedError`, never retried).

**Every reply must answer its request.** The replies carry no request id, so, as for New Era
(:mod:`ketapump.wire.transports.nesp`), each reply is checked for its address, its prompt and the shape
of the body its command asks for (:data:`QUERY_SHAPES`: none for a set, a rate with units for
``irate``...), and after anything that leaves the line out of step (a timeout, a reply that does not
fit, garbage, bytes waiting before a request, a reopened port) the transport re-synchronises first: it
sends ``ver``, whose reply no other command's can be mistaken for, and discards everything until that
reply is back. Discarded replies are counted in :attr:`HarvardTransport.discarded`, never used.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from ketapump.errors import TransportError
from ketapump.wire.transports.base import CommandTransport, PumpRefusedError
from ketapump.wire.transports.serial import WORKER_SHARE, LineInStep

log = logging.getLogger("ketapump.transport")

__all__ = [
    "ERROR_REPLIES",
    "PROMPTS",
    "QUERY_SHAPES",
    "HarvardReply",
    "HarvardTransport",
    "reply_shape",
]

#: Prompts and what they say about the pump.
PROMPTS = {":": "idle", ">": "infusing", "<": "withdrawing", "*": "stalled", "T*": "target_reached"}
#: Error bodies: the pump's answer to a request it did not carry out.
ERROR_REPLIES = frozenset({"Command error", "Unknown command", "Argument error", "Out of range"})
DEFAULT_BAUD = 115_200
#: The longest reply accepted (bytes): the longest defined one is ``ver``'s, under 60.
MAX_REPLY = 256

_LINE = re.compile(r"(\d\d)(T\*|[:><*])([ -~]*)")
_NUMBER = r"\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_VOLUME_UNITS = r"(?:ml|ul|nl|pl)"
#: The body a query's reply carries (a set's reply carries none).
QUERY_SHAPES: dict[str, re.Pattern[str]] = {
    "ver": re.compile(r"11 ELITE [ -~]* \d+\.\d+\.\d+|PHD ULTRA [ -~]* \d+\.\d+\.\d+"),
    "irate": re.compile(f"{_NUMBER} {_VOLUME_UNITS}/(?:hr|min|s)"),
    "diameter": re.compile(f"{_NUMBER} mm"),
    "ivolume": re.compile(f"{_NUMBER} {_VOLUME_UNITS}"),
}
#: Commands whose reply is the prompt alone: the sets of the queries above, and the actions.
_SETS = re.compile(r"(?:irate|diameter) \S.*|irun|stp|civolume|ctvolume|")
#: The request a re-synchronisation sends.
PROBE = "ver"
_COMMAND_CHARS = re.compile(r"[ -~]*")


def reply_shape(text: str) -> re.Pattern[str] | None:
    """The body the reply to ``text`` must carry: a pattern for a query, ``None`` for a request whose
    reply is the prompt alone; ``ValueError`` for a request this transport does not know (so an
    unchecked reply can never be taken)."""
    if text in QUERY_SHAPES:
        return QUERY_SHAPES[text]
    if _SETS.fullmatch(text):
        return None
    raise ValueError(f"no reply shape known for {text!r}")


class HarvardReply:
    """One reply: the address it came from, the prompt (the pump's state) and its body lines."""

    def __init__(self, address: int, prompt: str, body: list[str]) -> None:
        self.address = address
        self.prompt = prompt
        self.body = body

    def __repr__(self) -> str:
        return f"HarvardReply({self.address:02d}{self.prompt} {self.body!r})"

    @property
    def text(self) -> str:
        """``AA`` + prompt + the body's one line (``"00>5 ml/hr"``), as :meth:`CommandTransport.command`
        returns it."""
        return f"{self.address:02d}{self.prompt}{self.body[0] if self.body else ''}"


def split_reply(buf: bytearray) -> HarvardReply | None:
    """Takes one complete reply off the front of ``buf``; None while more bytes are needed. Raises
    ValueError as soon as the bytes cannot be a reply (garbage fails fast, not at the timeout)."""
    if not buf:
        return None
    if not buf.startswith(b"\r\n"[: len(buf)]):
        raise ValueError(f"reply does not start with CR LF: {bytes(buf[:16])!r}")
    end = 2
    body: list[str] = []
    address = -1
    while True:
        newline = buf.find(b"\r\n", end)
        if newline < 0:
            if len(buf) > MAX_REPLY:
                raise ValueError(f"no end of reply within {MAX_REPLY} bytes: {bytes(buf[:16])!r}")
            return None
        line = bytes(buf[end:newline])
        match = _LINE.fullmatch(line.decode("ascii", "replace"))
        if match is None:
            raise ValueError(f"not a reply line: {line[:32]!r}")
        if address >= 0 and int(match[1]) != address:
            raise ValueError(f"one reply from two addresses: {bytes(buf[: newline + 2])!r}")
        address = int(match[1])
        end = newline + 2
        if not match[3]:
            del buf[:end]
            return HarvardReply(address, match[2], body)
        body.append(match[3])


class HarvardTransport(LineInStep, CommandTransport):
    """A Harvard Apparatus Pump 11 Elite / PHD ULTRA at one address on a serial line.

    ``command(text)`` sends ``<address><text>\\r\\n`` and returns :attr:`HarvardReply.text` of its
    reply; :meth:`exchange` returns the whole :class:`HarvardReply`.
    """

    def __init__(
        self, url: str, *, path: str, address: int, baud: int, timeout_s: float, retries: int
    ) -> None:
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.path = path
        self.address = address
        self.baud = baud
        self._open_line(url, path, baud=baud, timeout_s=timeout_s)

    async def exchange(self, text: str) -> HarvardReply:
        """Sends ``text`` (without the address) and returns its checked reply."""
        return await self.request(repr(text), lambda: self._exchange(text))

    async def _command(self, text: str) -> str:
        return (await self._exchange(text)).text

    async def _exchange(self, text: str) -> HarvardReply:
        if not _COMMAND_CHARS.fullmatch(text):
            raise ValueError(f"command must be printable ASCII: {text!r}")
        shape = reply_shape(text)
        budget_s = self.timeout_s * WORKER_SHARE
        return await self.link.run(lambda port: self._exchange_sync(port, text, shape, budget_s))

    def _exchange_sync(
        self, port: Any, text: str, shape: re.Pattern[str] | None, budget_s: float
    ) -> HarvardReply:
        """Sends ``text`` and returns its reply (worker thread, port lock held)."""
        deadline = time.monotonic() + budget_s
        if port.in_waiting:
            self._discard(port.read(port.in_waiting), "bytes waiting before a request")
        if not self._in_step:
            self._resync(port, deadline)
        self._write(port, text)
        self._in_step = False  # until its reply is in
        buf = bytearray()
        while True:
            reply = self._read_reply(port, buf, deadline)
            if text != PROBE and len(reply.body) == 1 and QUERY_SHAPES[PROBE].fullmatch(reply.body[0]):
                self._discard(repr(reply).encode(), "a late reply to a ver probe")
                continue
            self._check_reply(text, shape, reply)
            if buf:
                self._discard(buf, "bytes after the reply")
                raise TransportError(self.url, f"{text!r}: bytes followed the reply: {bytes(buf[:16])!r}")
            self._in_step = True
            return reply

    def _resync(self, port: Any, deadline: float) -> None:
        """Sends the probe and discards everything until its reply."""
        port.reset_input_buffer()
        self._write(port, PROBE)
        buf = bytearray()
        while True:
            reply = self._read_reply(port, buf, deadline)
            if (
                reply.address == self.address
                and len(reply.body) == 1
                and QUERY_SHAPES[PROBE].fullmatch(reply.body[0])
            ):
                self.resyncs += 1
                self._in_step = True
                return
            self._discard(repr(reply).encode(), "a reply while re-synchronising")

    def _read_reply(self, port: Any, buf: bytearray, deadline: float) -> HarvardReply:
        reply = self._read_one(port, buf, deadline, split_reply)
        log.debug("%s: rx %r", self.url, reply)
        return reply

    def _write(self, port: Any, text: str) -> None:
        request = f"{self.address}{text}\r\n".encode("ascii")
        log.debug("%s: tx %r", self.url, request)
        port.write(request)

    def _check_reply(self, text: str, shape: re.Pattern[str] | None, reply: HarvardReply) -> None:
        """Address, error replies and the body's shape for ``text``; PumpRefusedError for an error
        reply, TransportError (the line then out of step) for a reply that does not fit."""
        if reply.address != self.address:
            self._discard(repr(reply).encode(), "a reply from another address")
            raise TransportError(
                self.url,
                f"{text!r}: reply {reply!r} is from address {reply.address:02d}, not {self.address:02d}",
            )
        errors = [line for line in reply.body if line in ERROR_REPLIES]
        if errors:
            self._in_step = True  # an answer, in step: the next request needs no re-synchronisation
            raise PumpRefusedError(self.url, f"{text!r} refused by the pump: {errors[0]}", errors[0])
        fits = not reply.body if shape is None else len(reply.body) == 1 and shape.fullmatch(reply.body[0])
        if not fits:
            self._discard(repr(reply).encode(), f"a reply that does not answer {text!r}")
            raise TransportError(self.url, f"{text!r}: reply {reply!r} does not answer this request")
