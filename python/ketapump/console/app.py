"""The HTTP face of a clinic: the JSON API (OpenAPI at ``/api/openapi.json``), the event stream and the web
console's pages, one FastAPI application per ``serve``.

Security, in the order a request meets it (:class:`_Guard`, a plain ASGI middleware, so the event stream
is never buffered):

- with a token (required for any bind beyond loopback), every ``/api`` request needs
  ``Authorization: Bearer TOKEN``, compared in constant time; the pages and their scripts carry no data
  and load without it (the page asks for the token and sends it with every call);
- without one (loopback only), the ``Host`` must be a loopback name, so a web page elsewhere cannot reach
  the console through a rebound DNS name;
- a state-changing request must be JSON (``application/json``: a cross-site form cannot send it without
  a CORS preflight, which is refused) and, if the browser names its ``Origin``, come from this console's
  own; no CORS header is ever sent.

Every refusal is JSON: ``{"code": stable_code, "message": text, ...details}``. The codes are listed in
``docs/console.md``.
"""

import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ketapump.clinical import PK_MODELS, protocol
from ketapump.console.actions import available_actions
from ketapump.console.clinic import (
    ActionRequest,
    AnswerRequest,
    Clinic,
    ConsoleError,
    StartRequest,
)
from ketapump.console.stream import jsonable

if TYPE_CHECKING:
    from fastapi import FastAPI

_log = logging.getLogger("ketapump.console")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The web console's pages, script and style (shipped in the wheel; nothing is loaded from elsewhere).
STATIC = Path(__file__).resolve().parent / "static"
WEB_CLIENT_HEADER = "x-ketapump-client"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _version() -> str:
    try:
        return metadata.version("ketapump")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _body(status: int, payload: Any) -> tuple[int, bytes]:
    return status, json.dumps(jsonable(payload), separators=(",", ":")).encode()


class _Guard:
    """The console's access rules (see the module docstring), in front of the application."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message = refusal
        _, body = _body(status, {"code": code, "message": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="ketapump"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "")
        if self.token is None and not is_loopback(_hostname(host)):
            return 403, "forbidden_host", f"this console answers only to loopback names, not {host!r}"
        if method == "OPTIONS":
            return 403, "cors_closed", "cross-origin requests are not allowed"
        if path.startswith("/api") and self.token is not None:
            given = headers.get("authorization", "")
            scheme, _, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), self.token):
                return 401, "unauthorized", "a valid bearer token is required (Authorization: Bearer TOKEN)"
        if method not in {"GET", "HEAD"}:
            origin = headers.get("origin")
            if origin is not None and origin.split("://", 1)[-1] != host:
                return 403, "forbidden_origin", f"requests from {origin} are not allowed"
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return 415, "unsupported_media_type", "send the request body as application/json"
        return None


def _hostname(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:80`` → ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def create_app(clinic: Clinic, *, token: str | None = None) -> "FastAPI":
    """The application serving ``clinic`` (see the module docstring)."""
    from fastapi import FastAPI, Request  # noqa: PLC0415 (the console extra)
    from fastapi.exceptions import RequestValidationError  # noqa: PLC0415
    from fastapi.responses import FileResponse, Response, StreamingResponse  # noqa: PLC0415
    from starlette.exceptions import HTTPException  # noqa: PLC0415
    from starlette.staticfiles import StaticFiles  # noqa: PLC0415

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await clinic.close()

    app = FastAPI(
        title="ketapump console",
        version=_version(),
        summary="Several chairs' ketamine sessions, live: state, actions, events (not a medical device).",
        docs_url=None,  # the interactive docs load scripts from a CDN: the clinic runs offline
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )

    def reply(payload: Any, status: int = 200) -> Response:
        code, body = _body(status, payload)
        return Response(body, status_code=code, media_type="application/json")

    def source_of(request: Request) -> Any:
        return "web" if request.headers.get(WEB_CLIENT_HEADER) == "web" else "api"

    @app.exception_handler(ConsoleError)
    async def console_error(_request: Request, error: ConsoleError) -> Response:
        return reply(error.as_dict(), error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or '(body)'}: {e['msg']}"
            for e in error.errors()
        ]
        return reply({"code": "invalid_request", "message": "; ".join(problems), "problems": problems}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return reply(
            {"code": codes.get(error.status_code, "http_error"), "message": str(error.detail)},
            error.status_code,
        )

    @app.exception_handler(Exception)
    async def internal(_request: Request, error: Exception) -> Response:
        _log.exception("console request failed")
        return reply({"code": "internal_error", "message": f"internal error: {error!r}"}, 500)

    # ----- reading ----------------------------------------------------------------------------------

    @app.get("/api/clinic", summary="The clinic: its name, chairs, actions, models and version")
    async def clinic_info() -> Response:
        return reply(
            {
                "name": clinic.name,
                "version": _version(),
                "chairs": [c.id for c in clinic.chairs.values()],
                "actions": [a.as_dict() for a in available_actions().values()],
                "pk_models": {name: m.citation for name, m in PK_MODELS.items()},
                "protocols": protocol.shipped_protocols(),
                "token_required": token is not None,
            }
        )

    @app.get("/api/actions", summary="The operator actions a chair offers (the buttons of its card)")
    async def actions() -> Response:
        return reply([a.as_dict() for a in available_actions().values()])

    @app.get("/api/chairs", summary="Every chair's card")
    async def chairs() -> Response:
        return reply([c.snapshot() for c in clinic.chairs.values()])

    @app.get("/api/chairs/{chair_id}", summary="One chair's card")
    async def chair(chair_id: str) -> Response:
        return reply(clinic.chair(chair_id).snapshot())

    @app.get(
        "/api/chairs/{chair_id}/series", summary="The session's series (a point every 5 s of session time)"
    )
    async def series(chair_id: str) -> Response:
        return reply({"chair": chair_id, "points": clinic.chair(chair_id).view.points})

    @app.get("/api/chairs/{chair_id}/log", summary="The session's recent events")
    async def log(chair_id: str) -> Response:
        return reply({"chair": chair_id, "events": list(clinic.chair(chair_id).view.log)})

    @app.get("/api/chairs/{chair_id}/record", summary="The session's audit-log entries and outcome")
    async def record(chair_id: str, limit: int = 500, exclude: str = "") -> Response:
        skipped = frozenset(name for name in exclude.split(",") if name)
        return reply(clinic.chair(chair_id).record(max(1, min(limit, 10_000)), skipped))

    @app.get(
        "/api/interrupted", summary="Sessions begun and never ended that no chair runs, with their recovery"
    )
    async def interrupted() -> Response:
        return reply(clinic.interrupted())

    @app.get(
        "/api/patients/{patient_id}/course", summary="A patient's course: sessions, doses, alarms, notes"
    )
    async def course(patient_id: str) -> Response:
        return reply(clinic.course(patient_id))

    @app.get("/api/events", summary="Server-Sent Events of every chair (or of ?chairs=a,b)")
    async def events(chairs: str | None = None) -> StreamingResponse:
        ids = [c for c in chairs.split(",") if c] if chairs else list(clinic.chairs)
        for chair_id in ids:
            clinic.chair(chair_id)  # an unknown chair is a 404 before the stream starts
        return stream_of(ids)

    @app.get("/api/chairs/{chair_id}/events", summary="Server-Sent Events of one chair")
    async def chair_events(chair_id: str) -> StreamingResponse:
        clinic.chair(chair_id)
        return stream_of([chair_id])

    def stream_of(ids: list[str]) -> StreamingResponse:
        subscription = clinic.subscribe(ids)

        async def body() -> Any:
            try:
                async for chunk in subscription.messages(ids):
                    yield chunk
            finally:  # the client went away (or the server stops): the chairs forget it
                clinic.unsubscribe(subscription)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ----- acting (every request names its operator; the engine records it with the source) --------

    @app.post("/api/chairs/{chair_id}/session", status_code=201, summary="Start a session on a chair")
    async def start(chair_id: str, body: StartRequest, request: Request) -> Response:
        return reply(clinic.start(chair_id, body, source_of(request)), 201)

    @app.post("/api/chairs/{chair_id}/actions/{action}", summary="An operator action on the chair's session")
    async def act(chair_id: str, action: str, body: ActionRequest, request: Request) -> Response:
        chair = clinic.chair(chair_id)
        spec = available_actions().get(action)
        if spec is None:
            known = ", ".join(available_actions())
            raise ConsoleError(404, "unknown_action", f"no action {action!r} (one of {known})")
        verdict = await chair.act(spec, body, source_of(request))
        return reply(verdict, 202 if verdict["status"] == "queued" else 200)

    @app.post(
        "/api/chairs/{chair_id}/questions/{question_id}", summary="Answer a question the session waits on"
    )
    async def answer(chair_id: str, question_id: str, body: AnswerRequest, request: Request) -> Response:
        return reply(clinic.chair(chair_id).answer(question_id, body, source_of(request)))

    # ----- the web console ----------------------------------------------------------------------------

    def page(name: str) -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return page("index.html")

    @app.get("/chairs/{chair_id}", include_in_schema=False)
    async def chair_page(chair_id: str) -> FileResponse:
        clinic.chair(chair_id)
        return page("chair.html")

    @app.get("/patients/{patient_id}", include_in_schema=False)
    async def course_page(patient_id: str) -> FileResponse:
        return page("course.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Guard, token=token)
    return app


__all__ = ["create_app", "is_loopback"]
