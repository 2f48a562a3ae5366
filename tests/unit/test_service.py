"""The service behind the HTTP API: tenants, scopes, leases, idempotency, handoffs, faults."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from sopagent import Agent, MemorySink, ScriptedBackend, load_agent
from sopagent.backends import ChooseRequest, ClassifyRequest
from sopagent.errors import BackendTimeout
from sopagent.server import ApiError, ApiKey, KeyRing, Service, hash_key
from sopagent.stores import SqliteStore
from tests.conftest import REFUND_POLICY

ACME = ApiKey("acme-web", "acme", frozenset({"refund"}), hash_key("sk_acme"))
ACME_NPC = ApiKey("acme-npc", "acme", frozenset({"merchant_npc"}), hash_key("sk_acme_npc"))
BETA = ApiKey("beta-all", "beta", frozenset({"*"}), hash_key("sk_beta"))


class Handoffs:
    """A handoff sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []

    def send(self, event: Mapping[str, Any]) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


class Raising:
    """A backend whose every call raises ``error``."""

    name = "raising"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def classify(self, request: ClassifyRequest) -> Any:
        raise self.error

    def choose(self, request: ChooseRequest) -> Any:
        raise self.error


Make = Callable[..., tuple[Service, MemorySink, Handoffs]]


@pytest.fixture
def make(tmp_path: Path, reset_refunds: None) -> Make:
    """Return ``make(backend=None, agents=None)``: a service on a fresh SQLite store."""

    def build(backend: Any = None, agents: list[Agent] | None = None) -> tuple[Service, ...]:
        audit, handoffs = MemorySink(), Handoffs()
        if agents is None:
            agents = [load_agent(REFUND_POLICY, backend=backend or ScriptedBackend())]
        store = SqliteStore(tmp_path / f"s{len(list(tmp_path.iterdir()))}.db")
        service = Service(
            agents, store, KeyRing([ACME, ACME_NPC, BETA]), audit=audit, handoff=handoffs
        )
        return service, audit, handoffs

    return build  # type: ignore[return-value]


def _start(service: Service, key: ApiKey = ACME) -> str:
    session_id, _ = service.create(key, "refund", policy_hash=None, facts={}, request_id="r0")
    return session_id


def _say(
    service: Service, session_id: str, text: str, key: ApiKey = ACME, **options: Any
) -> dict[str, Any]:
    options.setdefault("intent", None)
    options.setdefault("idempotency_key", None)
    options.setdefault("request_id", "r1")
    record, _ = service.message(key, session_id, text, **options)
    loaded: dict[str, Any] = json.loads(record)
    return loaded


def test_keys_authenticate_by_hash(make: Make) -> None:
    """A known key is found by its hash; none or a wrong one is 401 and audited."""
    service, audit, _ = make()
    assert service.authenticate("sk_acme", "r") is ACME
    for presented in (None, "sk_wrong"):
        with pytest.raises(ApiError) as caught:
            service.authenticate(presented, "r")
        assert caught.value.status == 401
    assert [e.get("event") for e in audit.events] == ["auth_failed", "auth_failed"]


def test_opening_turn_is_stored_as_first_record(make: Make) -> None:
    """Creating a session says the opening line and stores it as record 0."""
    service, _, _ = make()
    session_id, record = service.create(ACME, "refund", policy_hash=None, facts={}, request_id="r")
    opening = json.loads(record)
    assert [r["id"] for r in opening["turn"]["responses"]] == ["greet"]
    assert opening["session"]["state"] == "greeting"
    assert opening["text"].startswith("Hello")
    transcript = json.loads(service.transcript(ACME, session_id))
    assert [r["turn"]["index"] for r in transcript["records"]] == [0]


def test_another_tenant_cannot_see_a_session(make: Make) -> None:
    """Tenant beta gets 404 for acme's session, exactly as for a missing one."""
    service, _, _ = make()
    session_id = _start(service)
    for call in (
        lambda: service.session(BETA, session_id),
        lambda: service.transcript(BETA, session_id),
        lambda: _say(service, session_id, "I'd like a refund", key=BETA),
        lambda: service.end(BETA, session_id, "r"),
    ):
        with pytest.raises(ApiError) as caught:
            call()
        assert (caught.value.status, caught.value.code) == (404, "session_not_found")


def test_key_scoped_to_other_policies_is_forbidden(make: Make) -> None:
    """A key of the same tenant without the policy in its scope gets 403."""
    service, _, _ = make()
    with pytest.raises(ApiError) as caught:
        _start(service, key=ACME_NPC)
    assert (caught.value.status, caught.value.code) == (403, "policy_forbidden")
    session_id = _start(service)
    with pytest.raises(ApiError) as caught:
        service.session(ACME_NPC, session_id)
    assert caught.value.status == 403
    assert [p["name"] for p in service.policies(ACME_NPC)] == []


def test_unknown_policy_and_bad_facts_are_clear_errors(make: Make) -> None:
    """A policy not served is 404; a fact the policy does not declare is 422."""
    service, _, _ = make()
    with pytest.raises(ApiError) as caught:
        service.create(ACME, "nope", policy_hash=None, facts={}, request_id="r")
    assert (caught.value.status, caught.value.code) == (404, "policy_not_found")
    with pytest.raises(ApiError) as caught:
        service.create(ACME, "refund", policy_hash=None, facts={"nope": 1}, request_id="r")
    assert (caught.value.status, caught.value.code) == (422, "invalid_fact")


def test_same_idempotency_key_replays_the_same_bytes(make: Make) -> None:
    """A retry with the key returns the first answer and advances nothing."""
    service, _, _ = make(ScriptedBackend({"I'd like a refund": "request_refund"}))
    session_id = _start(service)
    first, replayed = service.message(
        ACME, session_id, "I'd like a refund", intent=None, idempotency_key="k1", request_id="a"
    )
    again, replayed_again = service.message(
        ACME, session_id, "I'd like a refund", intent=None, idempotency_key="k1", request_id="b"
    )
    assert (replayed, replayed_again) == (False, True)
    assert again == first
    assert json.loads(service.session(ACME, session_id))["turns"] == 2


def test_idempotency_key_with_another_message_is_rejected(make: Make) -> None:
    """Reusing a key for a different message is 422, not a silent replay."""
    service, _, _ = make()
    session_id = _start(service)
    _say(service, session_id, "hello", idempotency_key="k1")
    with pytest.raises(ApiError) as caught:
        _say(service, session_id, "something else", idempotency_key="k1")
    assert (caught.value.status, caught.value.code) == (422, "idempotency_key_reused")
    with pytest.raises(ApiError) as caught:
        _say(service, session_id, "hello", idempotency_key="has space")
    assert caught.value.code == "invalid_idempotency_key"


def test_message_to_a_busy_session_is_409(make: Make) -> None:
    """While another request holds the lease, a second message is refused, not interleaved."""
    service, _, _ = make()
    session_id = _start(service)
    assert service.store.acquire(session_id, "someone-else", 30)
    with pytest.raises(ApiError) as caught:
        _say(service, session_id, "hello")
    assert (caught.value.status, caught.value.code) == (409, "session_busy")
    assert caught.value.headers["Retry-After"] == "1"
    assert json.loads(service.session(ACME, session_id))["turns"] == 1


def test_handoff_marks_session_and_sends_transcript(make: Make) -> None:
    """Entering the handoff state marks the session, emits the transcript, stops the bot."""
    script = {"let me talk to a human": "talk_to_human", "yes please": "affirm"}
    service, audit, handoffs = make(ScriptedBackend(script))
    session_id = _start(service)
    assert _say(service, session_id, "let me talk to a human")["handoff"] is False
    record = _say(service, session_id, "yes please")
    assert record["handoff"] is True
    assert record["session"]["status"] == "handoff"
    (event,) = handoffs.events
    assert event["session_id"] == session_id
    assert event["state"] == "handoff"
    assert [r["turn"]["user_text"] for r in event["transcript"]] == [
        None, "let me talk to a human", "yes please",
    ]  # fmt: skip
    listed = json.loads(service.handoffs(ACME, 10))["sessions"]
    assert [s["id"] for s in listed] == [session_id]
    with pytest.raises(ApiError) as caught:
        _say(service, session_id, "hello?")
    assert (caught.value.status, caught.value.code) == (409, "session_handed_off")
    assert "handoff" in [e.get("event") for e in audit.events]


def test_backend_failure_answers_with_the_error_line_and_keeps_the_message(make: Make) -> None:
    """A timing-out model yields the fallback line; the state stays and the message is stored."""
    service, _, _ = make(Raising(BackendTimeout("slow", provider="raising")))
    session_id = _start(service)
    record = _say(service, session_id, "I'd like a refund")
    assert record["turn"]["intent_source"] == "error"
    assert record["session"]["state"] == "greeting"
    assert record["text"]
    records = json.loads(service.transcript(ACME, session_id))["records"]
    assert records[-1]["turn"]["user_text"] == "I'd like a refund"


def test_unexpected_backend_exception_is_still_an_answer(make: Make) -> None:
    """Even a bug in a backend (not a BackendError) is answered with the error line."""
    service, audit, _ = make(Raising(RuntimeError("bug")))
    session_id = _start(service)
    record = _say(service, session_id, "I'd like a refund")
    assert "RuntimeError: bug" in record["turn"]["error"]
    assert record["session"]["state"] == "greeting"
    assert json.loads(service.session(ACME, session_id))["turns"] == 2
    assert "turn_failed" in [e.get("event") for e in audit.events]


def test_unknown_intent_is_422(make: Make) -> None:
    """A forced intent the policy does not have is refused before anything runs."""
    service, _, _ = make()
    session_id = _start(service)
    with pytest.raises(ApiError) as caught:
        _say(service, session_id, "hi", intent="fly_to_the_moon")
    assert (caught.value.status, caught.value.code) == (422, "unknown_intent")


def test_ended_session_is_not_answered(make: Make) -> None:
    """After end, messages are 409 and ending again is harmless."""
    service, audit, _ = make()
    session_id = _start(service)
    view = json.loads(service.end(ACME, session_id, "r"))
    assert (view["status"], view["ended"]) == ("ended", True)
    assert json.loads(service.end(ACME, session_id, "r"))["status"] == "ended"
    with pytest.raises(ApiError) as caught:
        _say(service, session_id, "hello")
    assert caught.value.code == "session_ended"
    assert "session_ended" in [e.get("event") for e in audit.events]


def test_audit_events_carry_request_id_and_tenant(make: Make) -> None:
    """Turn events written during a request name that request, its tenant and key."""
    service, audit, _ = make()
    session_id = _start(service)
    _say(service, session_id, "hello", request_id="req-42")
    turn_events = [e for e in audit.events if e.get("turn") == 1]
    assert turn_events
    assert turn_events[-1]["request_id"] == "req-42"
    assert (turn_events[-1]["tenant"], turn_events[-1]["key_id"]) == ("acme", "acme-web")


def test_sessions_stay_pinned_to_their_policy_version(
    make: Make, write_policy: Callable[..., Path]
) -> None:
    """A session keeps its version when a newer one is served; a worker without it says 409."""
    old = load_agent(write_policy(), backend=ScriptedBackend())
    new = load_agent(
        write_policy(policy=lambda t: t.replace("Judges numbers.", "Judges numbers, v2.")),
        backend=ScriptedBackend(),
    )
    mini = ApiKey("k", "acme", frozenset({"mini"}), hash_key("sk_mini"))
    service, _, _ = make(agents=[old, new])
    service.keys = KeyRing([mini])
    session_id, record = service.create(mini, "mini", policy_hash=None, facts={}, request_id="r")
    assert json.loads(record)["session"]["policy_hash"] == old.policy_hash
    pinned, _ = service.create(mini, "mini", policy_hash=new.policy_hash, facts={}, request_id="r")
    assert json.loads(service.session(mini, pinned))["policy_hash"] == new.policy_hash
    newer_only = Service([new], service.store, service.keys, audit=MemorySink())
    with pytest.raises(ApiError) as caught:
        newer_only.message(
            mini, session_id, "hello", intent=None, idempotency_key=None, request_id="r"
        )
    assert (caught.value.status, caught.value.code) == (409, "policy_not_served")
    assert json.loads(newer_only.message(
        mini, pinned, "hello", intent=None, idempotency_key=None, request_id="r"
    )[0])["session"]["turns"] == 2  # fmt: skip
