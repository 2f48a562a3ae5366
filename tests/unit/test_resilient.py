"""The resilient backend: bounded retries with backoff, a timeout and a circuit breaker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import REFUND_POLICY, FixedBackend

import sopagent
from sopagent.backends import (
    Backend,
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.backends.resilient import resilient
from sopagent.errors import (
    BackendAnswerError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
)

REQUEST = ClassifyRequest(text="hm", labels=(Label("stop", "stop"), Label("out_of_scope", "x")))
CHOOSE = ChooseRequest(text="hm", options=(Label("bye", "Bye."),))


class Clock:
    """A fake monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Sleeps(list[float]):
    """A fake ``sleep`` that records how long it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Scripted:
    """Fails with the queued errors first, then answers ``stop``; counts its calls."""

    name = "flaky"

    def __init__(self, *errors: Exception, forever: Exception | None = None) -> None:
        self.errors = list(errors)
        self.forever = forever
        self.calls = 0

    def classify(self, request: ClassifyRequest) -> Classification:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever
        return Classification("stop", 0.9, {"stop": 0.9}, {}, Usage(1))

    def choose(self, request: ChooseRequest) -> Choice:
        self.calls += 1
        if self.forever is not None:
            raise self.forever
        return Choice(request.options[0].name, 1.0, Usage(1))


class Blocking:
    """Answers only once ``release`` is set, like a server that hangs."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def classify(self, request: ClassifyRequest) -> Classification:
        self.entered.set()
        self.release.wait(5.0)
        return Classification("stop", 0.9)

    def choose(self, request: ChooseRequest) -> Choice:
        self.release.wait(5.0)
        return Choice(request.options[0].name, 1.0)


def retryable() -> BackendError:
    return BackendError("HTTP 503", provider="flaky", retryable=True)


def fake(backend: Backend, **options: Any) -> Any:
    """The backend wrapped with a fake clock and sleep, returned with them."""
    clock, sleeps = Clock(), Sleeps()
    wrapped = resilient(backend, clock=clock, sleep=sleeps, **options)
    return wrapped, clock, sleeps


def test_answers_under_the_wrapped_backends_name() -> None:
    """The wrapper is a Backend named like the backend it wraps."""
    wrapped = resilient(FixedBackend("stop", 0.8))
    assert isinstance(wrapped, Backend)
    assert wrapped.name == "fixed"
    assert wrapped.classify(REQUEST).intent == "stop"
    assert wrapped.choose(CHOOSE).response == "bye"
    assert (wrapped.state, wrapped.failures) == ("closed", 0)


def test_retryable_failures_are_retried_until_an_answer() -> None:
    """Two retryable failures then an answer: the call succeeds after two waits."""
    backend = Scripted(retryable(), retryable())
    wrapped, _, sleeps = fake(backend, retries=2, jitter=0.0)
    assert wrapped.classify(REQUEST).intent == "stop"
    assert backend.calls == 3
    assert sleeps == [0.2, 0.4]
    assert wrapped.failures == 0


def test_retries_are_bounded_and_backoff_doubles_up_to_its_cap() -> None:
    """Retries stop after ``retries``; waits double from ``backoff`` and stop at ``max_backoff``."""
    backend = Scripted(forever=retryable())
    wrapped, _, sleeps = fake(backend, retries=5, backoff=0.2, max_backoff=1.0, jitter=0.0)
    with pytest.raises(BackendError, match="HTTP 503"):
        wrapped.classify(REQUEST)
    assert backend.calls == 6
    assert sleeps == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])


def test_a_providers_retry_after_is_waited_for_up_to_the_cap() -> None:
    """A 429's Retry-After lengthens the wait before the retry, never past ``max_backoff``."""
    asked = [
        BackendUnavailable("HTTP 429", provider="flaky", retryable=True, retry_after=seconds)
        for seconds in (0.7, 30.0, 0.01)
    ]
    backend = Scripted(*asked)
    wrapped, _, sleeps = fake(backend, retries=3, backoff=0.2, max_backoff=2.0, jitter=0.0)
    assert wrapped.classify(REQUEST).intent == "stop"
    assert sleeps == pytest.approx([0.7, 2.0, 0.8])


def test_jitter_shortens_waits_reproducibly_with_a_seed() -> None:
    """With jitter each wait lies in [(1 - jitter) * base, base], the same for the same seed."""
    runs = []
    for _ in range(2):
        wrapped, _, sleeps = fake(Scripted(forever=retryable()), retries=4, jitter=0.25, seed=7)
        with pytest.raises(BackendError):
            wrapped.classify(REQUEST)
        runs.append(list(sleeps))
    assert runs[0] == runs[1]
    for wait, base in zip(runs[0], [0.2, 0.4, 0.8, 1.6], strict=True):
        assert 0.75 * base <= wait <= base
    assert runs[0] == sorted(runs[0])


def test_non_retryable_errors_are_raised_at_once() -> None:
    """A BackendError that is not retryable reaches the caller after one call and no wait."""
    error = BackendError("the model refused", provider="flaky")
    backend = Scripted(forever=error)
    wrapped, _, sleeps = fake(backend, retries=3)
    with pytest.raises(BackendError) as raised:
        wrapped.classify(REQUEST)
    assert raised.value is error
    assert backend.calls == 1
    assert sleeps == []


def test_other_exceptions_become_non_retryable_backend_errors() -> None:
    """A crash of the wrapped backend becomes a BackendError raised from it, not retried."""
    crash = KeyError("choices")
    backend = Scripted(forever=crash)
    wrapped, _, sleeps = fake(backend, retries=3)
    with pytest.raises(BackendError, match="KeyError") as raised:
        wrapped.choose(CHOOSE)
    assert (raised.value.provider, raised.value.retryable) == ("flaky", False)
    assert raised.value.__cause__ is crash
    assert (backend.calls, sleeps) == (1, [])


def test_slow_call_raises_backend_timeout() -> None:
    """A call that outlasts ``timeout`` raises a retryable BackendTimeout; later calls work."""
    backend = Blocking()
    wrapped, _, _ = fake(backend, timeout=0.05, retries=0)
    try:
        with pytest.raises(BackendTimeout, match=r"0\.05 s") as raised:
            wrapped.classify(REQUEST)
        assert raised.value.retryable
        assert raised.value.provider == "blocking"
        assert isinstance(raised.value, BackendError)
        backend.release.set()
        assert wrapped.classify(REQUEST).intent == "stop"
    finally:
        backend.release.set()
        wrapped.close()


def test_timed_out_attempts_are_retried() -> None:
    """A timeout is retryable, so it is tried again after a wait."""
    backend = Blocking()
    wrapped, _, sleeps = fake(backend, timeout=0.05, retries=1, jitter=0.0)
    try:
        with pytest.raises(BackendTimeout):
            wrapped.classify(REQUEST)
        assert sleeps == [0.2]
    finally:
        backend.release.set()
        wrapped.close()


def test_closed_wrapper_refuses_calls() -> None:
    """After `close` calls fail with BackendUnavailable."""
    with resilient(FixedBackend("stop", 0.8), timeout=1.0) as wrapped:
        assert wrapped.classify(REQUEST).intent == "stop"
    with pytest.raises(BackendUnavailable, match="closed"):
        wrapped.classify(REQUEST)


def test_breaker_opens_after_consecutive_failures_and_fails_fast() -> None:
    """After ``breaker_failures`` failed calls the backend is no longer called."""
    backend = Scripted(forever=retryable())
    wrapped, _, sleeps = fake(backend, retries=1, breaker_failures=3, jitter=0.0)
    for count in (1, 2):
        with pytest.raises(BackendError):
            wrapped.classify(REQUEST)
        assert (wrapped.state, wrapped.failures) == ("closed", count)
    with pytest.raises(BackendError):
        wrapped.classify(REQUEST)
    assert (wrapped.state, wrapped.failures, backend.calls) == ("open", 3, 6)
    with pytest.raises(BackendUnavailable, match="circuit open") as raised:
        wrapped.classify(REQUEST)
    with pytest.raises(BackendUnavailable):
        wrapped.choose(CHOOSE)
    assert not raised.value.retryable
    assert raised.value.provider == "flaky"
    assert backend.calls == 6
    assert len(sleeps) == 3


def test_success_resets_the_count_of_consecutive_failures() -> None:
    """Failures must be consecutive: an answer in between starts the count again."""
    backend = Scripted(retryable(), retryable(), retryable())
    wrapped, _, _ = fake(backend, retries=0, breaker_failures=3)
    for _ in range(2):
        with pytest.raises(BackendError):
            wrapped.classify(REQUEST)
    assert wrapped.failures == 2
    with pytest.raises(BackendError):
        wrapped.classify(REQUEST)
    assert wrapped.state == "open"
    fresh = Scripted(retryable(), retryable())
    wrapped, _, _ = fake(fresh, retries=0, breaker_failures=3)
    for _ in range(2):
        with pytest.raises(BackendError):
            wrapped.classify(REQUEST)
    wrapped.classify(REQUEST)
    assert (wrapped.state, wrapped.failures) == ("closed", 0)


def test_breaker_half_opens_after_reset_and_closes_on_success() -> None:
    """Once ``breaker_reset`` has passed one trial call is let through; success closes it."""
    backend = Scripted(retryable(), retryable())
    wrapped, clock, _ = fake(backend, retries=0, breaker_failures=2, breaker_reset=30.0)
    for _ in range(2):
        with pytest.raises(BackendError):
            wrapped.classify(REQUEST)
    clock.now += 29.9
    assert wrapped.state == "open"
    with pytest.raises(BackendUnavailable):
        wrapped.classify(REQUEST)
    clock.now += 0.1
    assert wrapped.state == "half_open"
    assert wrapped.classify(REQUEST).intent == "stop"
    assert (wrapped.state, wrapped.failures, backend.calls) == ("closed", 0, 3)


def test_failed_trial_reopens_the_circuit_without_retries() -> None:
    """A failed trial is one attempt, and the circuit stays open for another full reset."""
    backend = Scripted(forever=retryable())
    wrapped, clock, _ = fake(backend, retries=2, breaker_failures=1, breaker_reset=10.0)
    with pytest.raises(BackendError):
        wrapped.classify(REQUEST)
    assert (wrapped.state, backend.calls) == ("open", 3)
    clock.now += 10.0
    with pytest.raises(BackendError, match="HTTP 503"):
        wrapped.classify(REQUEST)
    assert (wrapped.state, backend.calls) == ("open", 4)
    clock.now += 9.0
    with pytest.raises(BackendUnavailable):
        wrapped.classify(REQUEST)
    clock.now += 1.0
    assert wrapped.state == "half_open"
    backend.forever = None
    assert wrapped.classify(REQUEST).intent == "stop"
    assert wrapped.state == "closed"


def test_only_one_trial_call_runs_while_half_open() -> None:
    """While the trial call runs, other calls fail fast instead of reaching the backend."""
    backend = Blocking()
    wrapped, clock, _ = fake(backend, retries=0, breaker_failures=1, breaker_reset=1.0)
    wrapped.backend = Scripted(forever=retryable())
    with pytest.raises(BackendError):
        wrapped.classify(REQUEST)
    wrapped.backend = backend
    clock.now += 1.0
    trial = threading.Thread(target=wrapped.classify, args=(REQUEST,))
    trial.start()
    try:
        assert backend.entered.wait(5.0)
        with pytest.raises(BackendUnavailable, match="trial"):
            wrapped.classify(REQUEST)
    finally:
        backend.release.set()
        trial.join(5.0)
    assert wrapped.state == "closed"


def test_answer_errors_do_not_open_the_circuit() -> None:
    """A refusal or off-schema answer shows the backend is reachable: it is not a failure."""
    backend = Scripted(forever=BackendAnswerError("refused", provider="flaky"))
    wrapped, _, _ = fake(backend, breaker_failures=1)
    for _ in range(3):
        with pytest.raises(BackendAnswerError):
            wrapped.classify(REQUEST)
    assert (wrapped.state, wrapped.failures, backend.calls) == ("closed", 0, 3)


@pytest.mark.parametrize(
    "options",
    [
        {"retries": -1},
        {"backoff": -0.1},
        {"timeout": 0.0},
        {"breaker_failures": 0},
        {"breaker_reset": -1.0},
        {"jitter": 1.5},
    ],
)
def test_nonsense_settings_are_rejected(options: dict[str, Any]) -> None:
    """Negative retries or waits, a zero timeout or breaker size, or odd jitter are refused."""
    with pytest.raises(ValueError, match=next(iter(options))):
        resilient(FixedBackend("stop", 0.8), **options)


def test_new_errors_are_backend_errors() -> None:
    """The three kinds of backend failure are BackendErrors and keep its signature."""
    for kind in (BackendTimeout, BackendUnavailable, BackendAnswerError):
        error = kind("x", provider="p", retryable=True)
        assert isinstance(error, BackendError)
        assert (error.provider, error.retryable, str(error)) == ("p", True, "x")


def test_agent_says_the_error_line_and_stops_calling_an_open_circuit(
    reset_refunds: None,
) -> None:
    """Through the agent a failing backend gives technical_issue; once open it is not called."""
    backend = Scripted(forever=retryable())
    wrapped, _, sleeps = fake(backend, retries=1, breaker_failures=2, jitter=0.0)
    sink = sopagent.MemorySink()
    agent = sopagent.load_agent(REFUND_POLICY, backend=wrapped, audit=sink)
    session = agent.new_session()
    agent.start(session)
    before = (session.state, dict(session.slots), dict(session.facts), session.ended)
    calls = []
    for text in ("my parcel arrived broken, I want my money back", "hmm, hello?", "anyone?"):
        turn = agent.respond(session, text)
        assert turn.response_ids == ("technical_issue",)
        assert turn.error is not None
        assert turn.error.startswith("Backend")
        assert turn.state_before == turn.state_after == "greeting"
        assert (session.state, dict(session.slots), dict(session.facts), session.ended) == before
        calls.append(backend.calls)
    assert calls == [2, 4, 4]
    assert wrapped.state == "open"
    assert "circuit open" in (turn.error or "")
    assert turn.error.startswith("BackendUnavailable")
    assert sink.events[-1]["backend"] == "flaky"
    assert len(sleeps) == 2
