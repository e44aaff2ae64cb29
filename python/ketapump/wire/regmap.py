"""The register map of the ketapump reference pump, read from the shipped data file.

One source of truth: ``data/register_map.toml`` is compiled into the simulator (Rust) and read here by
the simulator's Modbus front and the bridge's driver. ``docs/register-map.md`` is rendered from it
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
    return RegisterMap(
        name=document["name"],
        map_version=document["map_version"],
        unit_id=document["unit_id"],
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


def render_markdown(regmap: RegisterMap) -> str:
    """The map as the Markdown page ``docs/register-map.md``."""
    lines = [
        f"# Register map: {regmap.name}",
        "",
        "<!-- Rendered from python/ketapump/data/register_map.toml by `python -m ketapump.wire.regmap`; "
        "do not edit by hand. -->",
        "",
        f"Map version {regmap.map_version}. Modbus unit id {regmap.unit_id}. Holding registers "
        "(functions 3, 4 for reading, 6 and 16 for writing), 0-based addresses. `i32` and `f32` take "
        "two registers, high word first (big-endian word order).",
        "",
        "- Writes to `ro` registers, to unmapped addresses, or to part of a two-register value are "
        "refused with exception 2 (illegal data address); nothing is written.",
        "- Writes outside [min, max], non-integral values for integer registers and non-finite floats are "
        "refused with exception 3 (illegal data value).",
        "- Starting the motor while an alarm is latched, changing the diameter or clearing the counters "
        "while running are refused with exception 4 (server device failure).",
        "- A write is all or nothing: whatever the exception, none of its registers is applied.",
        "- `wo` registers read as 0.",
        "- Pump-side watchdog: while the motor runs, a write to `heartbeat` is needed at least every "
        "`watchdog_ms` (default 500 ms); otherwise the pump stops the motor and latches the watchdog alarm.",
        "- The pump powers up with the reset alarm latched; write 1 to `alarm_ack` before starting.",
        "- Over Modbus RTU the pump is silent for frames with a bad CRC and for other unit ids; a broadcast "
        "(unit 0) is executed without a reply.",
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
