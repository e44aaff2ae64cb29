"""The register map of the ketapump reference pump, read from the shipped data file, and its wire
contract (function codes, exceptions, unit ids, framing rules).

One source of truth: ``data/register_map.toml`` is compiled into the simulator (Rust) and read here by
the bridge's driver. ``docs/register-map.md`` is rendered from it with the wire rules below
(``python -m ketapump.wire.regmap > docs/register-map.md``), and a test keeps the two in step.
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

RegType = Literal["u16", "i32", "f32"]
Access = Literal["ro", "rw", "wo"]

WORDS: dict[str, int] = {"u16": 1, "i32": 2, "f32": 2}


@dataclass(frozen=True)
class FunctionCode:
    """A Modbus function the reference pump can serve (a map lists which it does)."""

    name: str
    request: str
    reply: str


#: The function codes the simulator's request handler implements (``hw-sim/src/modbus.rs``); a map's
#: ``function_codes`` must be among them.
FUNCTION_CODES: dict[int, FunctionCode] = {
    3: FunctionCode("read holding registers", "address, quantity 1–125", "byte count, the registers"),
    4: FunctionCode(
        "read input registers (the same registers as 3)",
        "address, quantity 1–125",
        "byte count, the registers",
    ),
    6: FunctionCode("write single register", "address, value", "the request, echoed exactly"),
    16: FunctionCode(
        "write multiple registers",
        "address, quantity 1–123, byte count (2 × quantity), the values",
        "address, quantity",
    ),
    23: FunctionCode(
        "read/write multiple registers: the write is applied first, then the read answers; nothing is"
        " written unless both ranges are valid",
        "read address, read quantity 1–125, write address, write quantity 1–121, byte count"
        " (2 × write quantity), the values",
        "byte count, the registers read",
    ),
}
#: Modbus TCP: a connection that sends nothing for this long (real seconds) is closed.
TCP_IDLE_TIMEOUT_S = 60.0
#: Modbus TCP: a connection whose client leaves more than this many reply bytes unread is closed.
TCP_MAX_UNREAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    type: RegType
    access: Access
    block: str
    description: str
    unit: str = ""
    min: float | None = None
    max: float | None = None

    @property
    def words(self) -> int:
        return WORDS[self.type]


@dataclass(frozen=True)
class RegisterMap:
    name: str
    map_version: int
    unit_id: int
    #: Modbus function codes the pump answers; every other code gets exception 1.
    function_codes: tuple[int, ...]
    registers: tuple[Register, ...]

    def __getitem__(self, name: str) -> Register:
        for register in self.registers:
            if register.name == name:
                return register
        raise KeyError(name)

    def block(self, block: str) -> tuple[Register, ...]:
        return tuple(r for r in self.registers if r.block == block)


@cache
def load_register_map() -> RegisterMap:
    """The shipped register map."""
    text = resources.files("ketapump.data").joinpath("register_map.toml").read_text(encoding="utf-8")
    document = tomllib.loads(text)
    registers = tuple(Register(**entry) for entry in document["register"])
    codes = tuple(document["function_codes"])
    unknown = sorted(set(codes) - set(FUNCTION_CODES))
    if unknown or len(set(codes)) != len(codes):
        raise ValueError(f"register map function_codes {codes}: implemented are {sorted(FUNCTION_CODES)}")
    return RegisterMap(
        name=document["name"],
        map_version=document["map_version"],
        unit_id=document["unit_id"],
        function_codes=codes,
        registers=registers,
    )


def encode(register: Register, value: float) -> list[int]:
    """The register's words for ``value`` (big-endian word order); a value the type cannot hold raises
    ``ValueError`` naming the register (never a silent wrap-around)."""
    limits = {"u16": (0, 0xFFFF), "i32": (-(2**31), 2**31 - 1)}
    if register.type in limits:
        low, high = limits[register.type]
        if not (math.isfinite(value) and value == int(value) and low <= value <= high):
            raise ValueError(f"{register.name}: {value!r} does not fit a {register.type} register")
    elif not math.isfinite(value):
        raise ValueError(f"{register.name}: {value!r} is not a finite number")
    if register.type == "u16":
        return [int(value)]
    raw = struct.pack(">f", value) if register.type == "f32" else struct.pack(">i", int(value))
    return list(struct.unpack(">HH", raw))


def decode(register: Register, words: list[int]) -> float:
    """The value held in the register's words."""
    if register.type == "u16":
        return float(words[0])
    raw = struct.pack(">HH", words[0], words[1])
    return float(struct.unpack(">f" if register.type == "f32" else ">i", raw)[0])


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}"


def _wire_rules(regmap: RegisterMap) -> list[str]:
    """The function codes, exceptions, unit-id and framing rules the simulator implements."""
    lines = [
        "## Function codes",
        "",
        "| code | function | request | normal reply |",
        "|---|---|---|---|",
    ]
    for code in regmap.function_codes:
        fc = FUNCTION_CODES[code]
        lines.append(f"| {code} | {fc.name} | {fc.request} | {fc.reply} |")
    lines += [
        "",
        "Every other function code (coils, diagnostics, file records, anything at all) is answered with "
        "exception 1 and changes nothing.",
        "",
        "## Exceptions",
        "",
        "An exception reply is the function code + 0x80 and one of these codes. The checks run in this "
        "order (the Modbus application protocol's), and the first that fails answers:",
        "",
        "| order | exception | when |",
        "|---|---|---|",
        "| 1 | 1 illegal function | a function code not listed above |",
        "| 2 | 3 illegal data value | the request's structure: a length wrong for its function, a "
        "quantity outside 1–125 (read) or 1–123 (write; 1–121 in function 23), a byte count other than 2 × "
        "the write quantity |",
        "| 3 | 2 illegal data address | any word outside the map, a write to a `ro` register or to part "
        "of a two-register value |",
        "| 4 | 3 illegal data value | a written value outside [min, max], non-integral for an integer "
        "register, or a non-finite float |",
        "| 5 | 4 server device failure | starting the motor while an alarm is latched, changing the "
        "diameter or clearing the counters while running |",
        "| — | 11 (0x0B) gateway target device failed to respond | Modbus TCP only: a request for "
        "another unit id |",
        "",
        "- A write is all or nothing: whatever the exception, none of its registers is applied.",
        "- `wo` registers read as 0; a write to one is echoed like any other.",
        "",
        "## Unit ids and framing",
        "",
        f"- **Modbus RTU**: the pump answers unit {regmap.unit_id}. It is silent for a frame with a bad "
        "CRC and for any other unit id; a broadcast (unit 0) is executed without a reply. A frame ends at "
        "the length its function code implies, or, for other function codes, at a silence of 3.5 "
        "character times (at least 1.75 ms); a partial frame is discarded at that silence.",
        f"- **Modbus TCP**: the pump answers unit {regmap.unit_id}, 0 and 255 (the values the Modbus TCP "
        "implementation guide gives for a device reached by its IP address) and answers any other unit "
        "with exception 0x0B, never with silence. A reply carries its request's transaction id and unit "
        "id; requests on one connection are answered in order, and many connections are served at once.",
        "- **TCP connection rules**: an MBAP header that cannot be valid (protocol id other than 0, length "
        "outside 2–254) closes the connection, as does a client that sends nothing for "
        f"{TCP_IDLE_TIMEOUT_S:g} s (idle) or leaves more than {TCP_MAX_UNREAD_BYTES // 1024} KiB of "
        "replies unread.",
        "- Every frame the simulator rejects (bad CRC, other unit, impossible header, incomplete frame) is "
        "one rate-limited diagnostics event (endpoint, peer, reason, first bytes in hex), never an audit "
        "record; `ketapump sim --debug` also traces every frame.",
        "",
    ]
    return lines


def render_markdown(regmap: RegisterMap) -> str:
    """The map as the Markdown page ``docs/register-map.md``."""
    lines = [
        f"# Register map: {regmap.name}",
        "",
        "<!-- Rendered from python/ketapump/data/register_map.toml by `python -m ketapump.wire.regmap`; "
        "do not edit by hand. -->",
        "",
        f"Map version {regmap.map_version}. Modbus unit id {regmap.unit_id}. Holding registers, 0-based "
        "addresses. `i32` and `f32` take two registers, high word first (big-endian word order).",
        "",
        *_wire_rules(regmap),
        "## Behaviour",
        "",
        "- Pump-side watchdog: while the motor runs, a write to `heartbeat` is needed at least every "
        "`watchdog_ms` (default 500 ms); otherwise the pump stops the motor and latches the watchdog alarm.",
        "- The pump powers up with the reset alarm latched; write 1 to `alarm_ack` before starting.",
        "- Volume counters: `infused_ml` and `withdrawn_ml` follow the **plunger encoder**, not the motor. "
        "This pump has an encoder on the plunger, and what the plunger did (after lead-screw slack, a "
        "stall, a slipping nut) is what the bridge's kernel must measure. A New Era NE-1000 has no "
        "plunger sensor: the simulator's New Era emulation counts `DIS` and its `VOL` target from stepper "
        "motion (steps × mL per step for the programmed diameter), as the real pump does, so there the "
        "slack shows in the delivered volume and never in the counter.",
        "",
    ]
    blocks: list[str] = []
    for register in regmap.registers:
        if register.block not in blocks:
            blocks.append(register.block)
    for block in blocks:
        title = "fault injection (simulator only)" if block == "fault" else block
        lines += [
            f"## {title}",
            "",
            "| address | name | type | access | unit | min | max | description |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in regmap.block(block):
            span = f"{r.address}" if r.words == 1 else f"{r.address}–{r.address + r.words - 1}"
            lines.append(
                f"| {span} | `{r.name}` | {r.type} | {r.access} | {r.unit} | {_fmt(r.min)} | {_fmt(r.max)} "
                f"| {r.description} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(load_register_map()), end="")
