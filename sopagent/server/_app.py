"""The HTTP API: a FastAPI application over a `Service`.

Endpoints (all JSON; the OpenAPI document is served at ``/openapi.json``):

* ``GET /healthz``, ``GET /readyz``: liveness, and readiness (the store answers);
* ``GET /v1/policies``: the policy versions the key may use, with their hashes;
* ``POST /v1/sessions``: start a session on a policy, get the opening turn;
* ``POST /v1/sessions/{id}/messages``: send one user message, get the `Turn`;
* ``GET /v1/sessions/{id}``, ``GET /v1/sessions/{id}/transcript``: read a session;
* ``POST /v1/sessions/{id}/end``: end it;
* ``GET /v1/handoffs``: sessions waiting for a person.

Every error is ``{"error": {"code", "message", "request_id"}}`` with a 4xx status (503 when the
store is unreachable); every response carries ``X-Request-ID``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and they name aliases local to `create_app`.
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from sopagent import __version__
from sopagent.errors import StoreError
from sopagent.server._auth import ApiKey
from sopagent.server._service import ApiError, Service
from sopagent.session import Turn

__all__ = ["create_app"]

MAX_BODY = 64 * 1024
# Above any sensible limits.max_input, so that the policy's too-long line is what users see.
MAX_TEXT = 16_000
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- request and response bodies ---------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(_Body):
    """Start a conversation."""

    policy: str = Field(description="Name of a served policy.", min_length=1, max_length=64)
    policy_hash: str | None = Field(
        default=None,
        description="A served version of that policy; by default its first version.",
        pattern=r"^sha256:[0-9a-f]{16}$",
    )
    facts: dict[str, Any] = Field(
        default_factory=dict, description="Facts the host knows up front (declared by the policy)."
    )


class SendMessage(_Body):
    """One user message."""

    text: str = Field(
        min_length=1,
        max_length=MAX_TEXT,
        description="What the user said. Past the policy's `limits.max_input` (4,000 characters"
        " by default) the turn answers with its too-long line and the session stays as it was.",
    )
    intent: str | None = Field(
        default=None,
        description="A label to use instead of asking the model (buttons, replay).",
        max_length=64,
    )


class SessionMeta(BaseModel):
    """Where a session is after a turn."""

    id: str
    policy: str
    policy_hash: str
    state: str
    status: str = Field(description="active, handoff (a person has it) or ended.")
    ended: bool
    turns: int = Field(description="Transcript records so far, the opening one included.")


class TurnRecord(BaseModel):
    """One turn as answered and as kept in the transcript."""

    session: SessionMeta
    text: str = Field(description="The approved lines said, joined.")
    handoff: bool = Field(description="Whether this turn handed the session to a person.")
    turn: Turn
    request_id: str
    at: float = Field(description="When the turn was stored, seconds since the epoch.")


class Transcript(BaseModel):
    """A session's turns, oldest first."""

    session_id: str
    status: str
    start: int
    records: list[TurnRecord]


class SessionView(BaseModel):
    """A session as stored."""

    id: str
    policy: str
    policy_hash: str
    status: str
    state: str
    ended: bool
    turns: int
    slots: dict[str, Any]
    facts: dict[str, Any]
    usage: dict[str, int]
    created: float
    updated: float


class PolicyInfo(BaseModel):
    """A served policy version."""

    name: str
    version: str
    hash: str
    default: bool = Field(description="Whether new sessions of this name start on it.")


class Policies(BaseModel):
    """The policy versions a key may use."""

    policies: list[PolicyInfo]


class HandoffInfo(BaseModel):
    """A session waiting for a person."""

    id: str
    policy: str
    policy_hash: str
    state: str
    turns: int
    updated: float


class Handoffs(BaseModel):
    """Sessions waiting for a person, oldest first."""

    sessions: list[HandoffInfo]


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="A stable code, e.g. session_busy.")
    message: str
    request_id: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 503)
}


# --- the application ---------------------------------------------------------------------------


def _error(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details is not None:
        body["details"] = details
    return JSONResponse(
        {"error": body}, status_code=status, headers={**(headers or {}), "X-Request-ID": request_id}
    )


def _request_id(request: Request) -> str:
    found: str | None = getattr(request.state, "request_id", None)
    if found is None:
        given = request.headers.get("x-request-id", "")
        found = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        request.state.request_id = found
    return found


class _Envelope:
    """Give every response an ``X-Request-ID``, and refuse bodies over ``MAX_BODY`` with 413."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY:
                response = _error(
                    413, "body_too_large", f"bodies are limited to {MAX_BODY} bytes",
                    uuid.uuid4().hex,
                )  # fmt: skip
                await response(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise ApiError(413, "body_too_large", f"bodies are limited to {MAX_BODY} bytes")
            return message

        async def identified(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    state = scope.get("state") or {}
                    given = state.get("request_id") or uuid.uuid4().hex
                    headers.append((b"x-request-id", given.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited, identified)


def create_app(service: Service, *, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """Return the FastAPI application serving ``service``.

    Args:
        service: the sessions, store, keys and policies.
        on_shutdown: called once when the server stops (closes the store and sinks).
    """
    from contextlib import asynccontextmanager  # noqa: PLC0415

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(
        title="sopagent",
        version=__version__,
        summary="Conversational agents that follow standard operating procedures exactly.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    bearer = HTTPBearer(auto_error=False, description="An API key from the service's keys file.")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, _request_id(request), headers=exc.headers)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return _error(
            503, "store_unavailable", str(exc), _request_id(request), headers={"Retry-After": "1"}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(
                400,
                "invalid_json",
                "the body is not valid JSON",
                _request_id(request),
                details=errors,
            )
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return _error(
            422, "invalid_request", where or "invalid request", _request_id(request), details=errors
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(
            exc.status_code,
            code,
            str(exc.detail),
            _request_id(request),
            headers=dict(exc.headers or {}),
        )

    # async, so that FastAPI runs it on the event loop: a sync dependency would cost every
    # request a second trip through the thread pool, for a hash and a dictionary look-up.
    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> ApiKey:
        presented = credentials.credentials if credentials is not None else x_api_key
        return service.authenticate(presented, _request_id(request))

    Key = Annotated[ApiKey, Depends(caller)]  # noqa: N806 (a type alias)
    SessionId = Annotated[str, Path(description="The session's id.", max_length=64)]  # noqa: N806

    def reply(
        body: str, request: Request, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={"X-Request-ID": _request_id(request), **(headers or {})},
        )

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the store answers",
        responses={503: {"model": ErrorBody}},
    )
    def readyz() -> dict[str, Any]:
        service.ready()
        return {"status": "ready", "policies": len(service.served)}

    @app.get(
        "/v1/policies",
        response_model=Policies,
        tags=["policies"],
        summary="Policy versions this key may use",
    )
    def policies(key: Key) -> dict[str, Any]:
        return {"policies": service.policies(key)}

    @app.post(
        "/v1/sessions",
        status_code=201,
        response_model=TurnRecord,
        tags=["sessions"],
        summary="Start a session; returns the opening turn",
    )
    def create_session(body: CreateSession, key: Key, request: Request) -> Response:
        session_id, record = service.create(
            key,
            body.policy,
            policy_hash=body.policy_hash,
            facts=body.facts,
            request_id=_request_id(request),
        )
        return reply(record, request, 201, {"Location": f"/v1/sessions/{session_id}"})

    @app.post(
        "/v1/sessions/{session_id}/messages",
        response_model=TurnRecord,
        tags=["sessions"],
        summary="Send one user message; returns the turn",
    )
    def send_message(
        session_id: SessionId,
        body: SendMessage,
        key: Key,
        request: Request,
        idempotency_key: Annotated[
            str | None,
            Header(description="Retrying with the same key returns the first answer."),
        ] = None,
    ) -> Response:
        record, replayed = service.message(
            key,
            session_id,
            body.text,
            intent=body.intent,
            idempotency_key=idempotency_key,
            request_id=_request_id(request),
        )
        if replayed:
            return reply(record, request, headers={"Idempotent-Replayed": "true"})
        return reply(record, request)

    @app.get(
        "/v1/sessions/{session_id}",
        response_model=SessionView,
        tags=["sessions"],
        summary="Read a session",
    )
    def get_session(session_id: SessionId, key: Key, request: Request) -> Response:
        return reply(service.session(key, session_id), request)

    @app.get(
        "/v1/sessions/{session_id}/transcript",
        response_model=Transcript,
        tags=["sessions"],
        summary="Read a session's turns",
    )
    def get_transcript(
        session_id: SessionId,
        key: Key,
        request: Request,
        start: Annotated[int, Query(ge=0, description="First record to return.")] = 0,
    ) -> Response:
        return reply(service.transcript(key, session_id, start), request)

    @app.post(
        "/v1/sessions/{session_id}/end",
        response_model=SessionView,
        tags=["sessions"],
        summary="End a session",
    )
    def end_session(session_id: SessionId, key: Key, request: Request) -> Response:
        return reply(service.end(key, session_id, _request_id(request)), request)

    @app.get(
        "/v1/handoffs",
        response_model=Handoffs,
        tags=["handoffs"],
        summary="Sessions waiting for a person",
    )
    def handoffs(
        key: Key,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        return reply(service.handoffs(key, limit), request)

    app.add_middleware(_Envelope)
    return app
