"""The New Era NE-1000 / NE-500 ASCII protocol over a serial line (``nesp://`` URLs).

Written from ``new-era-protocol.md`` alone, independently of the simulator's codec, so that the two
sides of the PTY check each other rather than share one reading of the manual.

Why it looks the way it does:

- pyserial runs in worker threads on a :class:`~ketapump.wire.transports.serial.SerialLink`, whose
  port always has read and write timeouts; a worker gives up slightly before the base class's own
  timeout, so a silent pump costs one timeout per attempt and leaves no thread behind (nesp-lib,
  which reads without a timeout, hangs forever on a silent or mis-addressed pump).
- Safe-mode commands (``SAF<n>``, and the ``SAF`` query) always go out in a safe frame, as nesp-lib
  does; the pump answers in the framing of the mode *after* the command (the SAF trap), and a power-up
  alarm reply comes in the framing the command asked for. Rather than predict that, the reader
  recognises the framing of each reply (a basic reply's second byte is the first digit of the address,
  a safe reply's is a length byte of at most 4 + 17 for every reply the protocol defines), and the
  transport sends the next command in the framing of the last reply, which is the pump's current mode.
- **Every reply must answer its command**: the address it carries, a status letter, and the shape of
  the data the command asks for (:func:`reply_shape`: empty for a set, a number with units for ``RAT``,
  ``I…W…`` for ``DIS``...). New Era replies carry no request id, so a reply that arrives after its
  command timed out could pass for the answer to the next one; after anything that leaves the line out
  of step (a timeout, a reply that does not fit, garbage, bytes waiting before a command, a reopened
  port) the transport re-synchronises first: it sends ``VER``, whose reply no other command's can be
  mistaken for, and discards everything until that reply is back. The pump answers in order, so no
  older reply can follow it; a later duplicate of it is recognised by its shape and skipped. Replies
  discarded are counted in :attr:`NespTransport.discarded`, never used.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ketapump.errors import ConfigurationError, TransportError
from ketapump.wire.transports.base import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    CommandTransport,
    PumpRefusedError,
)
from ketapump.wire.transports.serial import WORKER_SHARE, LineInStep

log = logging.getLogger("ketapump.transport")

__all__ = [
    "ERROR_REPLIES",
    "STATUS_LETTERS",
    "FrameError",
    "NespTransport",
    "NespUrl",
    "crc16_xmodem",
    "decode_frame",
    "encode_basic",
    "encode_safe",
    "frame_size",
    "parse_nesp_url",
    "reply_shape",
]

STX = 0x02
ETX = 0x03
CR = 0x0D

#: Status letters a reply may carry after the two-digit address.
STATUS_LETTERS = frozenset("IWSPTUXA")
#: Error replies that are the pump's answer (refusals, never retried). ``?COM`` is not among them: it
#: says the packet arrived garbled, a link failure worth retrying.
ERROR_REPLIES = frozenset({"?", "?NA", "?OOR", "?IGN"})

#: The longest frame accepted: the longest defined reply is 17 data bytes (``00SI0.000W0.000ML``).
MAX_FRAME = 64
#: Safe-frame length bytes are data + 4; replies have at least ``AAp`` (3 bytes) of data.
MIN_SAFE_LEN = 7

URL_FORM = "nesp://PATH?address=0&baud=19200&safe=5 (also timeout=SECONDS, retries=N)"
URL_KEYS = ("address", "baud", "safe", "timeout", "retries")
DEFAULT_ADDRESS = 0
DEFAULT_BAUD = 19_200
#: Safe mode on by default: if the bridge dies, the pump's watchdog stops the motor after this long.
DEFAULT_SAFE_S = 5

_SAF = re.compile(r"SAF\d{0,3}")
_COMMAND_CHARS = re.compile(r"[ -~]*")

_NUMBER = r"\d*\.\d*"  # replies always carry a decimal point
#: The data a query's reply carries after ``AAp`` (a set's reply carries none).
QUERY_SHAPES: dict[str, re.Pattern[str]] = {
    "": re.compile(""),
    "SAF": re.compile(r"\d{1,3}"),
    "VER": re.compile(r"NE\d+(?:X\d+)?V\d+\.\d+"),
    "DIA": re.compile(_NUMBER),
    "RAT": re.compile(_NUMBER + "(?:UM|MM|UH|MH)"),
    "VOL": re.compile(_NUMBER + "(?:UL|ML)"),
    "DIS": re.compile(f"I{_NUMBER}W{_NUMBER}(?:UL|ML)"),
    "DIR": re.compile("INF|WDR|STK"),
}
#: Commands whose reply is status only: the sets of the commands above, and the program commands.
_SETS = re.compile(r"(?:SAF|DIA|RAT|VOL|DIR|CLD)\S+|RUN|STP|PUR")
#: The command a re-synchronisation sends: its reply cannot be mistaken for any other command's.
PROBE = "VER"


def reply_shape(text: str) -> re.Pattern[str] | None:
    """The data the reply to command ``text`` (upper case, no address) must carry after ``AAp``, or
    None for a command whose reply the protocol leaves open (``PHN``, ``FUN``...)."""
    if text in QUERY_SHAPES:
        return QUERY_SHAPES[text]
    if _SETS.fullmatch(text):
        return QUERY_SHAPES[""]
    return None


class FrameError(ValueError):
    """Bytes that are not a valid New Era frame (bad start, length, CRC or characters)."""


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, no reflection, no final XOR), as safe mode uses it."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode_basic(data: str) -> bytes:
    """A basic-mode request: ``<data> CR``."""
    return data.encode("ascii") + bytes([CR])


def encode_safe(data: str) -> bytes:
    """A safe-mode packet: ``STX len data crcHi crcLo ETX`` with len = len(data) + 4."""
    raw = data.encode("ascii")
    length = len(raw) + 4
    if length > 0xFF:
        raise FrameError(f"safe packet data too long ({len(raw)} bytes)")
    crc = crc16_xmodem(raw)
    return bytes([STX, length]) + raw + bytes([crc >> 8, crc & 0xFF, ETX])


def _is_basic(second: int) -> bool:
    """A basic reply starts ``STX`` + address digit; a safe reply's second byte is its length."""
    return 0x30 <= second <= 0x39


def frame_size(buf: bytes | bytearray) -> int | None:
    """The length of the reply frame at the start of ``buf``, or None while more bytes are needed.

    Raises FrameError as soon as the bytes cannot start a valid frame, so garbage fails fast instead
    of waiting for the timeout.
    """
    if not buf:
        return None
    if buf[0] != STX:
        raise FrameError(f"reply does not start with STX: {bytes(buf[:16])!r}")
    if len(buf) < 2:
        return None
    if _is_basic(buf[1]):
        end = buf.find(bytes([ETX]), 1)
        if end >= 0:
            return end + 1
        if len(buf) >= MAX_FRAME:
            raise FrameError(f"no ETX within {MAX_FRAME} bytes: {bytes(buf[:16])!r}")
        return None
    length = buf[1]
    if length < MIN_SAFE_LEN or length + 1 > MAX_FRAME:
        raise FrameError(f"bad safe-frame length byte {length}")
    return length + 1 if len(buf) >= length + 1 else None


def decode_frame(frame: bytes) -> tuple[str, bool]:
    """Unframes one complete reply; returns ``(data, safe)``. Raises FrameError on a bad frame."""
    if len(frame) < 2 or frame[0] != STX or frame[-1] != ETX:
        raise FrameError(f"not an STX…ETX frame: {frame!r}")
    if _is_basic(frame[1]):
        raw, safe = frame[1:-1], False
    else:
        length = frame[1]
        if length != len(frame) - 1:
            raise FrameError(f"safe-frame length byte {length} but {len(frame) - 1} bytes follow STX")
        raw, safe = frame[2:-3], True
        crc = (frame[-3] << 8) | frame[-2]
        if crc != crc16_xmodem(raw):
            raise FrameError(f"bad CRC {crc:#06x} (expected {crc16_xmodem(raw):#06x}) in {frame!r}")
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise FrameError(f"non-printable bytes in reply {frame!r}")
    return raw.decode("ascii"), safe


@dataclass(frozen=True)
class NespUrl:
    """A parsed ``nesp://PATH?address=…&baud=…&safe=…`` URL."""

    path: str
    address: int
    baud: int
    safe_s: int
    #: None when the URL does not say (the transport's defaults apply).
    timeout_s: float | None = None
    retries: int | None = None


def _int_param(key: str, value: str, low: int, high: int | None, hint: str) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        n = None
    if n is None or n < low or (high is not None and n > high):
        raise ConfigurationError(key, f"must be {hint}, not {value!r} (valid form: {URL_FORM})")
    return n


def parse_nesp_url(url: str) -> NespUrl:
    """Parses a ``nesp://`` URL; raises ConfigurationError naming the offending key.

    PATH is a device (``nesp:///dev/pts/3``) or any pyserial URL (``nesp://socket://host:port``).
    Query keys belong to ketapump; a pyserial URL's own options cannot be passed through.
    """
    parts = urlsplit(url)
    if parts.scheme != "nesp":
        raise ConfigurationError("url", f"must use the nesp scheme, not {url!r} (valid form: {URL_FORM})")
    if parts.fragment:
        raise ConfigurationError("url", f"must not have a fragment: {url!r} (valid form: {URL_FORM})")
    path = parts.netloc + parts.path
    if not path:
        raise ConfigurationError("url", f"names no device path: {url!r} (valid form: {URL_FORM})")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as e:
        raise ConfigurationError(
            "url", f"has a malformed query {parts.query!r}: valid form {URL_FORM}"
        ) from e
    values: dict[str, str] = {}
    for key, value in pairs:
        if key not in URL_KEYS:
            raise ConfigurationError(
                key, f"is not a nesp:// URL key (valid: {', '.join(URL_KEYS)}; {URL_FORM})"
            )
        if key in values:
            raise ConfigurationError(key, f"is given twice (valid form: {URL_FORM})")
        values[key] = value
    address = DEFAULT_ADDRESS
    baud = DEFAULT_BAUD
    safe_s = DEFAULT_SAFE_S
    if "address" in values:
        address = _int_param("address", values["address"], 0, 99, "an integer 0–99")
    if "baud" in values:
        baud = _int_param("baud", values["baud"], 300, None, "an integer baud rate >= 300")
    if "safe" in values:
        safe_s = _int_param("safe", values["safe"], 0, 255, "an integer 0–255 (seconds, 0 = basic mode)")
    timeout_s: float | None = None
    if "timeout" in values:
        try:
            timeout_s = float(values["timeout"])
        except ValueError:
            timeout_s = math.nan
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigurationError(
                "timeout", f"must be a positive number of seconds, not {values['timeout']!r} ({URL_FORM})"
            )
    retries = None
    if "retries" in values:
        retries = _int_param("retries", values["retries"], 0, None, "an integer >= 0")
    return NespUrl(path, address, baud, safe_s, timeout_s, retries)


class NespTransport(LineInStep, CommandTransport):
    """A New Era pump at one address on a serial line.

    ``command(text)`` sends ``<address><text>`` (``text`` without the address, e.g. ``"RAT52.50MH"``,
    ``""`` for a status query) and returns the reply data with its two-digit address, e.g.
    ``"00S26.59"``. Alarm replies (``"00A?R"``) are returned, not raised: they are valid answers whose
    meaning (the command was not executed) the driver handles.
    """

    def __init__(self, url: str, *, timeout_s: float | None = None, retries: int | None = None) -> None:
        """Explicit ``timeout_s`` / ``retries`` win over the URL's ``timeout`` / ``retries``, which win
        over the defaults. Raises ConfigurationError for a malformed URL."""
        parsed = parse_nesp_url(url)
        if timeout_s is None:
            timeout_s = parsed.timeout_s if parsed.timeout_s is not None else DEFAULT_TIMEOUT_S
        if retries is None:
            retries = parsed.retries if parsed.retries is not None else DEFAULT_RETRIES
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.path = parsed.path
        self.address = parsed.address
        self.baud = parsed.baud
        self.safe_s = parsed.safe_s
        self._open_line(url, self.path, baud=self.baud, timeout_s=timeout_s)
        #: True while the pump answers in safe frames (the framing of its last reply).
        self.safe_mode = False

    @classmethod
    def from_url(
        cls, url: str, target: str, params: dict[str, str], *, timeout_s: float, retries: int
    ) -> NespTransport:
        """The hook :func:`ketapump.wire.transports.open_transport` calls (it has already split the URL and
        read ``timeout`` / ``retries``); the URL is parsed again here so both entry points validate
        alike."""
        del target, params
        return cls(url, timeout_s=timeout_s, retries=retries)

    # -- commands ---------------------------------------------------------------------------------

    def frame_request(self, text: str) -> bytes:
        """The bytes sent for ``text``: ``SAF`` commands always in a safe frame (as nesp-lib does, so the
        pump accepts them whatever mode it is in), anything else in the pump's current framing."""
        data = f"{self.address}{text}"
        if self.safe_mode or _SAF.fullmatch(text):
            return encode_safe(data)
        return encode_basic(data)

    async def _command(self, text: str) -> str:
        if not _COMMAND_CHARS.fullmatch(text):
            raise ValueError(f"command must be printable ASCII: {text!r}")
        budget_s = self.timeout_s * WORKER_SHARE
        return await self.link.run(lambda port: self._exchange_sync(port, text, budget_s))

    def _exchange_sync(self, port: Any, text: str, budget_s: float) -> str:
        """Sends ``text`` and returns the data of its reply (worker thread, port lock held)."""
        deadline = time.monotonic() + budget_s
        if port.in_waiting:
            self._discard(port.read(port.in_waiting), "bytes waiting before a command")
        if not self._in_step:
            alarm = self._resync(port, deadline)
            if alarm is not None:
                # The pump answered the probe with an alarm: the command was not sent, which is what an
                # alarm reply means anyway ("not executed"); the caller handles it as such.
                return alarm
        port.reset_input_buffer()
        self._write(port, self.frame_request(text))
        self._in_step = False  # until its reply is in
        buf = bytearray()
        while True:
            data = self._read_reply(port, buf, deadline)
            if text != PROBE and QUERY_SHAPES[PROBE].fullmatch(data[3:]):
                # A late reply to an earlier re-synchronisation's probe: recognisable, skipped.
                self._discard(data.encode(), "a late reply to a VER probe")
                continue
            reply = self._check_reply(text, data)
            if buf:
                self._discard(buf, "bytes after the reply")
                raise TransportError(self.url, f"{text!r}: bytes followed the reply: {bytes(buf[:16])!r}")
            self._in_step = True
            return reply

    def _resync(self, port: Any, deadline: float) -> str | None:
        """Sends the probe and discards everything until its reply; returns an alarm reply instead if
        the pump answers the probe with one (see :meth:`_exchange_sync`)."""
        port.reset_input_buffer()
        self._write(port, self.frame_request(PROBE))
        buf = bytearray()
        while True:
            data = self._read_reply(port, buf, deadline)
            if data[:2] == f"{self.address:02d}" and data[2:3] == "A":
                return self._check_reply(PROBE, data)
            if data[:2] == f"{self.address:02d}" and QUERY_SHAPES[PROBE].fullmatch(data[3:]):
                self.resyncs += 1
                self._in_step = True
                return None
            self._discard(data.encode(), "a reply while re-synchronising")

    def _read_reply(self, port: Any, buf: bytearray, deadline: float) -> str:
        """Reads one reply frame (its bytes leave ``buf``); returns its data and notes its framing."""
        return self._read_one(port, buf, deadline, self._take_frame)

    def _take_frame(self, buf: bytearray) -> str | None:
        size = frame_size(buf)  # a FrameError (a ValueError) here: garbage
        if size is None:
            return None
        frame = bytes(buf[:size])
        del buf[:size]
        try:
            data, safe = decode_frame(frame)
        except FrameError as e:
            self._discard(frame, "a malformed frame")
            raise TransportError(self.url, str(e)) from e
        self.safe_mode = safe
        log.debug("%s: rx %r", self.url, frame)
        return data

    def _write(self, port: Any, request: bytes) -> None:
        log.debug("%s: tx %r", self.url, request)
        port.write(request)

    def _check_reply(self, text: str, data: str) -> str:
        """Validates address, status and the data's shape for ``text``; raises PumpRefusedError for an
        error reply and TransportError (the line is then out of step) for a reply that does not fit."""
        prefix = f"{self.address:02d}"
        if len(data) < 3 or not data[:2].isdigit():
            raise TransportError(self.url, f"{text!r}: malformed reply {data!r}")
        if data[:2] != prefix:
            raise TransportError(
                self.url, f"{text!r}: reply {data!r} is for address {data[:2]}, not {prefix}"
            )
        status, rest = data[2], data[3:]
        if status not in STATUS_LETTERS:
            raise TransportError(self.url, f"{text!r}: unknown status {status!r} in reply {data!r}")
        if status == "A":
            if len(rest) != 2 or rest[0] != "?":
                raise TransportError(self.url, f"{text!r}: malformed alarm reply {data!r}")
            return data
        if rest.startswith("?"):
            if rest in ERROR_REPLIES:
                raise PumpRefusedError(self.url, f"{text!r} refused by the pump: {rest}", rest)
            # ?COM: our packet arrived garbled; anything else is not a reply the protocol defines.
            raise TransportError(self.url, f"{text!r}: pump reports a bad packet or unknown error {rest!r}")
        shape = reply_shape(text.upper().replace(" ", ""))
        if shape is not None and not shape.fullmatch(rest):
            self._discard(data.encode(), f"a reply that does not answer {text!r}")
            raise TransportError(self.url, f"{text!r}: reply {data!r} does not answer this command")
        return data
