"""The session's four plots drawn by a helper process that gets ready while the session runs.

Why: importing matplotlib and rendering the four PNGs take 1.5–2 s of CPU, as long as a whole demo
session in virtual time. A helper started beside the session imports matplotlib and the report module
(and loads its fonts) on the other core while the session runs; at the end it receives the series,
forks once, and the two processes render two plots each on two cores. The files are the ones
:func:`~ketapump.clinical.report.write_plots` writes, byte for byte: the helper runs that function.

The helper is an accelerator, never a second implementation or a second source of errors: when it
cannot be started, dies, takes longer than :data:`HELPER_TIMEOUT_S` once it has the series, or
reports any failure, the plots are drawn again in this process, so a plot that cannot be drawn (an
unwritable directory, an empty series) raises here the error it always raised.

The helper's protocol (:data:`HELPER_CODE`, run with ``python -c``): one pickled job on stdin —
``(out_dir, points, events, drawing)`` — and one pickled answer on stdout, ``("ok", paths)`` or
``("failed", text)``. Both ends are this package; nothing else is ever read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from ketapump.clinical import report

_log = logging.getLogger("ketapump.plots")

#: The two halves of the rendering, about equal in work (the vitals figure has three panels).
HALVES: tuple[tuple[str, ...], tuple[str, ...]] = (("vitals", "pressure"), ("dose", "rate"))
#: How long the helper may take once it has the series: a loaded machine renders in 1–4 s, so past
#: this it is stuck, and drawing here (as long again at most) ends the session sooner than waiting on.
HELPER_TIMEOUT_S = 30.0
#: The helper's program: this module and the report (``ketapump.clinical``'s door is lazy, so the
#: session engine, which drawing does not use and which runs beside the helper, is not loaded).
HELPER_CODE = """\
from ketapump.clinical.plotworker import main
main()
"""


class PlotHelper:
    """A helper process for one session's plots: :meth:`start` it early, :meth:`write_plots` at the
    end, :meth:`close` always (it kills a helper still running). ``timeout_s``: how long
    :meth:`write_plots` waits for the helper's answer before drawing here."""

    def __init__(self, timeout_s: float = HELPER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def start(self) -> None:
        """Starts the helper (once); a helper that cannot be started leaves the plots to this process."""
        if self._process is not None:
            return
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (held open until close())
        # One BLAS thread: the helper forks, and renders nothing a thread pool would speed up.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        try:
            # Its own process group: :meth:`close` ends the helper and the child it forks together.
            self._process = subprocess.Popen(
                [sys.executable, "-c", HELPER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            _log.warning("the plot helper did not start (%s); the plots are drawn in this process", e)

    def write_plots(
        self,
        points: Sequence[report.SeriesPoint],
        events: Sequence[report.SeriesEvent],
        out_dir: Path,
        **drawing: Any,
    ) -> list[Path]:
        """:func:`report.write_plots`' files and result, rendered by the helper (started now if it was
        not); drawn here instead when the helper fails in any way (see the module docstring)."""
        self.start()
        answer = self._ask(pickle.dumps((out_dir, list(points), list(events), drawing)))
        if answer is not None:
            status, value = answer
            if status == "ok":
                return [Path(p) for p in value]
            _log.warning("the plot helper failed; the plots are drawn in this process:\n%s", value)
        return report.write_plots(points, events, out_dir, **drawing)

    def _ask(self, job: bytes) -> tuple[str, Any] | None:
        process = self._process
        if process is None:
            return None
        try:
            out, _ = process.communicate(job, timeout=self.timeout_s)
            answer = pickle.loads(out) if process.returncode == 0 and out else None
        except (OSError, ValueError, EOFError, pickle.UnpicklingError, subprocess.TimeoutExpired) as e:
            _log.warning("the plot helper did not answer (%s)", e)
            answer = None
        if answer is None:
            _log.warning("the plot helper ended with %s: %s", process.returncode, self._helper_stderr())
        self.close()
        return answer if isinstance(answer, tuple) and len(answer) == 2 else None

    def _helper_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2_000:]

    def close(self) -> None:
        """Ends the helper (killed if it still runs) and releases its files."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the helper's group: it and its forked child
            process.wait()
        if process is not None:
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# ----- the helper's side ---------------------------------------------------------------------------


def _warm_up() -> None:
    """Imports matplotlib's drawing machinery and renders a little text, so the fonts are loaded
    before the series arrives."""
    import io  # noqa: PLC0415 (the helper's imports: none of them is the package's)

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(2, 1), dpi=report.DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0.0, 1.0], [0.0, 1.0], label="warm-up")
    ax.set_title("warm-up", fontsize="small")
    ax.legend(fontsize="x-small")
    fig.savefig(io.BytesIO(), format="png")


def _render(names: Sequence[str], job: tuple[Path, list[Any], list[Any], dict[str, Any]]) -> list[Path]:
    out_dir, points, events, drawing = job
    return report.write_plots(points, events, out_dir, only=names, **drawing)


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The helper: warm up, read the job, render one half here and the other in a forked child."""
    _warm_up()
    job = pickle.load(stdin)
    try:
        child = os.fork()
    except (AttributeError, OSError):  # no fork: both halves here
        answer: tuple[str, Any] = ("ok", [str(p) for p in _render([*HALVES[0], *HALVES[1]], job)])
        pickle.dump(answer, stdout)
        return
    if child == 0:
        status = 0
        try:
            _render(HALVES[1], job)
        except BaseException:  # reported by the exit status; the parent draws it again
            status = 1
        os._exit(status)  # nothing of the parent's (its stdout buffer) is flushed twice
    try:
        _render(HALVES[0], job)
    finally:
        _, status = os.waitpid(child, 0)
    if status != 0:
        raise RuntimeError(f"the helper's child rendering {', '.join(HALVES[1])} failed (status {status})")
    pickle.dump(("ok", [str(job[0] / file) for file in report.PLOT_FILES.values()]), stdout)


def main() -> NoReturn:
    """The helper's program: serves one job, answers and exits."""
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except BaseException:  # the parent draws the plots again, and reports a real error
        import traceback  # noqa: PLC0415

        pickle.dump(("failed", traceback.format_exc()), sys.stdout.buffer)
    sys.stdout.buffer.flush()
    sys.stderr.flush()
    # The answer is out and the PNGs are closed files. The interpreter's teardown (matplotlib's
    # modules, 0.15-0.25 s) would only hold up the session's end, which reads until the pipe closes.
    os._exit(0)
