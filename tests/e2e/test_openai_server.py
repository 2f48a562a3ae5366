"""End-to-end tests of the OpenAI-compatible backend against llama-cpp-python's real server.

The server runs the embedded model (Gemma 3 270M) in a subprocess; the backend reaches it over
HTTP with the ``openai`` SDK, exactly as it would reach vLLM, Ollama or OpenAI itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import sopagent
from sopagent.backends.llamacpp import default_model_path
from sopagent.backends.openai import OpenAIBackend, from_openai

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "refund.yaml"


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Start ``python -m llama_cpp.server`` on the embedded model; yield (base URL, model id)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(default_model_path()),
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "4096", "--verbose", "False",
    ]  # fmt: skip
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            model = _wait_for(base_url, process, log_path)
            yield base_url, model
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _wait_for(base_url: str, process: subprocess.Popen[bytes], log: Path) -> str:
    """Poll ``GET /v1/models`` until the server answers (120 s); return the model id."""
    deadline = time.monotonic() + 120
    with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                models = client.models.list()
            except openai.APIError:
                time.sleep(0.5)
                continue
            return str(models.data[0].id)
    pytest.fail(f"the server did not answer in 120 s: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture
def client(server: tuple[str, str]) -> Iterator[openai.OpenAI]:
    """An OpenAI client pointed at the local server, closed after the test."""
    with openai.OpenAI(base_url=server[0], api_key="local") as client:
        yield client


def backend(client: openai.OpenAI, model: str, **options: object) -> OpenAIBackend:
    """A backend on ``client``; the server is slow on its first grammar, so allow time."""
    options.setdefault("timeout", 120.0)
    return from_openai(client, model=model, **options)  # type: ignore[arg-type]


def test_refund_conversation_through_the_server(
    client: openai.OpenAI, server: tuple[str, str], reset_refunds: None
) -> None:
    """A refund conversation on the llamacpp dialect reaches refund_issued with valid labels."""
    agent = sopagent.load_agent(
        POLICY,
        backend=backend(client, server[1], dialect="llamacpp", logprobs=True),
        audit=sopagent.MemorySink(),
    )
    session = agent.new_session()
    agent.start(session)
    states = agent.compiled.states
    turns = []
    first = agent.respond(session, "my parcel arrived broken and I want my money back")
    turns.append(first)
    if first.state_after != "ask_order":
        # The small model may misroute the opener: force that turn only, keep the others free.
        assert first.intent in states[first.state_before].allowed
        first = agent.respond(session, "I want a refund, please", intent="request_refund")
    assert first.state_after == "ask_order"
    turns.append(agent.respond(session, "10001"))
    turns.append(agent.respond(session, "yes"))
    turns.append(agent.respond(session, "what's the weather like in Paris today"))
    for turn in turns:
        assert turn.error is None, turn.error
        if turn.intent is not None:
            assert turn.intent in states[turn.state_before].allowed
        assert 0.0 <= turn.score <= 1.0
    model_turns = [t for t in turns if t.intent_source == "model"]
    assert model_turns
    for turn in model_turns:
        assert turn.model_calls == 1
        assert turn.prompt_tokens > 0
        assert turn.completion_tokens > 0
        print(  # measured by the run, shown with -s
            f"turn {turn.index}: {turn.intent} ({turn.score:.2f}) in {turn.latency_ms:.0f} ms,"
            f" {turn.prompt_tokens} prompt + {turn.completion_tokens} completion tokens"
        )
    order, yes = turns[-3], turns[-2]
    assert order.intent_source == "slots"
    assert order.model_calls == 0
    assert "confirm_refund" in order.path
    assert yes.intent_source == "example"
    assert "refund_issued" in yes.response_ids


def test_openai_dialect_on_this_server_is_explained(
    client: openai.OpenAI, server: tuple[str, str], reset_refunds: None
) -> None:
    """The openai dialect against llama.cpp's server gives the error line naming the dialect."""
    agent = sopagent.load_agent(
        POLICY,
        backend=backend(client, server[1], dialect="openai", max_retries=0),
        audit=sopagent.MemorySink(),
    )
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "my parcel arrived broken and I want my money back")
    assert turn.response_ids == ("technical_issue",)
    assert turn.error is not None
    assert "dialect" in turn.error
    assert session.state == "greeting"


@pytest.mark.live
def test_refund_opener_on_the_openai_api(reset_refunds: None) -> None:
    """On the real OpenAI API (OPENAI_API_KEY), a refund request is routed with strict schema."""
    if not os.environ.get("OPENAI_API_KEY"):
        pytest.skip("OPENAI_API_KEY is not set")
    model = os.environ.get("SOPAGENT_OPENAI_MODEL", "gpt-4o-mini")
    with openai.OpenAI() as client:
        agent = sopagent.load_agent(
            POLICY, backend=from_openai(client, model=model), audit=sopagent.MemorySink()
        )
        session = agent.new_session()
        agent.start(session)
        turn = agent.respond(session, "my parcel arrived broken and I want my money back")
    assert turn.error is None, turn.error
    assert turn.intent == "request_refund"
    assert turn.state_after == "ask_order"
    assert turn.prompt_tokens > 0


def test_cli_runs_a_conversation_through_the_server(
    server: tuple[str, str], tmp_path: Path, reset_refunds: None
) -> None:
    """`sopagent run --backend openai` talks to the server named by OPENAI_BASE_URL."""
    base_url, model = server
    conversation = tmp_path / "conversation.jsonl"
    conversation.write_text(
        '{"text": "my parcel arrived broken and I want my money back"}\n{"text": "10001"}\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY="local",
        SOPAGENT_OPENAI_MODEL=model,
        SOPAGENT_OPENAI_DIALECT="llamacpp",
    )
    result = subprocess.run(
        [sys.executable, "-m", "sopagent", "run", "policies/refund.yaml",
         "--input", conversation, "--json", "--backend", "openai"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    opening, first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert opening["response_ids"] == ["greet"]
    assert first["intent"] == "request_refund"
    assert first["intent_source"] == "model"
    assert first["answered_by"] == "openai"
    assert first["error"] is None
    assert second["state_after"] == "confirm_refund"
