"""Register maps: the one the "ketapump reference pump" ships with (``data/register_map.toml``), and any
other map in the same schema that a real pump's vendor documents ("bring your own map",
``modbus-tcp://…?map=PATH``); the wire contract (function codes, exceptions, unit ids, framing rules).

One source of truth: ``data/register_map.toml`` is compiled into the simulator (Rust) and read here by
the bridge's driver. ``docs/register-map.md`` is rendered from it with the wire rules below
(``python -m ketapump.wire.regmap > docs/register-map.md``), and a test keeps the two in step.

One schema, two parsers: :func:`parse_register_map` here and ``hw-sim/src/regmap.rs`` accept and refuse
the same files, each problem named by the same dotted path (``tests/test_register_map_byo.py`` runs
both on the same files). A map decides the layout only — addresses, data types, scaling
(``value = raw × gain + offset``), word and byte order, which registers exist, which function codes the
pump answers; what a register means (its name and access) is the reference pump's.
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import struct
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property, partial
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from ketapump.validation import DocumentError

RegType = Literal["u16", "i16", "u32", "i32", "f32"]
Access = Literal["ro", "rw", "wo"]
Order = Literal["big", "little"]

WORDS: dict[str, int] = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
#: Each type's big-endian ``struct`` code (its raw value from the bytes of its words, high word first).
STRUCT_CODES: dict[str, str] = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f"}
#: The raw integers each integer type holds.
INT_RANGES: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
}
SCHEMA_VERSION = 1
#: Registers every map must have: without them the bridge cannot command, measure or stop a pump.
REQUIRED_REGISTERS = ("rate_ml_h", "run_mode", "alarm_ack", "alarm_bits", "infused_ml", "motor_running")
TOP_KEYS = ("schema_version", "name", "map_version", "unit_id", "word_order", "byte_order", "function_codes")
REGISTER_KEYS = (
    "name",
    "address",
    "type",
    "access",
    "block",
    "description",
    "unit",
    "min",
    "max",
    "gain",
    "offset",
)


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
    #: ``value = raw × gain + offset``.
    gain: float = 1.0
    offset: float = 0.0

    @property
    def words(self) -> int:
        return WORDS[self.type]

    @property
    def scaled(self) -> bool:
        return self.gain != 1.0 or self.offset != 0.0


@dataclass(frozen=True)
class RegisterMap:
    name: str
    map_version: int
    unit_id: int
    #: Modbus function codes the pump answers; every other code gets exception 1.
    function_codes: tuple[int, ...]
    registers: tuple[Register, ...]
    #: Word order of two-register values and byte order within a register (``big``: the Modbus way).
    word_order: Order = "big"
    byte_order: Order = "big"
    #: The file the map was read from (empty for the shipped map).
    source: str = ""

    @cached_property
    def _by_name(self) -> dict[str, Register]:
        """The registers by name (the first of a name, as a search in order finds it): a driver looks
        registers up by name at every control tick."""
        by_name: dict[str, Register] = {}
        for register in self.registers:
            by_name.setdefault(register.name, register)
        return by_name

    def __getitem__(self, name: str) -> Register:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def get(self, name: str) -> Register | None:
        return self._by_name.get(name)

    def block(self, block: str) -> tuple[Register, ...]:
        return tuple(r for r in self.registers if r.block == block)

    def encode(self, register: Register, value: float) -> list[int]:
        """``value``'s words in ``register`` as this map lays them out (see :func:`encode`)."""
        return encode(register, value, word_order=self.word_order, byte_order=self.byte_order)

    def decode(self, register: Register, words: list[int]) -> float:
        """The value in ``register``'s words as this map lays them out (see :func:`decode`)."""
        return decode(register, words, word_order=self.word_order, byte_order=self.byte_order)

    def block_decoder(
        self, registers: Sequence[Register], reads: Sequence[tuple[int, int]]
    ) -> Callable[[Sequence[int]], tuple[float, ...]]:
        """Decodes ``registers`` (their values, in their order) from the words that ``reads``
        (``(address, count)`` each) return, one read's words after the other: what a driver decodes at
        every control tick. The layout is worked out once into two precompiled ``struct`` formats (the
        words to bytes, the bytes to every register's raw value) and a scaling step, so a sample is a
        few C calls rather than one decode per register; the floats are :meth:`decode`'s to the bit
        (tested for every type, layout and scaling). ``ValueError`` if a register is not whole inside
        one read."""
        position: dict[int, int] = {}  # address → index in the words of all the reads
        total = 0
        for address, count in reads:
            for offset in range(count):
                position.setdefault(address + offset, total + offset)
            total += count
        fields = []
        for index, r in enumerate(registers):
            at = position.get(r.address)
            if at is None or any(position.get(r.address + i) != at + i for i in range(r.words)):
                raise ValueError(f"{r.name}: not whole inside one of the reads {list(reads)}")
            fields.append((at, index, r))
        fields.sort(key=lambda field: field[0])
        if any(a[0] + a[2].words > b[0] for a, b in itertools.pairwise(fields)):
            raise ValueError(f"registers overlap in the reads {list(reads)}")
        # Two-register values whose low word comes first are put high word first before packing.
        order = list(range(total))
        if self.word_order == "little":
            for at, _, r in fields:
                if r.words == 2:
                    order[at], order[at + 1] = at + 1, at
        # A little-endian register's bytes, packed little-endian, are the big-endian bytes of its value.
        pack = struct.Struct(f"{'<' if self.byte_order == 'little' else '>'}{total}H").pack
        layout, end = [">"], 0
        for at, _, r in fields:
            if at > end:
                layout.append(f"{2 * (at - end)}x")
            layout.append(STRUCT_CODES[r.type])
            end = at + r.words
        unpack = struct.Struct("".join(layout)).unpack
        # The raw values come in address order; ``registers`` order them.
        back = [0] * len(fields)
        for k, (_, index, _) in enumerate(fields):
            back[index] = k
        gains = tuple(registers[i].gain for _, i, _ in fields)
        offsets = tuple(registers[i].offset for _, i, _ in fields)
        permute = None if order == list(range(total)) else operator.itemgetter(*order)
        reorder = None if back == sorted(back) else operator.itemgetter(*back)
        add, mul = operator.add, operator.mul
        # raw × gain + offset for every register, as decode() computes it; × 1.0 changes no float (a NaN
        # from struct is already quiet), so unscaled maps skip it. The addition (of 0.0 if nothing else)
        # makes an integer's raw value the float decode() gives, and a −0.0 the +0.0 it gives.
        unit_gains = all(gain == 1.0 for gain in gains)

        def decode_block(words: Sequence[int]) -> tuple[float, ...]:
            if len(words) != total:
                raise ValueError(f"{len(words)} words where the reads give {total}")
            raw = unpack(pack(*(words if permute is None else permute(words))))
            values = tuple(map(add, raw, offsets) if unit_gains else map(add, map(mul, raw, gains), offsets))
            return values if reorder is None else reorder(values)

        return decode_block

    def encoder(self, register: Register) -> Callable[[float], list[int]]:
        """:meth:`encode` for ``register``, its layout worked out once: what a driver encodes at every
        control tick (the heartbeat, a rate). An unscaled 16-bit unsigned register given an int in range,
        and a big-endian unscaled float register given a finite value, are encoded directly (the same
        words, tested); anything else, errors included, goes through :func:`encode`."""
        generic = partial(self.encode, register)
        if register.scaled or self.word_order != "big" or self.byte_order != "big":
            return generic
        if register.type == "u16":

            def encode_u16(value: float) -> list[int]:
                return [value] if type(value) is int and 0 <= value <= 0xFFFF else generic(value)

            return encode_u16
        if register.type == "f32":
            pack_f32, unpack_words = struct.Struct(">f").pack, struct.Struct(">HH").unpack
            isfinite = math.isfinite

            def encode_f32(value: float) -> list[int]:
                if isfinite(value):
                    try:
                        return list(unpack_words(pack_f32(value)))
                    except OverflowError:
                        pass
                return generic(value)

            return encode_f32
        return generic

    def missing_features(self) -> list[str]:
        """What a pump with this map cannot do, one line each, for the operator to read up front."""
        lines = []
        if "line_pressure_mmhg" not in self:
            lines.append("no pressure: occlusion by stall only")
        if "heartbeat" not in self:
            lines.append("no heartbeat: the pump has no watchdog; a lost bridge leaves the motor running")
        elif "watchdog_ms" not in self:
            lines.append("no watchdog period: the pump keeps its own (the bridge cannot size it)")
        if "syringe_diameter_mm" not in self:
            lines.append("no syringe diameter: set the syringe on the pump itself")
        if "plunger_volume_ml" not in self:
            lines.append("no plunger volume: the kernel measures the infused counter")
        if "air_in_line" not in self:
            lines.append("no air sensor")
        if "syringe_present" not in self:
            lines.append("no syringe-present sensor")
        return lines


class RegisterMapError(DocumentError):
    """A register map that cannot be used: every problem, each as ``dotted.path: message``
    (:attr:`problems`; :attr:`pairs` as ``(path, message)``). Exit 65, or 66 for a file not found."""

    kind: ClassVar[str] = "register map"

    def __init__(self, source: str, pairs: list[tuple[str, str]], *, not_found: bool = False) -> None:
        super().__init__(source, [f"{path}: {message}" for path, message in pairs], not_found=not_found)
        self.pairs = pairs


class _Checker:
    """Collects problems while a map is read (the same checks, paths and messages as the Rust parser)."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def int(self, table: dict[str, Any], key: str, path: str, low: int, high: int) -> int | None:
        if key not in table:
            self.add(path, "is required")
            return None
        value = table[key]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        self.add(path, f"must be an integer {low}–{high}")
        return None

    def text(self, table: dict[str, Any], key: str, path: str, *, required: bool) -> str | None:
        if key not in table:
            if required:
                self.add(path, "is required")
            return None
        value = table[key]
        if isinstance(value, str) and not (required and not value.strip()):
            return value
        self.add(path, "must be a non-empty string" if required else "must be a string")
        return None

    def choice(self, table: dict[str, Any], key: str, path: str, valid: tuple[str, ...]) -> str | None:
        if key not in table:
            self.add(path, "is required")
            return None
        value = table[key]
        if isinstance(value, str) and value in valid:
            return value
        self.add(path, f"must be one of {', '.join(valid)}")
        return None

    def number(self, table: dict[str, Any], key: str, path: str) -> float | None:
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        self.add(path, "must be a finite number")
        return None

    def order(self, table: dict[str, Any], key: str) -> Order:
        if key not in table:
            return "big"
        value = self.choice(table, key, key, ("big", "little"))
        return "little" if value == "little" else "big"


def parse_register_map(
    text: str, *, source: str = "register map", catalogue: RegisterMap | None = None
) -> RegisterMap:
    """Parses and checks a map against ``catalogue`` (default: the shipped map, whose register names and
    access every map keeps). Raises :class:`RegisterMapError` listing every problem."""
    if catalogue is None:
        catalogue = load_register_map()
    return _parse(text, source, catalogue)


def _parse(text: str, source: str, catalogue: RegisterMap | None) -> RegisterMap:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegisterMapError(source, [("toml", str(e))]) from None
    c = _Checker()
    for key in table:
        if key not in (*TOP_KEYS, "register"):
            c.add(key, "is not a register-map key")
    if "schema_version" not in table:
        c.add("schema_version", "is required")
    elif not (table["schema_version"] == SCHEMA_VERSION and type(table["schema_version"]) is int):
        c.add("schema_version", f"must be {SCHEMA_VERSION}")
    name = c.text(table, "name", "name", required=True)
    map_version = c.int(table, "map_version", "map_version", 0, 65_535)
    unit_id = c.int(table, "unit_id", "unit_id", 1, 247)
    word_order = c.order(table, "word_order")
    byte_order = c.order(table, "byte_order")
    codes = _function_codes(c, table)
    registers = _registers(c, table, catalogue, codes)
    if c.problems:
        raise RegisterMapError(source, c.problems)
    return RegisterMap(
        name=name or "",
        map_version=map_version or 0,
        unit_id=unit_id or 0,
        function_codes=tuple(codes),
        registers=tuple(registers),
        word_order=word_order,
        byte_order=byte_order,
        source=source if catalogue is not None else "",
    )


def _function_codes(c: _Checker, table: dict[str, Any]) -> list[int]:
    codes: list[int] = []
    if "function_codes" not in table:
        c.add("function_codes", "is required")
        return codes
    items = table["function_codes"]
    if not isinstance(items, list):
        c.add("function_codes", "must be a list of function codes")
        return codes
    for i, item in enumerate(items):
        path = f"function_codes[{i}]"
        if isinstance(item, int) and not isinstance(item, bool) and item in FUNCTION_CODES:
            if item in codes:
                c.add(path, "is listed twice")
            else:
                codes.append(item)
        else:
            c.add(path, "is not an implemented function code (3, 4, 6, 16)")
    if not any(f in (3, 4) for f in codes):
        c.add("function_codes", "needs a read function (3 or 4)")
    if not any(f in (6, 16) for f in codes):
        c.add("function_codes", "needs a write function (6 or 16)")
    return codes


def _registers(
    c: _Checker, table: dict[str, Any], catalogue: RegisterMap | None, codes: list[int]
) -> list[Register]:
    if "register" not in table:
        c.add("register", "is required")
        return []
    items = table["register"]
    if not isinstance(items, list):
        c.add("register", "must be a list of tables ([[register]])")
        return []
    registers: list[Register] = []
    names: set[str] = set()
    words: dict[int, str] = {}
    for i, entry in enumerate(items):
        at = f"register[{i}]"
        if not isinstance(entry, dict):
            c.add(at, "must be a table")
            continue
        for key in entry:
            if key not in REGISTER_KEYS:
                c.add(f"{at}.{key}", "is not a register key")
        name = c.text(entry, "name", f"{at}.name", required=True)
        known = None
        if name is not None and catalogue is not None:
            known = catalogue.get(name)
            if known is None:
                c.add(f"{at}.name", f"{name} is not a register of the reference pump (docs/register-map.md)")
        if name is not None:
            if name in names:
                c.add(f"{at}.name", f"{name} is defined twice")
            names.add(name)
        address = c.int(entry, "address", f"{at}.address", 0, 65_535)
        kind = c.choice(entry, "type", f"{at}.type", tuple(WORDS))
        access = c.choice(entry, "access", f"{at}.access", ("ro", "rw", "wo"))
        if access is not None and known is not None and access != known.access:
            c.add(f"{at}.access", f"must be {known.access}, as the reference pump's {known.name}")
        block = c.text(entry, "block", f"{at}.block", required=False)
        description = c.text(entry, "description", f"{at}.description", required=False)
        unit = c.text(entry, "unit", f"{at}.unit", required=False)
        low = c.number(entry, "min", f"{at}.min")
        high = c.number(entry, "max", f"{at}.max")
        if low is not None and high is not None and high < low:
            c.add(f"{at}.max", "is below min")
        gain = c.number(entry, "gain", f"{at}.gain")
        if gain == 0.0:
            c.add(f"{at}.gain", "must be a finite number other than 0")
        offset = c.number(entry, "offset", f"{at}.offset")
        if (
            kind is not None
            and access is not None
            and WORDS[kind] == 2
            and access != "ro"
            and 16 not in codes
        ):
            c.add(
                f"{at}.type",
                "a two-register value can only be written with function 16, "
                "which function_codes does not list",
            )
        if address is not None and kind is not None and name is not None:
            last = address + WORDS[kind] - 1
            if last > 65_535:
                c.add(f"{at}.address", "does not fit below 65536")
            for w in range(address, min(last, 65_535) + 1):
                if w in words:
                    c.add(f"{at}.address", f"{name} overlaps {words[w]} at address {w}")
                    break
                words[w] = name
        if name is not None and address is not None and kind is not None and access is not None:
            registers.append(
                Register(
                    name=name,
                    address=address,
                    type=kind,  # type: ignore[arg-type]
                    access=access,  # type: ignore[arg-type]
                    block=block if block is not None else (known.block if known else ""),
                    description=description
                    if description is not None
                    else (known.description if known else ""),
                    unit=unit if unit is not None else (known.unit if known else ""),
                    min=low,
                    max=high,
                    gain=gain if gain else 1.0,
                    offset=offset or 0.0,
                )
            )
    if catalogue is not None:
        for required in REQUIRED_REGISTERS:
            if required not in names:
                c.add("register", f"needs {required} (the bridge cannot run a pump without it)")
    return registers


@cache
def load_register_map() -> RegisterMap:
    """The shipped register map."""
    text = resources.files("ketapump.data").joinpath("register_map.toml").read_text(encoding="utf-8")
    return _parse(text, "data/register_map.toml", None)


def read_register_map(path: str | os.PathLike[str]) -> RegisterMap:
    """A bring-your-own map from ``path``; :class:`RegisterMapError` lists every problem (or says the
    file cannot be read)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        not_found = isinstance(e, FileNotFoundError)
        raise RegisterMapError(
            str(path), [("(file)", f"cannot be read: {e.strerror}")], not_found=not_found
        ) from e
    except UnicodeDecodeError as e:
        raise RegisterMapError(str(path), [("(file)", f"is not UTF-8 text: {e.reason}")]) from e
    return parse_register_map(text, source=str(path))


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def encode(
    register: Register, value: float, *, word_order: Order = "big", byte_order: Order = "big"
) -> list[int]:
    """The register's words for ``value`` (scaled: ``raw = (value − offset) / gain``, integers rounded);
    a value the type cannot hold raises ``ValueError`` naming the register (never a silent wrap-around)."""
    if not math.isfinite(value):
        raise ValueError(f"{register.name}: {value!r} is not a finite number")
    raw = (value - register.offset) / register.gain
    if register.type in INT_RANGES:
        low, high = INT_RANGES[register.type]
        if not register.scaled and raw != int(raw):
            raise ValueError(f"{register.name}: {value!r} does not fit a {register.type} register")
        n = round(raw)
        if not low <= n <= high:
            raise ValueError(f"{register.name}: {value!r} does not fit a {register.type} register")
        bits = n & 0xFFFFFFFF
    else:
        try:
            bits = struct.unpack(">I", struct.pack(">f", raw))[0]
        except OverflowError:
            raise ValueError(f"{register.name}: {value!r} does not fit a f32 register") from None
    if register.words == 1:
        words = [bits & 0xFFFF]
    else:
        words = [bits >> 16, bits & 0xFFFF]
        if word_order == "little":
            words.reverse()
    return [_swap(w) for w in words] if byte_order == "little" else words


def decode(
    register: Register, words: list[int], *, word_order: Order = "big", byte_order: Order = "big"
) -> float:
    """The value held in the register's words (scaled: ``raw × gain + offset``)."""
    words = [_swap(w) for w in words[: register.words]] if byte_order == "little" else words[: register.words]
    if register.words == 1:
        bits = words[0]
    else:
        high, low = (words[1], words[0]) if word_order == "little" else (words[0], words[1])
        bits = (high << 16) | low
    raw: float
    if register.type in ("u16", "u32"):
        raw = float(bits)
    elif register.type == "i16":
        raw = float(bits - 0x10000 if bits & 0x8000 else bits)
    elif register.type == "i32":
        raw = float(bits - 0x100000000 if bits & 0x80000000 else bits)
    else:
        raw = float(struct.unpack(">f", struct.pack(">I", bits))[0])
    return raw * register.gain + register.offset


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
    lines += _bring_your_own()
    return "\n".join(lines)


def _bring_your_own() -> list[str]:
    """How another pump's map is described, checked and used."""
    return [
        "## Bring your own map",
        "",
        "A pump that speaks Modbus with its own register layout is described by a TOML file in this "
        "page's schema (the shipped file, `python/ketapump/data/register_map.toml`, is one) and named in "
        "the pump URL: `modbus-tcp://HOST:PORT?map=PATH`, `modbus-rtu://DEVICE?map=PATH`. The simulator "
        "serves one with `ketapump sim --register-map PATH`. An example that differs from this map in "
        "every dimension: `examples/register-maps/acme-sp200.toml`.",
        "",
        "| key | meaning |",
        "|---|---|",
        "| `schema_version` | 1 |",
        "| `name`, `map_version` | the pump's name; the map's version (0–65535, served in `map_version`) |",
        "| `unit_id` | the pump's Modbus unit (1–247): the URL's default `unit` |",
        "| `word_order` | `big` (high word first, the default) or `little`: two-register values |",
        "| `byte_order` | `big` (the Modbus way, the default) or `little`: the two bytes of every register |",
        "| `function_codes` | which of 3, 4, 6, 16 the pump answers: at least one read (3 or 4) and one "
        "write (6 or 16); reads use 3 if listed, else 4; a single register is written with 6 if listed, "
        "else with 16 and a quantity of 1 |",
        "| `[[register]]` `name` | one of this page's register names, with its `access` |",
        "| `address`, `type` | 0–65535; `u16`, `i16` (one register), `u32`, `i32`, `f32` (two) |",
        "| `gain`, `offset` | scaling: `value = raw × gain + offset` (default 1 and 0); integers are "
        "rounded when written |",
        "| `min`, `max` | the range of values (after scaling) the pump accepts: outside it, exception 3 |",
        "| `block`, `unit`, `description` | documentation (default: this page's) |",
        "",
        "Which registers exist is the pump's: every map needs `"
        + "`, `".join(REQUIRED_REGISTERS)
        + "`; any other may be left out, and the pump then lacks that feature, reported before a run "
        "(`ketapump run` prints it; `PumpInfo.missing_features` in the Python API): no "
        '`line_pressure_mmhg` → "no pressure: occlusion by stall only" (the kernel runs without '
        "pressure checks); no `heartbeat` → the pump has no watchdog; no `syringe_diameter_mm` → the "
        "syringe is set on the pump itself. A withdrawal (the kernel's occlusion back-off) is one write "
        "when `run_mode` follows `rate_ml_h` and function 16 is listed; otherwise the pump is only "
        "stopped.",
        "",
        "A map is checked whole before anything connects, by the bridge (Python) and by the simulator "
        "(Rust) with the same rules: unknown keys, missing or malformed values, names that are not this "
        "page's, another access, overlapping registers, a writable two-register value without function "
        "16, a zero gain, `max` below `min`, a missing required register. Every problem is listed with its "
        "dotted path (`register[3].type: must be one of u16, i16, u32, i32, f32`); `ketapump run` exits 65 "
        "and `ketapump sim` 65 (66 for a file not found).",
        "",
    ]


if __name__ == "__main__":
    print(render_markdown(load_register_map()), end="")
