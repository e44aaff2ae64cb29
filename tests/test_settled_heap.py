"""``settled_heap``: while a real-time loop runs, the objects the process started with are left out of
the garbage collector's walks (a full walk of them stops the loop for ~20 ms; ``docs/benchmarks.md``),
what the loop makes is still collected, and nothing stays frozen after the loop ends. Every command
that runs a loop for a pump or a clinic runs it inside the block."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import ketapump.cli.clinical
import ketapump.cli.console
import ketapump.cli.run
import ketapump.cli.sim
import ketapump.qa.accuracy
import ketapump.qa.occlusion
from ketapump.cli import app
from ketapump.clock import settled_heap


class Node:
    """A gc-tracked object that can sit in a reference cycle."""

    other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


def walked(obj: object) -> bool:
    """Whether the collector walks ``obj`` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


def test_what_existed_before_the_block_is_not_walked_and_what_the_block_makes_is() -> None:
    before = cycle()
    assert walked(before)
    with settled_heap():
        assert gc.get_freeze_count() > 0
        assert not walked(before)
        made = cycle()
        assert walked(made)
        # Garbage the block makes is still collected inside it.
        made_alive = weakref.ref(made)
        del made
        gc.collect()
        assert made_alive() is None
    assert gc.get_freeze_count() == 0
    assert walked(before)


def test_a_cycle_that_dies_inside_the_block_is_collected_after_it() -> None:
    holder = [cycle()]
    alive = weakref.ref(holder[0])
    with settled_heap():
        holder.clear()
        gc.collect()
        assert alive() is not None  # frozen: no collection inside the block frees it
    gc.collect()
    assert alive() is None  # handed back: nothing leaks


def test_garbage_left_before_the_block_is_collected_as_it_starts() -> None:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        alive = weakref.ref(cycle())  # garbage at once, not collected yet
        assert alive() is not None
        with settled_heap():
            assert alive() is None  # the block's own collection took it rather than freezing it
    finally:
        if was_enabled:
            gc.enable()


def test_nested_blocks_keep_the_heap_frozen_until_the_outermost_ends() -> None:
    with settled_heap():
        frozen = gc.get_freeze_count()
        with settled_heap():
            assert gc.get_freeze_count() == frozen  # not collected and frozen again
        assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == 0


def test_blocks_overlapping_on_two_threads_unfreeze_when_the_last_ends() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with settled_heap():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert entered.wait(10)
        with settled_heap():
            pass
        assert gc.get_freeze_count() > 0  # the other thread's block is still open
    finally:
        release.set()  # whatever failed, the heap is not left frozen for the next test
        thread.join(10)
    assert gc.get_freeze_count() == 0


def test_a_process_that_froze_objects_of_its_own_keeps_them_frozen() -> None:
    own = cycle()
    gc.collect()
    gc.freeze()  # as a process does before forking workers
    try:
        later = cycle()
        with settled_heap():
            pass
        assert not walked(own)  # not thawed by the block
        assert not walked(later)  # what the block froze stays frozen with them
    finally:
        gc.unfreeze()
    assert walked(own)


class LoopReachedError(Exception):
    """Raised by a command's stand-in loop once it has seen how frozen the heap is."""


def probe(seen: list[int]) -> Callable[..., Any]:
    async def loop(*_args: object, **_kwargs: object) -> None:
        seen.append(gc.get_freeze_count())
        raise LoopReachedError

    return loop


@pytest.mark.parametrize(
    ("module", "loop", "args"),
    [
        (ketapump.cli.run, "_run", ["run", "--rate-ml-h", "5", "--volume-ml", "1"]),
        (ketapump.cli.clinical, "_run_live", ["demo"]),
        (ketapump.cli.console, "serve", ["serve", "--demo", "--port", "0"]),
        (ketapump.cli.sim, "_serve", ["sim"]),
        (ketapump.qa.accuracy, "run_accuracy", ["qa", "accuracy", "--rate-ml-h", "5"]),
        (ketapump.qa.occlusion, "run_simulated", ["qa", "occlusion", "--rate-ml-h", "5"]),
    ],
    ids=["run", "demo", "serve", "sim", "qa-accuracy", "qa-occlusion"],
)
def test_every_command_runs_its_loop_on_a_settled_heap(
    module: Any, loop: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    monkeypatch.setattr(module, loop, probe(seen))
    monkeypatch.chdir(tmp_path)
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data")}
    result = CliRunner().invoke(app, args, env=env)
    assert isinstance(result.exception, LoopReachedError), result.output
    assert seen and seen[0] > 0
    assert gc.get_freeze_count() == 0
