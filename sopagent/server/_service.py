"""What the HTTP API does, without HTTP: sessions, turns, leases, idempotency, handoffs.

Every method takes the caller's `ApiKey` and raises `ApiError` (an HTTP status, a stable
error code and a message) for anything the caller must fix. A turn runs under the session's
lease and is stored with one atomic commit, so two requests to one session never interleave
and a crash never stores half a turn. Replies are JSON text built once and stored as the
session's transcript record, so a retried request with the same idempotency key gets the very
same bytes back.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sopagent._agent import Agent
from sopagent._privacy import Redactor
from sopagent.audit import AuditSink
from sopagent.errors import SessionError
from sopagent.policy import OUT_OF_SCOPE
from sopagent.server._auth import ApiKey, KeyRing
from sopagent.server._handoff import HandoffSink, NullHandoff
from sopagent.session import Session, SessionTurn, Turn, Utterance
from sopagent.stores import Commit, SessionStore, Status, StoredSession

__all__ = ["ApiError", "Service"]

_SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

_NO_REQUEST: Mapping[str, Any] = MappingProxyType({})
_REQUEST: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "sopagent_request", default=_NO_REQUEST
)


class ApiError(Exception):
    """A request the service refuses: HTTP status, stable code, message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class _RequestSink:
    """Add the current request's id, tenant and key id to every audit event."""

    def __init__(self, sink: AuditSink) -> None:
        self.sink = sink

    def emit(self, event: Mapping[str, Any]) -> None:
        self.sink.emit({**event, **_REQUEST.get()})


@dataclass(frozen=True)
class Served:
    """One policy version the service runs."""

    agent: Agent
    name: str
    version: str
    hash: str
    default: bool
    handoff_states: frozenset[str]
    intents: frozenset[str]


class Service:
    """The customer-support service behind ``sopagent serve``.

    Args:
        agents: one agent per policy version served. The first version of each policy name
            is the one new sessions start on unless a request names another hash.
        store: where sessions live.
        keys: the API keys accepted.
        audit: where audit events go (turns and session events, each with its request id).
        handoff: where handoff events go.
        lock_ttl: seconds a turn may hold a session's lease; a worker that dies mid-turn
            blocks the session for at most this long.
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        store: SessionStore,
        keys: KeyRing,
        *,
        audit: AuditSink,
        handoff: HandoffSink | None = None,
        lock_ttl: float = 15.0,
    ) -> None:
        if not agents:
            raise ValueError("a service needs at least one policy")
        self.store = store
        self.keys = keys
        self.audit = audit
        self.handoff: HandoffSink = handoff or NullHandoff()
        self.lock_ttl = lock_ttl
        self.worker = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.served: dict[str, Served] = {}
        self.defaults: dict[str, Served] = {}
        request_sink = _RequestSink(audit)
        for agent in agents:
            policy = agent.compiled.policy
            if agent.policy_hash in self.served:
                continue
            agent.audit = request_sink
            served = Served(
                agent=agent,
                name=policy.name,
                version=policy.version,
                hash=agent.policy_hash,
                default=policy.name not in self.defaults,
                handoff_states=frozenset(n for n, s in policy.states.items() if s.handoff),
                intents=frozenset([*policy.intents, OUT_OF_SCOPE]),
            )
            self.served[served.hash] = served
            self.defaults.setdefault(served.name, served)

    # -- requests ------------------------------------------------------------------------------

    def authenticate(self, presented: str | None, request_id: str) -> ApiKey:
        """Return the key presented, or raise 401."""
        key = self.keys.find(presented) if presented else None
        if key is None:
            self._event(
                "auth_failed",
                request_id=request_id,
                reason="no key" if not presented else "unknown key",
            )
            raise ApiError(
                401,
                "unauthorized",
                "an API key is required: send 'Authorization: Bearer KEY'"
                if not presented
                else "the API key is not valid",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    def policies(self, key: ApiKey) -> list[dict[str, Any]]:
        """The policy versions this key may use."""
        return [
            {"name": s.name, "version": s.version, "hash": s.hash, "default": s.default}
            for s in self.served.values()
            if key.allows(s.name)
        ]

    def create(
        self,
        key: ApiKey,
        policy: str,
        *,
        policy_hash: str | None,
        facts: Mapping[str, Any],
        request_id: str,
    ) -> tuple[str, str]:
        """Start a session; return its id and its opening record (JSON)."""
        served = self._policy(key, policy, policy_hash)
        token = _REQUEST.set({"request_id": request_id, "tenant": key.tenant, "key_id": key.id})
        try:
            agent = served.agent
            try:
                session = agent.new_session(facts=facts)
            except ValueError as exc:
                raise ApiError(422, "invalid_fact", str(exc)) from exc
            try:
                turn = agent.start(session)
            except Exception as exc:
                session = agent.new_session(facts=facts)
                turn = self._fault(served, session, None, exc)
            status = self._status(served, session, turn)
            now = time.time()
            meta = _meta(session, status, 1)
            record = _record(meta, status, turn, request_id, now)
            stored = StoredSession(
                id=session.id,
                tenant=key.tenant,
                policy=served.name,
                policy_hash=served.hash,
                status=status,
                version=1,
                turns=1,
                data=session.to_json(),
                created=now,
                updated=now,
            )
            self.store.create(stored, record)
            self._event(
                "session_created",
                session_id=session.id,
                policy=served.name,
                policy_hash=served.hash,
            )
            if status == "handoff":
                self._handed_off(stored, turn)
            return session.id, record
        finally:
            _REQUEST.reset(token)

    def message(
        self,
        key: ApiKey,
        session_id: str,
        text: str,
        *,
        intent: str | None,
        idempotency_key: str | None,
        request_id: str,
    ) -> tuple[str, bool]:
        """Advance a session by one user message; return (record JSON, whether replayed)."""
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise ApiError(
                422,
                "invalid_idempotency_key",
                "Idempotency-Key is 1 to 255 printable ASCII characters without spaces",
            )
        digest = _digest(text, intent)
        owner = f"{self.worker}:{request_id}"
        stored = self._lease(key, session_id, owner, digest, idempotency_key)
        if isinstance(stored, str):
            return stored, True
        committed = False
        token = _REQUEST.set({"request_id": request_id, "tenant": key.tenant, "key_id": key.id})
        try:
            served = self._runnable(stored)
            if intent is not None and intent not in served.intents:
                raise ApiError(
                    422, "unknown_intent", f"{intent!r} is not an intent of {served.name}"
                )
            session = _restore(stored)
            try:
                turn = served.agent.respond(session, text, intent=intent)
            except SessionError as exc:
                raise ApiError(409, "session_invalid", str(exc)) from exc
            except Exception as exc:  # the user's message is kept, see _fault
                session = _restore(stored)
                turn = self._fault(served, session, text, exc)
            status = self._status(served, session, turn)
            now = time.time()
            meta = _meta(session, status, stored.turns + 1)
            record = _record(meta, status, turn, request_id, now)
            version = self.store.commit(
                Commit(
                    session_id=session_id,
                    tenant=stored.tenant,
                    owner=owner,
                    version=stored.version,
                    turns=stored.turns,
                    data=session.to_json(),
                    status=status,
                    record=record,
                    idempotency_key=idempotency_key,
                    digest=digest,
                )
            )
            if version is None:
                raise ApiError(
                    409,
                    "session_busy",
                    "the session's lease expired while the turn ran; nothing was stored",
                    headers={"Retry-After": "1"},
                )
            committed = True
            if status == "handoff" and stored.status != "handoff":
                self._handed_off(stored, turn)
            return record, False
        finally:
            _REQUEST.reset(token)
            if not committed:
                self.store.release(session_id, owner)

    def _lease(
        self,
        key: ApiKey,
        session_id: str,
        owner: str,
        digest: str = "",
        idempotency_key: str | None = None,
    ) -> StoredSession | str:
        """Take the session's lease for ``key``'s tenant; or the replayed answer to the key.

        One store call on the usual path: taking the lease also reads the session.
        """
        stored = (
            self.store.acquire(session_id, owner, self.lock_ttl)
            if _SESSION_ID.match(session_id)
            else None
        )
        if stored is None:
            self._owned(key, session_id)  # 404 / 403 when it is not the caller's
            if idempotency_key is not None:
                replayed = self._replay(session_id, idempotency_key, digest)
                if replayed is not None:
                    return replayed
            raise ApiError(
                409,
                "session_busy",
                "another message to this session is being answered; retry with the same"
                " Idempotency-Key",
                headers={"Retry-After": "1"},
            )
        try:
            if stored.tenant != key.tenant or not key.allows(stored.policy):
                self._owned(key, session_id)
            if idempotency_key is not None:
                replayed = self._replay(session_id, idempotency_key, digest)
                if replayed is not None:
                    self.store.release(session_id, owner)
                    return replayed
        except BaseException:
            self.store.release(session_id, owner)
            raise
        return stored

    def session(self, key: ApiKey, session_id: str) -> str:
        """Return the session's public view (JSON)."""
        stored = self._owned(key, session_id)
        session = _restore(stored)
        redactor = self._redactor(stored)
        return json.dumps(
            {
                "id": stored.id,
                "policy": stored.policy,
                "policy_hash": stored.policy_hash,
                "status": stored.status,
                "state": session.state,
                "ended": session.ended,
                "turns": stored.turns,
                "slots": redactor.values(session.slots) if redactor else session.slots,
                "facts": redactor.values(session.facts) if redactor else session.facts,
                "usage": session.usage.model_dump(),
                "created": stored.created,
                "updated": stored.updated,
            },
            default=str,
        )

    def transcript(self, key: ApiKey, session_id: str, start: int = 0) -> str:
        """Return the session's transcript: every turn record in order (JSON)."""
        stored = self._owned(key, session_id)
        records = self._redacted(stored, self.store.transcript(session_id, start))
        return (
            f'{{"session_id":"{stored.id}","status":"{stored.status}",'
            f'"start":{start},"records":[{",".join(records)}]}}'
        )

    def end(self, key: ApiKey, session_id: str, request_id: str) -> str:
        """End a session (the bot stops answering it) and return its public view."""
        stored = self._owned(key, session_id)
        if stored.status == "ended":
            return self.session(key, session_id)
        owner = f"{self.worker}:{request_id}"
        fresh = self._lease(key, session_id, owner)
        assert not isinstance(fresh, str)
        committed = False
        try:
            session = _restore(fresh)
            session.ended = True
            version = self.store.commit(
                Commit(
                    session_id=session_id,
                    tenant=fresh.tenant,
                    owner=owner,
                    version=fresh.version,
                    turns=fresh.turns,
                    data=session.to_json(),
                    status="ended",
                )
            )
            if version is None:
                raise ApiError(409, "session_busy", "the session changed; retry",
                               headers={"Retry-After": "1"})  # fmt: skip
            committed = True
        finally:
            if not committed:
                self.store.release(session_id, owner)
        self._event("session_ended", request_id=request_id, tenant=key.tenant, key_id=key.id,
                    session_id=session_id, previous_status=fresh.status)  # fmt: skip
        return self.session(key, session_id)

    def handoffs(self, key: ApiKey, limit: int) -> str:
        """Return the tenant's sessions waiting for a person (JSON), oldest first."""
        found = [
            {
                "id": s.id,
                "policy": s.policy,
                "policy_hash": s.policy_hash,
                "state": _restore(s).state,
                "turns": s.turns,
                "updated": s.updated,
            }
            for s in self.store.handoffs(key.tenant, limit)
            if key.allows(s.policy)
        ]
        return json.dumps({"sessions": found})

    def ready(self) -> None:
        """Raise `sopagent.errors.StoreError` unless the store answers."""
        self.store.ping()

    # -- helpers -------------------------------------------------------------------------------

    def _policy(self, key: ApiKey, name: str, policy_hash: str | None) -> Served:
        if policy_hash is not None:
            served = self.served.get(policy_hash)
            if served is None or served.name != name:
                raise ApiError(
                    404, "policy_not_found", f"policy {name} {policy_hash} is not served here"
                )
        else:
            found = self.defaults.get(name)
            if found is None:
                raise ApiError(404, "policy_not_found", f"no policy named {name!r} is served here")
            served = found
        if not key.allows(served.name):
            raise ApiError(403, "policy_forbidden", f"this API key may not use policy {name!r}")
        return served

    def _owned(self, key: ApiKey, session_id: str) -> StoredSession:
        stored = self.store.load(session_id) if _SESSION_ID.match(session_id) else None
        # Another tenant's session is reported exactly like a missing one.
        if stored is None or stored.tenant != key.tenant:
            raise ApiError(404, "session_not_found", f"no session {session_id}")
        if not key.allows(stored.policy):
            raise ApiError(
                403, "policy_forbidden", f"this API key may not use policy {stored.policy!r}"
            )
        return stored

    def _runnable(self, stored: StoredSession) -> Served:
        if stored.status == "handoff":
            raise ApiError(
                409,
                "session_handed_off",
                "the session was handed to a person; the agent no longer answers it",
            )
        if stored.status == "ended":
            raise ApiError(409, "session_ended", "the session has ended")
        served = self.served.get(stored.policy_hash)
        if served is None:
            raise ApiError(
                409,
                "policy_not_served",
                f"the session is pinned to {stored.policy} {stored.policy_hash}, which this"
                " worker does not serve",
            )
        return served

    def _replay(self, session_id: str, key: str, digest: str) -> str | None:
        replay = self.store.replay(session_id, key)
        if replay is None:
            return None
        if replay.digest != digest:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different message",
            )
        return replay.record

    def _status(self, served: Served, session: Session, turn: Turn) -> Status:
        if turn.state_after in served.handoff_states:
            return "handoff"
        return "ended" if session.ended else "active"

    def _fault(self, served: Served, session: Session, text: str | None, exc: Exception) -> Turn:
        """The turn of a fault the agent did not handle: the error line, the message kept."""
        compiled = served.agent.compiled
        responses = tuple(
            Utterance(id=r, text=compiled.templates[r].text, hash=compiled.templates[r].hash)
            for r in compiled.policy.global_.error.say
        )
        if text is not None:
            session.turns += 1
        session.history.append(
            SessionTurn(
                user=text,
                intent=None,
                state=session.state,
                responses=tuple(u.id for u in responses),
            )
        )
        error = f"{type(exc).__name__}: {exc}"
        self._event("turn_failed", session_id=session.id, error=error)
        return Turn(
            session_id=session.id,
            index=session.turns,
            user_text=text,
            state_before=session.state,
            state_after=session.state,
            path=(),
            intent=None,
            score=0.0,
            intent_source="error",
            accepted=False,
            slots={},
            responses=responses,
            error=error,
            ended=session.ended,
        )

    def _handed_off(self, stored: StoredSession, turn: Turn) -> None:
        records = [json.loads(r) for r in self._redacted(stored, self.store.transcript(stored.id))]
        event = {
            "event": "handoff",
            "session_id": stored.id,
            "tenant": stored.tenant,
            "policy": stored.policy,
            "policy_hash": stored.policy_hash,
            "state": turn.state_after,
            "at": time.time(),
            "transcript": records,
        }
        self._event("handoff", session_id=stored.id, state=turn.state_after)
        self.handoff.send(event)

    def _redactor(self, stored: StoredSession) -> Redactor | None:
        """The redactor of the session's policy version, None when it has no personal value."""
        served = self.served.get(stored.policy_hash) or self.defaults.get(stored.policy)
        if served is None or not served.agent.redactor.active:
            return None
        return served.agent.redactor

    def _redacted(self, stored: StoredSession, records: Sequence[str]) -> list[str]:
        """Transcript records with personal values shown as the policy's privacy says.

        The store keeps what was answered; the views of it (transcripts, handoff events) are
        redacted when they are read. The reply to a message is not: it goes back to the
        caller that sent the values.
        """
        redactor = self._redactor(stored)
        if redactor is None:
            return list(records)
        session = _restore(stored)
        personal = redactor.personal(session.slots, session.facts)
        return [json.dumps(redactor.record(json.loads(r), personal)) for r in records]

    def _event(self, name: str, **fields: Any) -> None:
        self.audit.emit({"event": name, **_REQUEST.get(), **fields})


def _restore(stored: StoredSession) -> Session:
    try:
        return Session.from_json(stored.data)
    except SessionError as exc:
        message = f"session {stored.id} cannot be read: {exc}"
        raise ApiError(409, "session_invalid", message) from exc


def _digest(text: str, intent: str | None) -> str:
    return hashlib.sha256(json.dumps([text, intent]).encode("utf-8")).hexdigest()[:32]


def _meta(session: Session, status: Status, turns: int) -> str:
    return json.dumps(
        {
            "id": session.id,
            "policy": session.policy,
            "policy_hash": session.policy_hash,
            "state": session.state,
            "status": status,
            "ended": session.ended,
            "turns": turns,
        }
    )


def _record(meta: str, status: Status, turn: Turn, request_id: str, now: float) -> str:
    handoff = "true" if status == "handoff" else "false"
    return (
        f'{{"session":{meta},"text":{json.dumps(turn.text)},"handoff":{handoff},'
        f'"turn":{turn.model_dump_json()},"request_id":{json.dumps(request_id)},"at":{now!r}}}'
    )
