"""The register map as data: docs rendered from it, and arbitrary writes handled as documented."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ketapump import _core
from ketapump.wire.regmap import load_register_map, render_markdown

REGMAP = load_register_map()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "register-map.md"


def test_docs_are_rendered_from_the_data_file() -> None:
    assert DOCS.read_text(encoding="utf-8") == render_markdown(REGMAP), (
        "docs/register-map.md is stale: python -m ketapump.wire.regmap > docs/register-map.md"
    )


def test_the_simulator_compiles_in_the_same_map() -> None:
    shipped = Path(__file__).resolve().parent.parent / "python" / "ketapump" / "data" / "register_map.toml"
    assert _core.SimPump.register_map_toml() == shipped.read_text(encoding="utf-8")


def test_every_mapped_register_reads() -> None:
    pump = _core.SimPump()
    for r in REGMAP.registers:
        code, words = pump.read_registers(r.address, r.words)
        assert code == 0 and len(words) == r.words, r.name


@settings(max_examples=400, deadline=None)
@given(
    writes=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=130),
            st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=6),
        ),
        max_size=30,
    ),
    times=st.lists(st.floats(min_value=0, max_value=5.0), max_size=30),
)
def test_arbitrary_writes_get_a_documented_answer_and_never_crash(
    writes: list[tuple[int, list[int]]], times: list[float]
) -> None:
    pump = _core.SimPump(seed=5)
    t = 0.0
    for i, (address, values) in enumerate(writes):
        code = pump.write_registers(address, values)
        assert code in {0, 2, 3, 4}
        if i < len(times):
            t += times[i]
            pump.advance_to(t)
        for r in REGMAP.registers:
            read_code, words = pump.read_registers(r.address, r.words)
            assert read_code == 0 and len(words) == r.words


def test_a_refused_write_changes_nothing() -> None:
    pump = _core.SimPump()
    before = {r.name: pump.value(r.name) for r in REGMAP.registers}
    rate = REGMAP["rate_ml_h"]
    assert pump.write_registers(rate.address, [0x4252, 0x0000, 9]) == 3  # a valid rate, then run_mode = 9
    assert pump.write_registers(REGMAP["vendor_id"].address, [1]) == 2
    assert {r.name: pump.value(r.name) for r in REGMAP.registers} == before
