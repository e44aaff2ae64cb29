"""Transport benchmarks: poll capacity over Modbus TCP, and serial round trips at 19 200 baud.

Run: ``python -m pytest benches/test_transport_bench.py -q -p no:randomly``
Quick smoke (1 pump, 100 Hz, 0.5 s):
``KETAPUMP_BENCH_QUICK=1 python -m pytest benches/test_transport_bench.py --benchmark-disable``.

poll-capacity
    N simulated pumps served by hw-sim (Modbus TCP on loopback) in a *separate* process, so that the
    server's CPU does not count against the bridge. The benchmark process runs one asyncio loop with N
    ``ReferencePumpDriver(open_transport("modbus-tcp://..."))``; every cycle, for every pump: read the
    telemetry block, write the rate, write the heartbeat. Cycles are paced by absolute deadlines; a cycle
    is on time when all its pumps' requests have finished before the next deadline; a cycle that overruns
    makes the loop skip the deadlines already passed (they count as missed). The same campaign is run
    with bare pymodbus ``AsyncModbusTcpClient``s doing the same register operations, to compare CPU time
    per request.

serial
    Modbus RTU (read 10 registers) and New Era ASCII (``RAT`` query, basic mode) round trips on a PTY,
    with the simulator pacing bytes at 19 200 baud; compared with the wire-time floor computed from the
    bytes actually exchanged (for RTU plus the 3.5-character inter-frame silence a master must keep).

Targets (reported, not asserted — only correctness is asserted): 64 pumps × 100 Hz with ≥ 99.9 % of
cycles on time; the bridge adds ≤ 10 % CPU per request over bare pymodbus; RTU round trip ≤ 1.2× the
wire floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest
from pymodbus.client import AsyncModbusTcpClient

from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.sim.server import SimServer, wire_time_s
from ketapump.wire.drivers.reference import ReferencePumpDriver
from ketapump.wire.transports import open_transport
from ketapump.wire.transports.base import RegisterTransport
from ketapump.wire.transports.nesp import NespTransport
from ketapump.wire.transports.rtu import ModbusRtuTransport, frame_gap_s

QUICK = bool(os.environ.get("KETAPUMP_BENCH_QUICK"))  # as benches/conftest.py

PUMP_COUNTS = [1] if QUICK else [1, 16, 64]
RATES_HZ = [100] if QUICK else [20, 50, 100]
CAMPAIGN_S = 0.5 if QUICK else 3.0
REQUESTS_PER_PUMP = 3  # telemetry read + rate write + heartbeat write

TELEMETRY = (30, 19)  # encoder_counts .. heartbeat_age_ms
RATE_REGISTER = 20  # f32, 2 words
HEARTBEAT_REGISTER = 24
BAUD = 19_200

TARGET_ON_TIME = 0.999
TARGET_CPU_RATIO = 1.10
TARGET_RTU_FLOOR_RATIO = 1.2

# Runs in its own interpreter: N simulated pumps, Modbus TCP only; prints one JSON line with the N
# endpoints, serves until SIGTERM.
SERVER_SCRIPT = """
import asyncio, json, signal, sys
from ketapump import _core
from ketapump.clock import ScaledClock
from ketapump.sim.server import SimServer

async def main(n):
    servers = [SimServer(_core.SimPump("bd-plastipak-50", seed=i + 1), ScaledClock(1.0)) for i in range(n)]
    endpoints = []
    for server in servers:
        endpoints.append((await server.start(modbus_rtu=False, nesp=False))["modbus_tcp"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps(endpoints), flush=True)
    await stop.wait()
    for server in servers:
        await server.stop()

asyncio.run(main(int(sys.argv[1])))
"""

# Rows for the summary table printed at the end of the module.
RESULTS: list[tuple[str, dict[str, Any]]] = []


# ----- the simulator process -----------------------------------------------------------------------


class SimProcess:
    """``n`` simulated pumps served in a child process."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, str(n)],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise RuntimeError(f"simulator process gave no endpoints: {self.stderr.read()}")
        self.endpoints: list[str] = json.loads(line)
        assert len(self.endpoints) == n

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the server process has used, from /proc; None elsewhere."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@pytest.fixture(scope="module")
def sim_processes() -> Iterator[Callable[[int], SimProcess]]:
    """Gives the simulator process for ``n`` pumps; one alive at a time (the previous one is stopped,
    so an idle server does not compete for the CPU)."""
    current: dict[int, SimProcess] = {}

    def get(n: int) -> SimProcess:
        if n not in current:
            for other in current.values():
                other.stop()
            current.clear()
            current[n] = SimProcess(n)
        return current[n]

    yield get
    for proc in current.values():
        proc.stop()


@pytest.fixture(scope="module", autouse=True)
def summary_table(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints the measured figures as one table when the module is done."""
    yield
    if not RESULTS:
        return
    capman = request.config.pluginmanager.getplugin("capturemanager")
    guard = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with guard:
        print("\n" + format_table(RESULTS))


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines: list[str] = []
    poll = [(name, r) for name, r in rows if r.get("group") == "poll-capacity"]
    serial = [(name, r) for name, r in rows if r.get("group") == "serial"]
    if poll:
        lines.append("poll capacity (Modbus TCP, loopback; server in its own process)")
        header = (
            f"{'pumps':>5} {'Hz':>4} {'on time':>8} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} "
            f"{'bridge µs/req':>13} {'bare µs/req':>11} {'ratio':>6} {'bare on time':>12} {'srv CPU':>7}"
        )
        lines += [header, "-" * len(header)]
        for _, r in poll:
            srv = r.get("server_cpu_utilisation")
            lines.append(
                f"{r['pumps']:>5} {r['rate_hz']:>4} {r['on_time_fraction']:>8.2%} "
                f"{r['cycle_latency_p50_ms']:>7.2f} {r['cycle_latency_p99_ms']:>7.2f} "
                f"{r['requests_per_s']:>7.0f} {r['cpu_us_per_request']:>13.1f} "
                f"{r['bare_cpu_us_per_request']:>11.1f} {r['cpu_ratio_bridge_over_bare']:>6.3f} "
                f"{r['bare_on_time_fraction']:>12.2%} {'-' if srv is None else f'{srv:.0%}':>7}"
            )
    if serial:
        lines.append("serial round trip on a PTY paced at 19 200 baud")
        header = (
            f"{'protocol':<10} {'req B':>5} {'reply B':>7} {'floor ms':>8} {'median ms':>9} "
            f"{'max ms':>10} {'ratio':>6}"
        )
        lines += [header, "-" * len(header)]
        for _, r in serial:
            median = r.get("median_ms")
            ratio = r.get("ratio_median_over_floor")
            worst = r.get("max_ms")
            lines.append(
                f"{r['protocol']:<10} {r['request_bytes']:>5} {r['reply_bytes']:>7} "
                f"{r['wire_floor_ms']:>8.2f} {'-' if median is None else f'{median:.2f}':>9} "
                f"{'-' if worst is None else f'{worst:.2f}':>10} "
                f"{'-' if ratio is None else f'{ratio:.3f}':>6}"
            )
    return "\n".join(lines)


# ----- the paced poll campaign ---------------------------------------------------------------------


async def campaign(
    cycle: Callable[[int, int], Awaitable[None]], n_pumps: int, rate_hz: float, duration_s: float
) -> dict[str, Any]:
    """Runs ``cycle(pump, k)`` for every pump at each deadline ``t0 + k / rate_hz`` for ``duration_s``.

    A cycle that overruns its period makes the loop skip the deadlines already passed; those count as
    cycles not on time.
    """
    loop = asyncio.get_running_loop()
    period = 1.0 / rate_hz
    deadlines = max(1, round(duration_s * rate_hz))
    durations: list[float] = []
    lateness: list[float] = []
    errors: list[BaseException] = []
    on_time = cycles = 0
    cpu0 = time.process_time()
    t0 = loop.time() + 0.02
    k = 0
    while k < deadlines:
        due = t0 + k * period
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        start = loop.time()
        results = await asyncio.gather(*(cycle(i, k) for i in range(n_pumps)), return_exceptions=True)
        end = loop.time()
        cycles += 1
        errors += [r for r in results if isinstance(r, BaseException)]
        durations.append(end - start)
        lateness.append(start - due)
        if end <= due + period:
            on_time += 1
        k = max(k + 1, math.ceil((end - t0) / period))
    wall = loop.time() - t0
    cpu = time.process_time() - cpu0
    requests = cycles * n_pumps * REQUESTS_PER_PUMP
    return {
        "deadlines": deadlines,
        "cycles_run": cycles,
        "on_time_cycles": on_time,
        "on_time_fraction": on_time / deadlines,
        "cycle_latency_p50_ms": percentile(durations, 50) * 1e3,
        "cycle_latency_p99_ms": percentile(durations, 99) * 1e3,
        "wake_lateness_p99_ms": percentile(lateness, 99) * 1e3,
        "requests": requests,
        "requests_per_s": requests / wall,
        "cpu_s": cpu,
        "cpu_us_per_request": cpu / requests * 1e6,
        "errors": [repr(e) for e in errors[:5]],
        "error_count": len(errors),
    }


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` inside the running loop (called from outside it, gather would bind its
    futures to the default loop)."""
    return await asyncio.gather(*aws)


async def bare_clients(endpoints: list[str]) -> list[AsyncModbusTcpClient]:
    """Connected pymodbus clients (they must be built inside the running loop)."""
    clients = []
    for endpoint in endpoints:
        host, port = endpoint.rsplit(":", 1)
        clients.append(AsyncModbusTcpClient(host, port=int(port), timeout=0.5, retries=0))
    assert all(await asyncio.gather(*(c.connect() for c in clients)))
    return clients


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * pct / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def rate_for(pump: int, k: int) -> float:
    """A varying, valid rate command (mL/h)."""
    return 5.0 + (pump + k) % 20


@pytest.mark.parametrize("rate_hz", RATES_HZ, ids=lambda r: f"{r}Hz")
@pytest.mark.parametrize("n_pumps", PUMP_COUNTS, ids=lambda n: f"{n}pumps")
def test_poll_capacity(
    benchmark: Any, sim_processes: Callable[[int], SimProcess], n_pumps: int, rate_hz: int
) -> None:
    sim = sim_processes(n_pumps)
    loop = asyncio.new_event_loop()
    try:
        # --- the bridge: one driver per pump, all on this loop ----------------------------------
        drivers = [
            ReferencePumpDriver(cast(RegisterTransport, open_transport(f"modbus-tcp://{ep}")))
            for ep in sim.endpoints
        ]
        loop.run_until_complete(gather(*(d.connect() for d in drivers)))
        telemetry_ok = [0]

        async def bridge_cycle(pump: int, k: int) -> None:
            driver = drivers[pump]
            t = await driver.read_telemetry()
            if t.syringe_present and math.isfinite(t.volume_ml) and math.isfinite(t.pressure_mmhg):
                telemetry_ok[0] += 1
            await driver.set_rate_ml_h(rate_for(pump, k))
            await driver.heartbeat()

        server_cpu0 = sim.cpu_s()
        wall0 = time.perf_counter()
        bridge: dict[str, Any] = benchmark.pedantic(
            lambda: loop.run_until_complete(campaign(bridge_cycle, n_pumps, rate_hz, CAMPAIGN_S)),
            rounds=1,
            iterations=1,
        )
        server_cpu1 = sim.cpu_s()
        server_util = (
            None
            if server_cpu0 is None or server_cpu1 is None
            else (server_cpu1 - server_cpu0) / (time.perf_counter() - wall0)
        )
        last_rates = loop.run_until_complete(gather(*(d._read("rate_ml_h") for d in drivers)))
        loop.run_until_complete(gather(*(d.close() for d in drivers)))

        # --- bare pymodbus: same operations, same servers, same pacing --------------------------
        clients = loop.run_until_complete(bare_clients(sim.endpoints))
        bare_bad = [0]

        async def bare_cycle(pump: int, k: int) -> None:
            client = clients[pump]
            rr = await client.read_holding_registers(TELEMETRY[0], count=TELEMETRY[1], device_id=1)
            words = client.convert_to_registers(rate_for(pump, k), client.DATATYPE.FLOAT32)
            wr = await client.write_registers(RATE_REGISTER, words, device_id=1)
            hr = await client.write_register(HEARTBEAT_REGISTER, (k + 1) % 65_536, device_id=1)
            if rr.isError() or len(rr.registers) != TELEMETRY[1] or wr.isError() or hr.isError():
                bare_bad[0] += 1

        bare = loop.run_until_complete(campaign(bare_cycle, n_pumps, rate_hz, CAMPAIGN_S))
        for client in clients:
            client.close()
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    # Correctness: every request answered, telemetry sane, the last command reached each pump.
    assert bridge["error_count"] == 0, bridge["errors"]
    assert telemetry_ok[0] == bridge["cycles_run"] * n_pumps
    assert all(1.0 <= r <= 30.0 for r in last_rates), last_rates
    assert bare["error_count"] == 0, bare["errors"]
    assert bare_bad[0] == 0

    info: dict[str, Any] = {
        "group": "poll-capacity",
        "pumps": n_pumps,
        "rate_hz": rate_hz,
        "duration_s": CAMPAIGN_S,
        **{k: v for k, v in bridge.items() if k not in {"errors"}},
        "bare_on_time_fraction": bare["on_time_fraction"],
        "bare_cycle_latency_p99_ms": bare["cycle_latency_p99_ms"],
        "bare_requests_per_s": bare["requests_per_s"],
        "bare_cpu_us_per_request": bare["cpu_us_per_request"],
        "cpu_ratio_bridge_over_bare": bridge["cpu_us_per_request"] / bare["cpu_us_per_request"],
        "server_cpu_utilisation": server_util,
        "target_on_time_fraction": TARGET_ON_TIME if (n_pumps, rate_hz) == (64, 100) else None,
        "target_cpu_ratio": TARGET_CPU_RATIO,
    }
    benchmark.extra_info.update(info)
    RESULTS.append((f"poll {n_pumps}x{rate_hz}Hz", info))


# ----- serial round trips --------------------------------------------------------------------------


class TracedRtuTransport(ModbusRtuTransport):
    """The bridge's RTU transport, recording the last request and reply frames."""

    sent = b""
    received = b""

    def _send(self, port: Any, request: bytes) -> None:
        self.sent, self.received = request, b""
        super()._send(port, request)

    def _receive(self, port: Any, expected: Any, deadline: float, *, resyncing: bool) -> bytes:
        self.received = super()._receive(port, expected, deadline, resyncing=resyncing)
        return self.received


class TracedNespTransport(NespTransport):
    """The bridge's New Era transport, recording the last request and reply frames (basic mode)."""

    sent = b""
    received = b""

    def _write(self, port: Any, request: bytes) -> None:
        self.sent = request
        super()._write(port, request)

    def _read_reply(self, port: Any, buf: bytearray, deadline: float) -> str:
        data = super()._read_reply(port, buf, deadline)
        self.received = b"\x02" + data.encode() + b"\x03"
        return data


@pytest.mark.parametrize("protocol", ["modbus-rtu", "nesp"])
def test_serial_round_trip(benchmark: Any, protocol: str) -> None:
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        endpoints = {"modbus_tcp": False, "modbus_rtu": protocol == "modbus-rtu", "nesp": protocol == "nesp"}
        server = SimServer(_core.SimPump("bd-plastipak-50", seed=1), ScaledClock(1.0))
        loop.run_until_complete(server.start(**endpoints))
        stack.push_async_callback(server.stop)
        assert server.baud == BAUD and server.pace
        if protocol == "modbus-rtu":
            path = server.endpoints["modbus_rtu_pty"]
            rtu = TracedRtuTransport(
                f"modbus-rtu://{path}",
                path=str(path),
                baud=BAUD,
                parity="N",
                unit=1,
                timeout_s=0.5,
                retries=0,
            )
            transport: TracedRtuTransport | TracedNespTransport = rtu

            async def exchange() -> object:
                return await rtu.read_registers(30, 10)

            def valid(reply: object) -> bool:
                return isinstance(reply, list) and len(reply) == 10
        else:
            nesp = TracedNespTransport(f"nesp://{server.endpoints['nesp_pty']}?address=0&safe=0", retries=0)
            transport = nesp

            async def exchange() -> object:
                return await nesp.command("RAT")

            def valid(reply: object) -> bool:
                return isinstance(reply, str) and reply[:2] == "00" and len(reply) > 3

        loop.run_until_complete(transport.connect())
        # Warm up (the first exchange also settles the pump's power-up state), and check the frames.
        first = loop.run_until_complete(exchange())
        assert valid(first), first
        replies: list[object] = []

        def round_trip() -> None:
            replies.append(loop.run_until_complete(exchange()))

        benchmark(round_trip)
        loop.run_until_complete(transport.close())
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()

    assert replies and all(valid(r) for r in replies), replies[:3]
    request_bytes, reply_bytes = len(transport.sent), len(transport.received)
    if protocol == "modbus-rtu":
        assert (request_bytes, reply_bytes) == (8, 3 + 2 * 10 + 2)
    else:
        assert isinstance(transport, NespTransport) and not transport.safe_mode
        assert transport.sent == b"0RAT\r"
    floor_s = wire_time_s(request_bytes + reply_bytes, BAUD)
    if protocol == "modbus-rtu":
        floor_s += frame_gap_s(BAUD)  # the 3.5-character silence a master must keep between frames
    info: dict[str, Any] = {
        "group": "serial",
        "protocol": protocol,
        "baud": BAUD,
        "request_bytes": request_bytes,
        "reply_bytes": reply_bytes,
        "wire_floor_ms": floor_s * 1e3,
        "reply_sample": repr(replies[-1]),
    }
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        info["median_ms"] = stats.median * 1e3
        info["max_ms"] = stats.max * 1e3
        info["rounds"] = stats.rounds
        info["ratio_median_over_floor"] = stats.median / floor_s
        if protocol == "modbus-rtu":
            info["target_ratio"] = TARGET_RTU_FLOOR_RATIO
    else:  # --benchmark-disable: one untimed call
        info["median_ms"] = info["max_ms"] = info["ratio_median_over_floor"] = None
    benchmark.extra_info.update(info)
    RESULTS.append((f"serial {protocol}", info))
