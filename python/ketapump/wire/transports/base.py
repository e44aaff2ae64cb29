"""The transport contract: one small interface per kind of link, behind a base class that owns
timeouts, retries, reconnection, logging and error mapping.

Backends implement the hooks (``_connect``, ``_close``, their request hooks, and ``_link_lost`` where
the link can tell it has ended between requests); callers use the public methods, which:

- MUST finish within ``timeout_s`` × (``retries`` + 1) plus reconnection time, or raise
  :class:`~ketapump.errors.PumpTimeoutError` naming the endpoint — never hang;
- MUST retry a request that timed out or failed at the link level up to ``retries`` times,
  reconnecting between attempts;
- MUST map every failure to :class:`~ketapump.errors.TransportError` (or its subclass
  :class:`~ketapump.errors.PumpTimeoutError`) with the endpoint URL in the message;
- MUST NOT retry a request the pump answered with a protocol error (Modbus exception, New Era
  ``?...``): that is an answer, raised at once as :class:`PumpRefusedError`;
- log every attempt that failed to the diagnostics logger ``ketapump.transport`` (never the audit log).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from ketapump.errors import PumpTimeoutError, TransportError
from ketapump.wire.budget import LogBudget
from ketapump.wire.regmap import RegisterMap

log = logging.getLogger("ketapump.transport")

T = TypeVar("T")

#: Per attempt. A reply on loopback takes ~0.2 ms and a 19-register RTU read at 19 200 baud ~30 ms;
#: one retried request (2 × 0.2 s) then fits well inside the pump's watchdog.
DEFAULT_TIMEOUT_S = 0.2
DEFAULT_RETRIES = 1
#: Warnings about discarded input a link logs at once, then a second (the rest are counted).
DISCARD_LOG_BURST, DISCARD_LOG_PER_S = 20, 1.0


class PumpRefusedError(TransportError):
    """The pump answered, and the answer was a refusal (a Modbus exception, a New Era error reply).

    ``code`` is the protocol's code (Modbus exception number or the New Era error text).
    """

    def __init__(self, endpoint: str, detail: str, code: int | str) -> None:
        super().__init__(endpoint, detail)
        self.code = code


#: Modbus exception codes and their names (the reference pump answers 1–4; 6 and 11 come from other
#: devices and gateways).
MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    11: "gateway target device failed to respond",
}


def modbus_refusal(endpoint: str, what: str, code: int) -> PumpRefusedError:
    """The error for a Modbus exception answer ``code`` to the request ``what``."""
    name = MODBUS_EXCEPTIONS.get(code, "exception")
    return PumpRefusedError(endpoint, f"{what} refused: Modbus exception {code} ({name})", code)


class AttemptDeadline:
    """Bounds one request attempt at a time to its deadline, as ``asyncio.timeout`` does (the attempt's
    task is cancelled there and the cancellation raised as ``TimeoutError``; a cancellation from
    anywhere else stays a cancellation), on one timer that outlives the attempts.

    ``asyncio.timeout`` per attempt makes a timer handle, pushes it on the event loop's heap and cancels
    it again: ~5 µs an attempt, a tenth of a Modbus TCP transaction's CPU, and at 6 400 requests/s a
    heap of ~1 300 cancelled handles the loop keeps sifting. Here an attempt only records its deadline.
    The timer, once armed, fires at the deadline it was armed for: if the attempt then running is past
    its own deadline it is cancelled, otherwise the timer re-arms at that attempt's deadline (so it
    fires at most once per timeout period while attempts keep coming, and a timed-out attempt is
    cancelled at its deadline exactly as before). One attempt at a time: :meth:`bound` gives a fresh
    deadline with a timer of its own to an attempt that overlaps another on the same transport.

    Use: ``with deadline.bound(timeout_s): await the_attempt()``.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self._due = 0.0
        self._cancelling = 0
        self._expired = False
        #: The loop the timer is armed on (None: not armed), and when it fires.
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._timer_due = 0.0

    def bound(self, timeout_s: float) -> AttemptDeadline:
        """This deadline (or a fresh one, if it is timing another attempt), set for the current task's
        attempt ``timeout_s`` from now. ``RuntimeError`` outside a task (as asyncio.timeout)."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a request must run inside an asyncio task")
        deadline = self if self._task is None else AttemptDeadline()
        loop = task.get_loop()
        due = loop.time() + timeout_s
        deadline._task, deadline._due, deadline._expired = task, due, False
        deadline._cancelling = task.cancelling()
        if deadline._timer_loop is not loop or deadline._timer_due > due:
            deadline._arm(loop, due)
        return deadline

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        # As asyncio.timeout: the cancellation this deadline made is a TimeoutError, unless the task was
        # also cancelled from elsewhere.
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and kind is asyncio.CancelledError
        ):
            raise TimeoutError from error

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self._timer_loop, self._timer_due = loop, due
        loop.call_at(due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        # Every firing looks at the attempt timed now, so a timer left over from an earlier arming (on
        # another loop, or re-armed earlier) can cost a look but never a wrong cancellation.
        if loop is not self._timer_loop:
            return
        task = self._task
        if task is None:
            self._timer_loop = None  # nothing to time: the next attempt arms it
        elif loop.time() < self._due:
            self._arm(loop, self._due)  # it was armed for an earlier attempt
        else:
            self._timer_loop = None
            self._expired = True
            task.cancel()


class Transport(ABC):
    """A link to one pump, addressed by its URL."""

    def __init__(
        self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self._connected = False
        self._deadline = AttemptDeadline()
        self._discard_log = LogBudget(DISCARD_LOG_BURST, DISCARD_LOG_PER_S)

    @property
    def connected(self) -> bool:
        """Whether the link is open: not known to have failed since, nor still being made (it may still
        fail on the next request)."""
        return self._connected and not self._link_lost()

    def _link_lost(self) -> bool:
        """Whether the open link is known to carry no more requests (the pump hung up), or is still
        being made for another request: the next request goes through ``_connect`` first rather than
        failing on it. A link that cannot tell says False."""
        return False

    async def connect(self) -> None:
        """Opens the link (once; a connected transport returns at once); raises TransportError or
        PumpTimeoutError naming the endpoint."""
        if self.connected:
            return
        try:
            await asyncio.wait_for(self._connect(), self.timeout_s)
        except TimeoutError as e:
            raise PumpTimeoutError(self.url, f"no connection within {self.timeout_s:g} s") from e
        except TransportError:
            raise
        except (OSError, ConnectionError) as e:
            raise TransportError(self.url, f"cannot connect: {e}") from e
        self._connected = True

    async def _reconnect(self) -> None:
        """Opens the link inside a request's attempt (whose timeout bounds it)."""
        try:
            await self._connect()
        except TransportError:
            raise
        except (OSError, ConnectionError) as e:
            raise TransportError(self.url, f"cannot connect: {e}") from e
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        await self._close()

    def _warn_discarded(self, message: str, *args: object) -> None:
        """Logs a warning about input the link threw away, within a budget: a noisy line or a device
        answering at random cannot flood the log. The count left out rides on the next one logged."""
        suffix = self._discard_log.admit("more discards not logged")
        if suffix is not None:
            log.warning(message + suffix, *args, stacklevel=2)  # the record names the link's code

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, what: str | Callable[[], str], attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs ``attempt`` with the timeout, retries and error mapping of this transport. Each attempt,
        reconnection included, takes at most ``timeout_s``: a request ends within timeout × (retries + 1).
        ``what`` names the request in errors and logs (a callable is called only if one is needed)."""
        last: Exception | None = None
        for n in range(self.retries + 1):
            link: object = None
            try:
                # The deadline bounds the attempt inside this task (wait_for would wrap it in a new
                # one); a reconnection is part of the attempt, never time on top of it.
                with self._deadline.bound(self.timeout_s):
                    if not self.connected:
                        await self._reconnect()
                    link = self._link()
                    return await attempt()
            except PumpRefusedError:
                raise
            except (TimeoutError, TransportError, OSError, ConnectionError) as e:
                last = e
                log.warning(
                    "%s: %s failed (attempt %d of %d): %s",
                    self.url, _name(what), n + 1, self.retries + 1, _reason(e, self.timeout_s),
                )  # fmt: skip
                self._connected = False
                await self._drop(link)
        if isinstance(last, TimeoutError | PumpTimeoutError):
            raise PumpTimeoutError(
                self.url,
                f"{_name(what)}: no answer within {self.timeout_s:g} s after {self.retries + 1} attempts",
            ) from last
        raise TransportError(
            self.url,
            f"{_name(what)} failed after {self.retries + 1} attempts: {_reason(last, self.timeout_s)}",
        ) from last

    def _link(self) -> object:
        """The link an attempt is about to use, for :meth:`_drop` if the attempt fails (None: a
        transport with one link at a time)."""
        return None

    async def _drop(self, link: object) -> None:
        """Ends the link an attempt failed on (``link``, from :meth:`_link`; None if it failed before
        it had one), so nothing of its exchange can reach a later request."""
        await self._close()

    @abstractmethod
    async def _connect(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...


def _name(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def _reason(error: BaseException | None, timeout_s: float) -> str:
    """Why an attempt failed, never empty (a ``TimeoutError`` carries no message of its own)."""
    if isinstance(error, TimeoutError) and not str(error):
        return f"no answer within {timeout_s:g} s"
    return str(error) or type(error).__name__


#: What one Modbus request can carry (Modbus application protocol v1.1b3, 6.3, 6.4, 6.12, 6.17): registers
#: read; written (function 16); written by function 23.
MAX_READ, MAX_WRITE, MAX_FC23_WRITE = 125, 123, 121


class RegisterTransport(Transport):
    """A link that reads and writes 16-bit holding registers (Modbus, or the in-process simulator).

    A request no Modbus frame can carry (a quantity out of range, a register past 65535, a value that
    is not 16 bits) is refused with TransportError when it is made: it is never sent, retried, or
    allowed to cost the link its connection."""

    #: A read-write register that reads back what is written and that a write to never harms (the
    #: reference pump's ``heartbeat``, set by its driver). A transport whose replies carry no request
    #: id (Modbus RTU) writes fresh values to it to prove the line is in step; others ignore it.
    sync_register: int | None = None
    #: The function that reads registers (3, or 4 for a pump that answers only "read input registers").
    read_function: int = 3
    #: Whether one register is written with function 6 (otherwise with 16 and a quantity of 1).
    write_single: bool = True
    #: A bring-your-own map from the URL (``?map=PATH``); ``None``: the reference pump's.
    register_map: RegisterMap | None = None

    # The request methods return the request's coroutine rather than awaiting it in one of their own:
    # one coroutine less per request, at every control tick of every pump.

    def read_registers(self, address: int, count: int) -> Awaitable[list[int]]:
        what = describe_read(address, count)
        self._carried(what, address, count, MAX_READ)
        return self.request(what, lambda: self._read(address, count, what))

    def write_registers(self, address: int, values: list[int]) -> Awaitable[None]:
        what = describe_write(address, values)
        self._carried(what, address, len(values), MAX_WRITE, values)
        return self.request(what, lambda: self._write(address, values, what))

    def write_and_read_registers(
        self, write_address: int, values: list[int], read_address: int, count: int
    ) -> Awaitable[list[int]]:
        """Writes ``values`` at ``write_address``, then reads ``count`` registers at ``read_address``,
        under one timeout: one Modbus function 23 transaction where the link has it (the pump applies
        the write, then answers the read; it refuses both or neither), else the write and the read one
        after the other."""

        def what() -> str:
            return f"{describe_write(write_address, values)()} and {describe_read(read_address, count)()}"

        self._carried(what, read_address, count, MAX_READ)
        self._carried(what, write_address, len(values), MAX_FC23_WRITE, values)
        return self.request(
            what, lambda: self._write_and_read(write_address, values, read_address, count, what)
        )

    def _carried(
        self, what: Callable[[], str], address: int, count: int, most: int, values: list[int] | None = None
    ) -> None:
        """Returns if one Modbus request can carry these registers; else raises TransportError naming
        what is wrong."""
        if not 1 <= count <= most:
            raise TransportError(self.url, f"{what()}: Modbus carries 1 to {most} registers, not {count}")
        if not (address >= 0 and address + count <= 0x10000):
            last = address + count - 1
            raise TransportError(self.url, f"{what()}: registers {address}..{last} are not all in 0..65535")
        if values is not None and not (min(values) >= 0 and max(values) <= 0xFFFF):
            raise TransportError(self.url, f"{what()}: a register holds 0..65535, not {values}")

    # The request hooks get the request's name (``what``, called only when an error needs it) from the
    # public method, so every link names a request alike.

    @abstractmethod
    def _read(self, address: int, count: int, what: Callable[[], str]) -> Awaitable[list[int]]:
        """MUST raise PumpRefusedError for a Modbus exception answer."""

    @abstractmethod
    async def _write(self, address: int, values: list[int], what: Callable[[], str]) -> None:
        """MUST raise PumpRefusedError for a Modbus exception answer."""

    def _write_and_read(
        self, write_address: int, values: list[int], read_address: int, count: int, what: Callable[[], str]
    ) -> Awaitable[list[int]]:
        """Two exchanges, each named for itself (which one failed tells whether the write was applied);
        a transport that speaks function 23 makes it one, named ``what``."""

        async def write_then_read() -> list[int]:
            await self._write(write_address, values, describe_write(write_address, values))
            return await self._read(read_address, count, describe_read(read_address, count))

        return write_then_read()


def describe_read(address: int, count: int) -> Callable[[], str]:
    """The name of a register read in errors and logs, formatted only when one needs it."""
    return lambda: f"read {count} at {address}"


def describe_write(address: int, values: list[int]) -> Callable[[], str]:
    """The name of a register write in errors and logs, formatted only when one needs it."""
    return lambda: f"write {len(values)} at {address}"


class CommandTransport(Transport):
    """A link that sends a text command and returns the reply's data (the New Era ASCII protocol):
    the unframed reply text, e.g. ``"00S26.59"``. Error replies (``?``, ``?NA``, ``?OOR``, ``?IGN``)
    MUST raise PumpRefusedError; a ``?COM`` (garbled packet) is a link failure and is retried."""

    async def command(self, text: str) -> str:
        return await self.request(repr(text), lambda: self._command(text))

    @abstractmethod
    async def _command(self, text: str) -> str: ...
