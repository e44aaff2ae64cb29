"""Running a clinic: the HTTP server (uvicorn, on the caller's event loop, beside the sessions), its
binding rules and its shutdown.

- It binds 127.0.0.1 unless told otherwise; any address beyond loopback needs a token
  (:func:`check_bind`) and is refused without one.
- The socket is bound before anything else starts, so a port already in use is a clear error and the
  address actually bound (``--port 0``: an ephemeral one) is known for the ``ready`` line.
- SIGINT or SIGTERM stop it gracefully: event streams are closed, then every running session is ended
  (its pump told to stop, its records closed: :meth:`Clinic.close`). If the process is killed instead,
  each pump stops by its own watchdog, and the next ``serve`` lists the sessions left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ketapump.console.app import create_app, is_loopback
from ketapump.console.clinic import Clinic, ConsoleError, StartRequest
from ketapump.errors import ConfigurationError

#: Seconds the server waits for open connections before closing them at shutdown.
GRACEFUL_S = 3.0


def check_bind(host: str, token: str | None) -> None:
    """Refuses a bind beyond loopback without a token (:class:`ConfigurationError` naming ``--token``)."""
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            "--token",
            f"is required to bind {host} (beyond loopback): every API request must then carry it",
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (``OSError`` if the address cannot be bound)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def serve(
    clinic: Clinic,
    sock: socket.socket,
    *,
    token: str | None,
    starts: Sequence[tuple[str, StartRequest]] = (),
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serves ``clinic`` on ``sock`` until SIGINT/SIGTERM (see the module docstring). Once listening it
    starts ``starts`` (the demo's sessions) and calls ``on_ready`` with the URL, the chairs and the
    sessions an earlier run left unfinished."""
    import uvicorn  # noqa: PLC0415 (the console extra)

    clinic_ref = clinic

    class Server(uvicorn.Server):
        """uvicorn, with SIGINT/SIGTERM as a plain graceful stop (no signal re-raised afterwards) that
        first closes the event streams, which would otherwise hold the shutdown open."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM)
            for sig in signals:
                loop.add_signal_handler(sig, self.stop)
            try:
                yield
            finally:
                for sig in signals:
                    loop.remove_signal_handler(sig)

        def stop(self) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            for chair in clinic_ref.chairs.values():
                for stream in list(chair.streams):
                    clinic_ref.unsubscribe(stream)

    config = uvicorn.Config(
        create_app(clinic, token=token),
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(GRACEFUL_S),
        server_header=False,
    )
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task  # it could not start: its error, or its exit
            return
        await asyncio.sleep(0.01)
    failed = []
    for chair_id, request in starts:
        try:
            clinic.start(chair_id, request, "script")
        except ConsoleError as e:
            failed.append({"chair": chair_id, **e.as_dict()})
    if on_ready is not None:
        on_ready(
            {
                "url": url_of(sock),
                "chairs": list(clinic.chairs),
                "token_required": token is not None,
                "interrupted": len(clinic.interrupted()),
                "failed_to_start": failed,
            }
        )
    await task


__all__ = ["GRACEFUL_S", "bind", "check_bind", "serve", "url_of"]
