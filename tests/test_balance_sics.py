"""The MT-SICS balance client against a real PTY, with a small simulated balance on the other side that
answers ``SI`` from the simulated pump's gravimetric balance (the client cannot tell it from a real one),
or with scripted replies for the error paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketapump import _core
from ketapump.bridge.loop import InfusionPlan
from ketapump.clock import ScaledClock, VirtualClock
from ketapump.config import kernel_config
from ketapump.qa import accuracy
from ketapump.qa.balance import (
    BalanceBusyError,
    BalanceError,
    BalanceReplyError,
    SamplingClock,
    SicsBalance,
    Weighing,
    parse_si_reply,
)
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from simhelpers import ketapump


class PtyBalance:
    """The balance side of a PTY: reads CR LF commands and answers each with ``answer(command)``."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.commands: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        pending = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                pending += os.read(self.master, 256)
            except OSError:
                return
            while b"\r\n" in pending:
                command, pending = pending.split(b"\r\n", 1)
                self.commands.append(command)
                reply = self.answer(command)
                if reply:
                    os.write(self.master, reply)

    def __enter__(self) -> PtyBalance:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)


def weighing_balance(pump: _core.SimPump) -> Callable[[bytes], bytes]:
    """Answers ``SI`` with the simulated balance's latest reading: ``S D`` while the mass is changing,
    ``S S`` when it is not; ``ES`` to anything else."""

    def answer(command: bytes) -> bytes:
        if command != b"SI":
            return b"ES\r\n"
        readings = pump.balance_readings()
        grams = readings[-1][1]
        status = "D" if len(readings) > 1 and readings[-2][1] != grams else "S"
        return f"S {status} {grams:10.4f} g\r\n".encode()

    return answer


def scripted(*replies: bytes) -> Callable[[bytes], bytes]:
    """Answers with ``replies`` in turn, then repeats the last one."""
    queue = list(replies)

    def answer(_command: bytes) -> bytes:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return answer


@contextlib.contextmanager
def balance_on(
    answer: Callable[[bytes], bytes], **options: float
) -> Iterator[tuple[PtyBalance, SicsBalance]]:
    with PtyBalance(answer) as pty:
        client = SicsBalance(pty.path, **options)  # type: ignore[arg-type]
        with client:
            yield pty, client


def test_an_accuracy_run_over_the_serial_balance_records_what_the_balance_weighed() -> None:
    # 5 mL/h for 62 min (the shortest period with every IEC window in its second half), 50 mL syringe.
    pump = _core.SimPump("bd-plastipak-50", seed=4)
    clock = VirtualClock()
    driver = ReferencePumpDriver(open_transport("sim://", clock=clock, pump=pump))
    plan = InfusionPlan(
        rate_ml_h=5.0, volume_ml=accuracy.required_volume_ml(5.0, 62.0), syringe_diameter_mm=26.59
    )
    config = kernel_config(syringe_capacity_ml=50.0, syringe_fill_ml=50.0)
    with balance_on(weighing_balance(pump)) as (pty, client):
        readings = asyncio.run(accuracy.record_period(driver, clock, config, plan, client.grams))
    # One SI per 30 s of pump time, answered with exactly what the balance weighed at that instant.
    truth = dict(pump.balance_readings())
    assert [t for t, _ in readings] == [30.0 * k for k in range(len(readings))]
    assert len(readings) >= 125 and pty.commands == [b"SI"] * len(readings)
    for t, grams in readings:
        assert grams == pytest.approx(truth[t], abs=1e-9)
    result = accuracy.analyse(readings, rate_ml_h=5.0, duration_min=62.0)
    verdict = accuracy.verdict(result, 5.0)
    assert verdict.s1_mean_error and verdict.s2_trumpet
    assert set(result.ep) == {2.0, 5.0, 11.0, 19.0, 31.0}


@pytest.mark.parametrize(
    ("line", "weighing"),
    [
        (b"S S      12.345 g\r\n", Weighing(12.345, True)),
        (b"S D     -0.0012 g\r\n", Weighing(-0.0012, False)),
        (b"S S    1234.5 mg\r\n", Weighing(1.2345, True)),
        (b"S D     0.0125 kg", Weighing(12.5, False)),
    ],
)
def test_weight_replies_are_read_in_grams(line: bytes, weighing: Weighing) -> None:
    result = parse_si_reply(line)
    assert result.stable == weighing.stable
    assert result.grams == pytest.approx(weighing.grams)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"ES\r\n", "ES (syntax error"),
        (b"ET\r\n", "ET (transmission error"),
        (b"EL\r\n", "EL (logical error"),
        (b"S +\r\n", "overload"),
        (b"S -\r\n", "underload"),
        (b"hello\r\n", "unintelligible reply b'hello"),
        (b"S S    abc g\r\n", "unintelligible weight 'abc'"),
        (b"S S    nan g\r\n", "unintelligible weight 'nan'"),
        (b"S S 1.0 lb\r\n", "'lb'"),
        (b"S S 1.0\r\n", "unintelligible reply"),
        (b"S X 1.0 g\r\n", "unintelligible reply"),
        (b"\xff\xfe\r\n", "not ASCII"),
    ],
)
def test_error_and_garbled_replies_say_what_was_wrong(line: bytes, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_si_reply(line)
    assert problem in str(caught.value)


def test_busy_is_its_own_answer() -> None:
    with pytest.raises(BalanceBusyError):
        parse_si_reply(b"S I\r\n")


@pytest.mark.parametrize(
    ("reply", "problem"),
    [(b"ES\r\n", "SI answered ES"), (b"EL\r\n", "SI answered EL"), (b"#?!\r\n", "unintelligible reply")],
)
def test_error_replies_over_the_line_name_the_port(reply: bytes, problem: str) -> None:
    with balance_on(scripted(reply)) as (pty, client), pytest.raises(BalanceReplyError) as caught:
        client.weigh()
    assert pty.path in str(caught.value) and problem in str(caught.value)


def test_a_busy_balance_is_asked_again_then_given_up_on() -> None:
    with balance_on(scripted(b"S I\r\n", b"S I\r\n", b"S S 5.0000 g\r\n")) as (pty, client):
        assert client.grams() == 5.0
        assert pty.commands == [b"SI"] * 3
    with (
        balance_on(scripted(b"S I\r\n"), busy_retries=2) as (_pty, client),
        pytest.raises(BalanceReplyError, match=r"S I \(busy\) 3 times"),
    ):
        client.weigh()


def test_a_silent_or_cut_reply_is_a_timeout_naming_the_port() -> None:
    with balance_on(scripted(b""), timeout_s=0.3) as (pty, client), pytest.raises(BalanceError) as caught:
        client.weigh()
    assert pty.path in str(caught.value) and "no complete reply to SI within 0.3 s" in str(caught.value)
    with (
        balance_on(scripted(b"S S   1.0"), timeout_s=0.3) as (_pty, client),
        pytest.raises(BalanceError, match=r"got b'S S   1.0'"),
    ):
        client.weigh()


def test_an_unreachable_port_is_named() -> None:
    with pytest.raises(BalanceError, match="/dev/ketapump-no-such-balance") as caught:
        SicsBalance("/dev/ketapump-no-such-balance").open()
    assert not isinstance(caught.value, BalanceReplyError)


def test_port_options() -> None:
    balance = SicsBalance.from_spec("/dev/ttyUSB0?baud=19200&timeout=0.5")
    assert (balance.port, balance.baud, balance.timeout_s) == ("/dev/ttyUSB0", 19200, 0.5)
    assert SicsBalance.from_spec("/dev/ttyUSB0").baud == 9600
    with pytest.raises(BalanceError, match="unknown option 'parity'"):
        SicsBalance.from_spec("/dev/ttyUSB0?parity=E")
    with pytest.raises(BalanceError, match="malformed option"):
        SicsBalance.from_spec("/dev/ttyUSB0?baud=fast")
    with pytest.raises(BalanceError, match="no serial port"):
        SicsBalance.from_spec("?baud=9600")


def test_over_real_time_readings_run_beside_the_loop_and_a_failure_surfaces() -> None:
    loop_threads: list[int] = []
    read_threads: list[int] = []

    def read() -> float:
        read_threads.append(threading.get_ident())
        if len(read_threads) == 3:
            raise BalanceError("pty", "unplugged")
        return float(len(read_threads))

    async def body() -> SamplingClock:
        loop_threads.append(threading.get_ident())
        clock = SamplingClock(ScaledClock(300.0), read, period_s=30.0)  # a sample every 0.1 s
        for k in range(1, 7):
            await clock.sleep_until(10.0 * k)
        return clock

    async def until_failure() -> None:
        clock = await body()
        for k in range(7, 30):
            await clock.sleep_until(10.0 * k)

    with pytest.raises(BalanceError, match="unplugged"):
        asyncio.run(until_failure())
    assert read_threads and loop_threads[0] not in read_threads

    read_threads.clear()
    clock = asyncio.run(body())
    assert [t for t, _ in asyncio.run(clock.finish())] == [0.0, 30.0]


def qa(*args: str) -> subprocess.CompletedProcess[str]:
    return ketapump("qa", "accuracy", *args, timeout=120)


def test_cli_reports_an_unreachable_or_misbehaving_balance(tmp_path: Path) -> None:
    result = qa("--pump", "sim://", "--rate-ml-h", "5", "--balance", "sics:/dev/ketapump-no-such-balance",
                "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == os.EX_UNAVAILABLE
    assert "/dev/ketapump-no-such-balance" in result.stderr and "cannot open" in result.stderr
    with PtyBalance(scripted(b"EL\r\n")) as pty:
        result = qa("--pump", "sim://", "--rate-ml-h", "5", "--balance", f"sics:{pty.path}?timeout=1",
                    "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == os.EX_PROTOCOL, result.stderr
    assert pty.path in result.stderr and "SI answered EL" in result.stderr
    assert not (tmp_path / "accuracy.json").exists()
    no_pump = qa("--rate-ml-h", "5", "--balance", "sics:/dev/ttyUSB0", "--out", str(tmp_path))
    assert no_pump.returncode == os.EX_DATAERR and "--pump" in no_pump.stderr
    assert "Traceback" not in no_pump.stderr
