"""What every command shares: how it fails (one line on stderr, a documented exit code) and the exit
codes of its outcomes. The README's exit-code tables are the contract; every code here is in them. Data
and environment failures use the sysexits codes (``os.EX_DATAERR`` 65, ``os.EX_NOINPUT`` 66, …)."""

from __future__ import annotations

from typing import Final

import typer

#: Outcomes of the commands that run a pump (``run``, ``session``, ``demo``).
EXIT_COMPLETE: Final = 0
EXIT_INTERLOCK: Final = 3  # stopped by a kernel interlock or a pump-side alarm; a session that ended early
EXIT_OPERATOR_STOP: Final = 4  # ``run`` stopped by the operator (SIGINT/SIGTERM)
EXIT_LINK_LOST: Final = 5  # the link to the pump was lost mid-run (the pump was told to stop)
EXIT_LIMIT: Final = 6  # refused by a hard limit, or a soft limit / course rule not confirmed with a reason
EXIT_ABORTED: Final = 7  # aborted in the pre-check (an item not confirmed, no baseline): nothing delivered


def fail(message: str, code: int) -> typer.Exit:
    """Prints ``ketapump: message`` on stderr and returns the exit to raise (``raise fail(...)``)."""
    typer.echo(f"ketapump: {message}", err=True)
    return typer.Exit(code)
