"""Shared fixtures: the refund agent of the worked example and small policies on disk."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pytest

from sopagent import Agent, MemorySink, ScriptedBackend, load_agent
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Usage

ROOT = Path(__file__).resolve().parent.parent
REFUND_POLICY = ROOT / "policies" / "refund.yaml"
GOLDEN = Path(__file__).resolve().parent / "golden"

# A small, valid procedure used to build broken variants: every test replaces a piece of it.
MINI_POLICY = """\
sopagent: 1
name: mini
description: Judges numbers.
catalog: catalog.yaml
decisions: [decisions.py]
initial: start
intents:
  greet:
    description: The user says hello.
    examples: [hello]
  give_number:
    description: The user gives a number.
    examples: [my number is 7]
  stop:
    description: The user wants to stop.
    examples: [stop]
slots:
  number: {type: integer, min: 0, max: 100, ask: ask_number, invalid: bad_number}
facts:
  verdict: {type: string, max_length: 20}
global:
  on:
    stop: done
  fallback: {say: sorry}
  error: {say: oops}
states:
  start:
    say: welcome
    on:
      greet: {say: welcome}
      give_number: {to: judge, require: [number]}
  judge:
    decide: judge
    outcomes:
      small: {to: done, say: small}
      big: {to: done, say: big}
  done:
    say: bye
    terminal: true
"""

MINI_CATALOG = """\
sopagent: 1
catalog: mini
responses:
  welcome: Welcome.
  ask_number: Which number?
  bad_number: Numbers go from 0 to 100.
  small: "{number} is small."
  big: "{number} is big."
  sorry: Sorry?
  oops: Something broke.
  bye: Bye.
"""

MINI_DECISIONS = """\
from sopagent import Outcome, decision


@decision(outcomes=["small", "big"])
def judge(ctx):
    if ctx.slots["number"] < 50:
        return "small"
    return Outcome("big", facts={"verdict": "big"})
"""

Text = str | Callable[[str], str] | None
PolicyWriter = Callable[..., Path]

_counter = itertools.count()


def _text(value: Text, default: str) -> str:
    if value is None:
        return default
    if callable(value):
        return value(default)
    return value


@pytest.fixture
def write_policy(tmp_path: Path) -> PolicyWriter:
    """Return ``write(policy=, catalog=, decisions=, files=)``: write a policy set, get its path.

    Each argument is the file's full text, a function editing the mini default, or ``None`` for
    the default. ``files`` adds more files beside them. Every call writes a fresh directory, so
    decision modules are never shared between calls.
    """

    def write(
        policy: Text = None,
        catalog: Text = None,
        decisions: Text = None,
        files: Mapping[str, str] | None = None,
    ) -> Path:
        directory = tmp_path / f"set{next(_counter)}"
        directory.mkdir()
        (directory / "policy.yaml").write_text(_text(policy, MINI_POLICY), encoding="utf-8")
        (directory / "catalog.yaml").write_text(_text(catalog, MINI_CATALOG), encoding="utf-8")
        (directory / "decisions.py").write_text(_text(decisions, MINI_DECISIONS), encoding="utf-8")
        for name, text in (files or {}).items():
            (directory / name).write_text(text, encoding="utf-8")
        return directory / "policy.yaml"

    return write


@pytest.fixture
def reset_refunds() -> Iterable[None]:
    """Forget refunds issued by the example's decision module before and after a test."""
    refunded = _refunded_set()
    refunded.clear()
    yield
    refunded.clear()


def _refunded_set() -> set[str]:
    agent = load_agent(REFUND_POLICY, backend=ScriptedBackend(), audit=MemorySink())
    refunded: set[str] = agent.compiled.functions["issue_refund"].__globals__["_REFUNDED"]
    return refunded


@pytest.fixture
def refund_agent(reset_refunds: None) -> Callable[..., Agent]:
    """Return a factory of refund agents: ``make(script, **scripted_backend_options)``.

    Agents write audit events to a `MemorySink` (``agent.audit.events``); the backend is a
    `ScriptedBackend` whose ``requests`` list shows every model call.
    """

    def make(script: Mapping[str, str] | Iterable[str] = (), **options: object) -> Agent:
        backend = ScriptedBackend(script, **options)  # type: ignore[arg-type]
        return load_agent(REFUND_POLICY, backend=backend, audit=MemorySink())

    return make


class FixedBackend:
    """Answers every classification with one label and one score."""

    name = "fixed"

    def __init__(self, intent: str, score: float) -> None:
        self.intent = intent
        self.score = score

    def classify(self, request: ClassifyRequest) -> Classification:
        return Classification(self.intent, self.score, {self.intent: self.score}, {}, Usage(1))

    def choose(self, request: ChooseRequest) -> Choice:
        return Choice(request.options[0].name, 1.0, Usage(1))


# --- a private redis-server for the store and service tests -----------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a redis-server of our own on a free port (AOF on); yield its URL; stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run must install it")
        pytest.skip(f"REDIS TESTS SKIPPED: {message}")
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--save", "", "--appendonly", "yes", "--protected-mode", "yes",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
