"""A remote model that fails: the refund agent over the OpenAI backend, made resilient.

The agent talks through the official ``openai`` client to `tests.fault_server` on 127.0.0.1,
which answers each request with the fault its script says. Every fault must end in the
policy's error line with the session where it was, after a bounded number of requests; the
circuit breaker must stop the requests while it is open and let one probe through after its
cooldown.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import sopagent
from sopagent import Agent, Session
from sopagent.backends import ClassifyRequest, Label
from sopagent.backends.openai import from_openai
from sopagent.backends.resilient import ResilientBackend, resilient
from sopagent.errors import BackendError, BackendTimeout, BackendUnavailable
from tests.conftest import REFUND_POLICY
from tests.e2e.test_server import launch
from tests.fault_server import RETRYABLE, FaultServer

RETRIES = 2
FAULTS = ("timeout", "reset", "429", "500", "invalid", "off_enum", "missing", "refusal",
          "length", "drip")  # fmt: skip
# Neither an example of an intent nor a slot value: only the model can classify it.
VAGUE = "the parcel came and it is not what I hoped for"


class Clock:
    """The breaker's clock, moved by hand so that a cooldown passes when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A fault-injecting OpenAI-compatible server on a free port of 127.0.0.1."""
    running = FaultServer().start()
    yield running
    running.stop()


@pytest.fixture
def client(server: FaultServer) -> Iterator[openai.OpenAI]:
    """The official client at the fault server; it retries nothing itself."""
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as made:
        yield made


def make_agent(
    client: openai.OpenAI, clock: Clock, *, retries: int = RETRIES, failures: int = 3
) -> tuple[Agent, ResilientBackend]:
    """The refund agent over OpenAI's backend wrapped in the resilience layer."""
    backend = resilient(
        from_openai(client, model="fault-model", timeout=0.5, max_retries=0),
        retries=retries,
        backoff=0.01,
        max_backoff=0.05,
        timeout=1.0,
        breaker_failures=failures,
        breaker_reset=30.0,
        clock=clock,
        seed=0,
    )
    agent = sopagent.load_agent(REFUND_POLICY, backend=backend, audit=sopagent.MemorySink())
    return agent, backend


def started(agent: Agent) -> Session:
    session = agent.new_session()
    agent.start(session)
    return session


def assert_kept(before: dict[str, Any], session: Session, text: str) -> None:
    """State, slots, facts and earlier history as before; the failed turn is only recorded."""
    after = json.loads(session.to_json())
    for field in ("state", "slots", "facts", "started", "ended", "policy_hash"):
        assert after[field] == before[field], field
    assert after["history"][:-1] == before["history"]
    last = after["history"][-1]
    assert (last["user"], last["intent"], last["responses"]) == (text, None, ["technical_issue"])
    assert last["state"] == before["state"]


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_yields_the_error_line_and_keeps_the_session(
    server: FaultServer, client: openai.OpenAI, fault: str, reset_refunds: None
) -> None:
    """Each fault: the error line, the session kept, bounded requests; then a healthy turn."""
    agent, backend = make_agent(client, Clock())
    session = started(agent)
    server.play([fault] * (RETRIES + 1))
    before = json.loads(session.to_json())
    turn = agent.respond(session, VAGUE)
    assert [r.id for r in turn.responses] == ["technical_issue"]
    assert turn.error is not None
    assert turn.intent_source == "error"
    assert turn.effects == ()
    assert_kept(before, session, VAGUE)
    expected = RETRIES + 1 if fault in RETRYABLE else 1
    assert server.count() == expected, server.seen
    server.play([], then="ok:request_refund")
    healthy = agent.respond(session, VAGUE)
    assert healthy.error is None, healthy.error
    assert (healthy.intent, healthy.state_after) == ("request_refund", "ask_order")
    assert server.count() == expected + 1
    assert backend.state == "closed"
    backend.close()


@pytest.mark.parametrize(
    ("fault", "error"),
    [("invalid", BackendError), ("drip", BackendTimeout), ("timeout", BackendTimeout),
     ("reset", BackendUnavailable), ("429", BackendUnavailable), ("500", BackendUnavailable)],
)  # fmt: skip
def test_the_bare_backend_raises_a_retryable_backend_error(
    server: FaultServer, client: openai.OpenAI, fault: str, error: type[BackendError]
) -> None:
    """Without the resilience layer each fault is still a typed, retryable BackendError."""
    agent = sopagent.load_agent(
        REFUND_POLICY,
        backend=from_openai(client, model="fault-model", timeout=1.0, max_retries=0),
        audit=sopagent.MemorySink(),
    )
    session = started(agent)
    labels = (Label("request_refund", "The customer asks for a refund."),
              Label("out_of_scope", "Anything else."))  # fmt: skip
    server.play([fault])
    with pytest.raises(error) as raised:
        agent.backend.classify(ClassifyRequest(text=VAGUE, labels=labels, vocabulary=labels))
    assert raised.value.retryable
    server.play([fault])
    turn = agent.respond(session, VAGUE)  # the agent turns it into the error line
    assert [r.id for r in turn.responses] == ["technical_issue"]
    assert turn.error is not None
    assert turn.error.startswith(error.__name__)
    assert server.count() == 2


def test_faults_then_recovery_within_the_retries(
    server: FaultServer, client: openai.OpenAI, reset_refunds: None
) -> None:
    """Two failures then a healthy answer: the retries absorb them and the turn succeeds."""
    agent, backend = make_agent(client, Clock())
    session = started(agent)
    server.play(["reset", "429"], then="ok:request_refund")
    turn = agent.respond(session, VAGUE)
    assert turn.error is None, turn.error
    assert turn.state_after == "ask_order"
    assert server.seen == ["reset", "429", "ok:request_refund"]
    assert backend.failures == 0
    backend.close()


def test_breaker_opens_stops_requests_and_closes_after_a_probe(
    server: FaultServer, client: openai.OpenAI, reset_refunds: None
) -> None:
    """N failed turns open the circuit; no request reaches the server until a probe succeeds."""
    clock = Clock()
    agent, backend = make_agent(client, clock, retries=1, failures=3)
    session = started(agent)
    server.play([], then="500")
    before = json.loads(session.to_json())
    for failed in range(1, 4):
        turn = agent.respond(session, VAGUE)
        assert [r.id for r in turn.responses] == ["technical_issue"]
        assert server.count() == 2 * failed  # one try and one retry per turn
    assert backend.state == "open"
    for _ in range(5):
        turn = agent.respond(session, VAGUE)
        assert [r.id for r in turn.responses] == ["technical_issue"]
        assert turn.error is not None
        assert "circuit open" in turn.error
    assert server.count() == 6  # nothing reached the server while open
    after = json.loads(session.to_json())
    assert (after["state"], after["slots"], after["facts"]) == (
        before["state"], before["slots"], before["facts"],
    )  # fmt: skip

    clock.now += 30.0
    assert backend.state == "half_open"
    server.play(["500"], then="ok:request_refund")
    probe = agent.respond(session, VAGUE)
    assert probe.error is not None  # the probe failed: open again, for another cooldown
    assert server.count() == 7  # a probe is a single attempt, without retries
    assert backend.state == "open"
    agent.respond(session, VAGUE)
    assert server.count() == 7

    clock.now += 30.0
    healthy = agent.respond(session, VAGUE)
    assert healthy.error is None, healthy.error
    assert healthy.state_after == "ask_order"
    assert server.count() == 8
    assert backend.state == "closed"
    backend.close()


def test_answer_errors_do_not_open_the_breaker(
    server: FaultServer, client: openai.OpenAI, reset_refunds: None
) -> None:
    """Off-enum and refused answers show the server is up: the circuit stays closed."""
    agent, backend = make_agent(client, Clock(), failures=2)
    session = started(agent)
    server.play([], then="off_enum")
    for _ in range(4):
        agent.respond(session, VAGUE)
    assert backend.state == "closed"
    assert server.count() == 4
    backend.close()


def test_serve_answers_200_with_the_error_line_while_the_model_fails(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sopagent serve over a failing model: 200 and the error line, the message kept, no 500."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    monkeypatch.setenv("SOPAGENT_OPENAI_MODEL", "fault-model")
    spec = (
        "resilient(openai, retries=1, backoff=0.01, timeout=2, breaker_failures=2, breaker_reset=1)"
    )
    running = launch(tmp_path / "serve", "--backend", spec, "--backend-timeout", "1")
    try:
        api = running.client()
        created = api.post("/v1/sessions", json={"policy": "refund"})
        assert created.status_code == 201, created.text
        session_id = created.json()["session"]["id"]
        path = f"/v1/sessions/{session_id}/messages"
        technical = "Sorry, I'm having a technical problem right now. Could you say that again?"

        server.play([], then="500")
        texts = ["first try", "second try", "third try"]
        for text in texts:
            answer = api.post(path, json={"text": text})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["text"] == technical
            assert body["turn"]["error"]
            assert body["session"]["state"] == "greeting"
        # A turn costs (1 + the client's one retry) * (1 + the resilient retry) requests; two
        # failed turns opened the circuit, so the third reached no server.
        assert server.count() == 2 * 2 * 2

        seen = server.count()
        server.play(["timeout", "reset", "invalid", "drip"], then="ok:request_refund")
        records = api.get(f"/v1/sessions/{session_id}/transcript").json()["records"]
        assert [r["turn"]["user_text"] for r in records[1:]] == texts
        assert all(r["text"] == technical for r in records[1:])

        # After the cooldown the probe is a healthy answer (the faults above are played to
        # the calls before it, every one answered by the error line with 200).
        recovered = None
        for attempt in range(20):
            httpx.get(running.url + "/healthz")
            answer = api.post(path, json={"text": f"again {attempt}"})
            assert answer.status_code == 200, answer.text
            if answer.json()["turn"]["error"] is None:
                recovered = answer.json()
                break
            time.sleep(0.5)  # let the breaker's cooldown pass
        assert recovered is not None, server.seen
        assert recovered["session"]["state"] == "ask_order"
        assert server.count() > seen
        view = api.get(f"/v1/sessions/{session_id}").json()
        assert view["state"] == "ask_order"
        assert view["turns"] == len(
            api.get(f"/v1/sessions/{session_id}/transcript").json()["records"]
        )
    finally:
        assert running.stop(signal.SIGTERM) == 0
