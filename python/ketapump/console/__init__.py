"""The operator console: several chairs' sessions, live, in a browser and a terminal, with an HTTP API.

A face of the session engine, like the CLI: a ``serve`` hosts N chairs (:class:`Clinic`, from a clinic
file or the demo's three simulated chairs), each running its sessions through the clinical layer's runner
(the same validation, limits, kernel, audit log and course history as ``ketapump session``); the HTTP
API (:func:`create_app`, FastAPI on uvicorn) turns requests into engine commands and the engine's events
into a Server-Sent-Event stream; the web console (``static/``, shipped in the wheel, no CDN) and the
terminal (:func:`render_card`, ``ketapump console``) draw the same chair card (:class:`ChairView`). It
holds no clinical logic. It imports the clinical, bridge and wire layers through their doors and the
floor; only the CLI imports it. The web stack (fastapi, uvicorn, httpx: the ``console`` extra) is
imported only where it is used, so the terminal card works without it.
"""

from ketapump.console.actions import ACTIONS, ActionParam, ActionSpec, available_actions, engine_commands
from ketapump.console.app import create_app, is_loopback
from ketapump.console.card import LiveCard, render_board, render_card
from ketapump.console.clinic import (
    ActionRequest,
    AnswerRequest,
    Chair,
    Clinic,
    ConsoleError,
    ConsoleOperator,
    PatientIn,
    StartRequest,
)
from ketapump.console.config import (
    SHARED_LOOP_JITTER_S,
    ChairConfig,
    ClinicConfig,
    ClinicConfigError,
    ClinicSettings,
    load_clinic,
)
from ketapump.console.demo import DEMO_CHAIRS, DEMO_TIME_SCALE, demo_clinic
from ketapump.console.server import bind, check_bind, serve, url_of
from ketapump.console.stream import Subscription, sse
from ketapump.console.terminal import AttachError, attach, attach_until_stopped, sse_events
from ketapump.console.view import ChairView, SessionInfo

#: The packages the web console needs (the ``console`` extra), checked before ``serve`` or ``console``.
WEB_PACKAGES = ("fastapi", "uvicorn", "httpx")

__all__ = [
    "ACTIONS",
    "DEMO_CHAIRS",
    "DEMO_TIME_SCALE",
    "SHARED_LOOP_JITTER_S",
    "WEB_PACKAGES",
    "ActionParam",
    "ActionRequest",
    "ActionSpec",
    "AnswerRequest",
    "AttachError",
    "Chair",
    "ChairConfig",
    "ChairView",
    "Clinic",
    "ClinicConfig",
    "ClinicConfigError",
    "ClinicSettings",
    "ConsoleError",
    "ConsoleOperator",
    "LiveCard",
    "PatientIn",
    "SessionInfo",
    "StartRequest",
    "Subscription",
    "attach",
    "attach_until_stopped",
    "available_actions",
    "bind",
    "check_bind",
    "create_app",
    "demo_clinic",
    "engine_commands",
    "is_loopback",
    "load_clinic",
    "render_board",
    "render_card",
    "serve",
    "sse",
    "sse_events",
    "url_of",
]
