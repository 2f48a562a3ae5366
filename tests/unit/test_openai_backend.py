"""The OpenAI-compatible backend against a mocked HTTP transport: requests, answers, failures."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

import sopagent
from sopagent.backends import ChooseRequest, ClassifyRequest, Label
from sopagent.backends.openai import OpenAIBackend, from_openai
from sopagent.errors import BackendAnswerError, BackendError, BackendUnavailable

ROOT = Path(__file__).resolve().parents[2]

LABELS = (
    Label("request_refund", "The customer asks for a refund.", ("I want a refund",)),
    Label("affirm", "The customer says yes.", ("yes", "sure")),
    Label("out_of_scope", "Anything else."),
)
SIZES = (Label("small", "a small one"), Label("large", "a large one"))
REQUEST = ClassifyRequest(
    text="please give my money back",
    labels=LABELS,
    vocabulary=LABELS,
    key="policy-hash",
    instructions="Support assistant of a shop.",
)

Handler = Callable[[httpx.Request], httpx.Response]


def completion(
    content: str | None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    logprobs: dict[str, Any] | None = None,
    cached: int | None = 3,
) -> dict[str, Any]:
    """Return the JSON body of a chat completion whose only choice says ``content``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish_reason,
                "logprobs": logprobs,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 9,
            "total_tokens": 129,
            "prompt_tokens_details": None if cached is None else {"cached_tokens": cached},
        },
    }


class Server:
    """A fake server: answers every request with the next handler and records the bodies."""

    def __init__(self, *answers: Handler | dict[str, Any]) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            return answer(request)
        return httpx.Response(200, json=answer)


@pytest.fixture
def make() -> Iterator[Callable[..., OpenAIBackend]]:
    """Return ``make(server, **options)``: a backend on a client over the fake server."""
    clients: list[openai.OpenAI] = []

    def build(server: Server, **options: Any) -> OpenAIBackend:
        http = httpx.Client(transport=httpx.MockTransport(server))
        client = openai.OpenAI(base_url="http://test/v1", api_key="x", http_client=http)
        clients.append(client)
        options.setdefault("max_retries", 0)
        return from_openai(client, model="m", **options)

    yield build
    for client in clients:
        client.close()


def answer(intent: str, **slots: str) -> dict[str, Any]:
    """Return a completion whose content is the JSON answer ``intent`` with ``slots``."""
    return completion(json.dumps({"intent": intent, **slots}))


def test_openai_dialect_sends_a_strict_json_schema(make: Callable[..., OpenAIBackend]) -> None:
    """The openai dialect asks for json_schema, strict, with the allowed labels as the enum."""
    server = Server(answer("request_refund"))
    make(server).classify(REQUEST)
    body = server.bodies[0]
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["properties"]["intent"]["enum"] == ["request_refund", "affirm", "out_of_scope"]
    assert schema["required"] == ["intent"]
    assert schema["additionalProperties"] is False
    assert body["temperature"] == 0
    assert body["max_tokens"] <= 128
    assert "logprobs" not in body
    system, user = body["messages"]
    assert system["role"] == "system"
    assert "Support assistant of a shop." in system["content"]
    assert "I want a refund" in system["content"]
    assert user == {"role": "user", "content": "please give my money back"}


def test_llamacpp_dialect_sends_json_object_with_schema(
    make: Callable[..., OpenAIBackend],
) -> None:
    """The llamacpp dialect sends the schema inside a json_object response format."""
    server = Server(answer("affirm"))
    make(server, dialect="llamacpp").classify(REQUEST)
    fmt = server.bodies[0]["response_format"]
    assert fmt["type"] == "json_object"
    assert fmt["schema"]["properties"]["intent"]["enum"][-1] == "out_of_scope"


def test_valid_answer_parses_with_slots_and_usage(make: Callable[..., OpenAIBackend]) -> None:
    """A valid answer gives the intent, enum slots, score 1.0 and the server's token counts."""
    server = Server(answer("request_refund", size="large"))
    request = ClassifyRequest(
        text="refund the large one",
        labels=LABELS,
        slot_choices={"size": SIZES},
        key="policy-hash",
    )
    result = make(server).classify(request)
    assert (result.intent, result.score, dict(result.slots)) == (
        "request_refund",
        1.0,
        {"size": "large"},
    )
    assert (result.usage.calls, result.usage.prompt_tokens) == (1, 120)
    assert (result.usage.completion_tokens, result.usage.cached_tokens) == (9, 3)
    schema = server.bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["size"] == {"type": "string", "enum": ["small", "large"]}
    assert schema["required"] == ["intent", "size"]


def test_missing_usage_details_count_as_zero(make: Callable[..., OpenAIBackend]) -> None:
    """A server without prompt_tokens_details reports no cached tokens."""
    server = Server(completion('{"intent": "affirm"}', cached=None))
    assert make(server).classify(REQUEST).usage.cached_tokens == 0


def test_system_message_is_identical_across_states(make: Callable[..., OpenAIBackend]) -> None:
    """The policy's part of the system message comes first and is the same in every state."""
    server = Server(answer("affirm"))
    backend = make(server)
    backend.classify(REQUEST)
    later = ClassifyRequest(
        "yes please!", LABELS[1:], LABELS, key="policy-hash", instructions=REQUEST.instructions
    )
    backend.classify(later)
    first, second = (body["messages"][0]["content"] for body in server.bodies)
    shared = first.split("Intents allowed now")[0]
    assert second.startswith(shared)
    assert "request_refund" in shared


def test_choose_sends_option_ids(make: Callable[..., OpenAIBackend]) -> None:
    """choose asks for one of the option ids and returns it."""
    server = Server(completion('{"response": "b"}'))
    options = (Label("a", "Text A."), Label("b", "Text B."))
    choice = make(server).choose(ChooseRequest("hi", options, key="k"))
    assert choice.response == "b"
    enum = server.bodies[0]["response_format"]["json_schema"]["schema"]["properties"]
    assert enum == {"response": {"type": "string", "enum": ["a", "b"]}}
    assert "Text B." in server.bodies[0]["messages"][0]["content"]


def test_logprobs_score_the_first_token_of_the_label(make: Callable[..., OpenAIBackend]) -> None:
    """With logprobs on, the score is the label's first token renormalized over label starts."""
    tokens = [
        {"token": '{"intent": "', "logprob": 0.0, "top_logprobs": []},
        {
            "token": "request",
            "logprob": -0.5,
            "top_logprobs": [
                {"token": "request", "logprob": -0.5},
                {"token": "aff", "logprob": -1.5},
                {"token": "hello", "logprob": -0.1},
            ],
        },
        {"token": '_refund"}', "logprob": 0.0, "top_logprobs": []},
    ]
    content = '{"intent": "request_refund"}'
    server = Server(completion(content, logprobs={"content": tokens}))
    result = make(server, logprobs=True).classify(REQUEST)
    expected = 1 / (1 + 2.718281828459045**-1.0)
    assert result.score == pytest.approx(expected)
    assert server.bodies[0]["logprobs"] is True
    assert server.bodies[0]["top_logprobs"] == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (answer("fly_away"), "does not follow the schema"),
        (completion("{not json"), "does not follow the schema"),
        (completion('{"intent": "affirm", "extra": 1}'), "does not follow the schema"),
        (completion(None, refusal="I can't help with that"), "refused"),
        (completion('{"intent": "aff', finish_reason="length"), "finish_reason 'length'"),
    ],
    ids=["off-enum", "invalid-json", "extra-field", "refusal", "length"],
)
def test_bad_answers_raise_backend_error(
    make: Callable[..., OpenAIBackend], body: dict[str, Any], message: str
) -> None:
    """Off-schema, unparsable, refused or truncated answers are non-retryable BackendErrors."""
    with pytest.raises(BackendError, match=message) as info:
        make(Server(body)).classify(REQUEST)
    assert info.value.retryable is False
    assert info.value.provider == "openai"


def llamacpp_rejection(request: httpx.Request) -> httpx.Response:
    """Answer as llama-cpp-python's server does to a json_schema response format."""
    detail = (
        "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', "
        "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
    )
    return httpx.Response(500, json={"message": detail})


def test_dialect_mismatch_is_explained(make: Callable[..., OpenAIBackend]) -> None:
    """A server that wants json_object gets a non-retryable error naming the dialect."""
    with pytest.raises(BackendError, match="use dialect='llamacpp'") as info:
        make(Server(llamacpp_rejection)).classify(REQUEST)
    assert info.value.retryable is False
    assert isinstance(info.value.__cause__, openai.APIStatusError)


def test_rate_limit_is_retryable(make: Callable[..., OpenAIBackend]) -> None:
    """HTTP 429 is a retryable BackendError raised from the SDK's RateLimitError."""
    server = Server(lambda request: httpx.Response(429, json={"error": {"message": "slow"}}))
    with pytest.raises(BackendError, match="429") as info:
        make(server).classify(REQUEST)
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, openai.RateLimitError)


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0.5", 0.5), ("soon", None)])
def test_rate_limit_carries_the_providers_retry_after(
    make: Callable[..., OpenAIBackend], header: str, seconds: float | None
) -> None:
    """A 429's Retry-After in seconds travels on the error for the retrying wrapper."""
    server = Server(
        lambda request: httpx.Response(
            429, json={"error": {"message": "slow"}}, headers={"Retry-After": header}
        )
    )
    with pytest.raises(BackendUnavailable) as info:
        make(server).classify(REQUEST)
    assert info.value.retry_after == seconds


def test_client_errors_are_not_retryable(make: Callable[..., OpenAIBackend]) -> None:
    """HTTP 400 that is not about the response format is a plain non-retryable error."""
    server = Server(lambda request: httpx.Response(400, json={"error": {"message": "bad"}}))
    with pytest.raises(BackendError, match="HTTP 400") as info:
        make(server).classify(REQUEST)
    assert info.value.retryable is False


def test_timeout_is_retryable(make: Callable[..., OpenAIBackend]) -> None:
    """A timeout is a retryable BackendError raised from the SDK's APITimeoutError."""

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("too slow", request=request)

    with pytest.raises(BackendError, match="timed out") as info:
        make(Server(slow), timeout=0.5).classify(REQUEST)
    assert info.value.retryable is True
    assert isinstance(info.value.__cause__, openai.APITimeoutError)


def test_connection_error_is_retryable(make: Callable[..., OpenAIBackend]) -> None:
    """A refused connection is a retryable BackendError."""

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(BackendError, match="cannot reach") as info:
        make(Server(down)).classify(REQUEST)
    assert info.value.retryable is True


def test_unknown_dialect_is_refused(make: Callable[..., OpenAIBackend]) -> None:
    """Only the two known dialects are accepted."""
    with pytest.raises(ValueError, match="dialect"):
        make(Server(answer("affirm")), dialect="vllm")


def test_agent_says_the_error_line_and_keeps_the_session(
    make: Callable[..., OpenAIBackend], reset_refunds: None
) -> None:
    """Through the agent, a failing server gives technical_issue and leaves the state as it was."""
    agent = sopagent.load_agent(
        ROOT / "policies" / "refund.yaml",
        backend=make(Server(llamacpp_rejection)),
        audit=sopagent.MemorySink(),
    )
    session = agent.new_session()
    agent.start(session)
    before = session.to_json()
    turn = agent.respond(session, "my parcel arrived broken, I want my money back")
    assert turn.response_ids == ("technical_issue",)
    assert turn.error is not None
    assert "dialect" in turn.error
    assert turn.state_after == turn.state_before == "greeting"
    assert session.state == "greeting"
    assert session.slots == {}
    assert json.loads(session.to_json())["state"] == json.loads(before)["state"]


def test_agent_follows_a_valid_answer(
    make: Callable[..., OpenAIBackend], reset_refunds: None
) -> None:
    """Through the agent, a valid answer moves the refund procedure on and counts the tokens."""
    server = Server(answer("request_refund"))
    agent = sopagent.load_agent(
        ROOT / "policies" / "refund.yaml", backend=make(server), audit=sopagent.MemorySink()
    )
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "my parcel arrived broken, I want my money back")
    assert (turn.intent, turn.intent_source, turn.state_after) == (
        "request_refund",
        "model",
        "ask_order",
    )
    assert (turn.model_calls, turn.prompt_tokens, turn.completion_tokens) == (1, 120, 9)
    enum = server.bodies[0]["response_format"]["json_schema"]["schema"]["properties"]["intent"]
    assert "request_refund" in enum["enum"]
    assert "affirm" not in enum["enum"]


def test_a_body_that_is_not_json_is_retryable(make: Callable[..., OpenAIBackend]) -> None:
    """A 200 whose body is not a JSON object is a retryable BackendError, not a crash."""
    for body in (b'{"choices": [', b"[1, 2]", b"<html>busy</html>"):
        server = Server(lambda request, body=body: httpx.Response(200, content=body))
        with pytest.raises(BackendError, match="not a JSON object") as info:
            make(server).classify(REQUEST)
        assert info.value.retryable is True


@pytest.mark.parametrize(
    "body",
    [{"id": "x"}, {"choices": []}, {"choices": [{"index": 0}]},
     {"choices": [{"index": 0, "message": {"role": "assistant", "content": 7}}]}],
    ids=["no-choices", "empty-choices", "no-message", "content-not-text"],
)  # fmt: skip
def test_answers_missing_their_parts_are_answer_errors(
    make: Callable[..., OpenAIBackend], body: dict[str, Any]
) -> None:
    """A completion without choices, message or text content is a BackendAnswerError."""
    with pytest.raises(BackendAnswerError) as info:
        make(Server(body)).classify(REQUEST)
    assert info.value.retryable is False


def test_a_body_that_breaks_off_is_retryable(make: Callable[..., OpenAIBackend]) -> None:
    """A connection lost in the middle of the body is a retryable BackendUnavailable."""

    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"id": "chatcmpl-1", "choices": ['
            raise httpx.RemoteProtocolError("peer closed connection")

    server = Server(lambda request: httpx.Response(200, stream=Broken()))
    with pytest.raises(BackendUnavailable, match="broke off") as info:
        make(server).classify(REQUEST)
    assert info.value.retryable is True
