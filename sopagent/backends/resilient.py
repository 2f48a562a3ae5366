"""A backend that retries, times out and stops calling a backend that keeps failing.

``resilient(backend)`` wraps any `Backend` and answers under the wrapped backend's ``name``, so
turns and audit events still name the provider. Each call goes through three guards:

* **Retries.** A `BackendError` with ``retryable=True`` is tried again up to ``retries`` times,
  waiting ``backoff * 2**n`` seconds (at most ``max_backoff``, minus up to ``jitter`` of it at
  random) before retry ``n``; longer when a `BackendUnavailable` carries the provider's
  ``Retry-After``, which is waited for up to ``max_backoff``. Other errors are raised at once.
* **Timeout.** With ``timeout`` set, each attempt runs in a worker thread and a `BackendTimeout`
  (retryable) is raised when it takes longer. The underlying call is *not* cancelled: Python
  cannot stop a thread, so it runs on and its late result or error is discarded.
* **Circuit breaker.** After ``breaker_failures`` consecutive failed calls (each counted once,
  after its retries) the circuit opens: for ``breaker_reset`` seconds every call fails at once
  with `BackendUnavailable` (not retryable) without touching the backend. Then it is half-open:
  the next call is a single trial attempt (no retries) while other calls keep failing fast;
  success closes the circuit, failure opens it again for another ``breaker_reset`` seconds.

A `BackendAnswerError` (refusal, off-schema answer) shows that the backend is reachable, so it
counts as a success for the breaker, although it is still raised. An exception that is not a
`BackendError` becomes a non-retryable `BackendError` raised from it.

The agent turns whatever error is finally raised into the policy's error line and keeps the
session unchanged, as for any backend.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Literal, TypeVar

from sopagent.backends import (
    Backend,
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
)
from sopagent.errors import BackendAnswerError, BackendError, BackendTimeout, BackendUnavailable

__all__ = ["CircuitState", "ResilientBackend", "resilient"]

CircuitState = Literal["closed", "open", "half_open"]
_T = TypeVar("_T")


class ResilientBackend:
    """Retry, time out and circuit-break the calls of ``backend``.

    Thread-safe: the breaker's state is guarded by a lock, and waits happen outside it. With a
    ``timeout`` the attempts of all threads run one at a time in the wrapper's single worker
    thread (time spent queued counts against the timeout); after a timeout the stuck worker is
    abandoned and a fresh one serves later calls. Call `close` (or use ``with``) when done.

    Args:
        backend: the backend to protect.
        retries: how many times a retryable failure is tried again (0 disables retries).
        backoff: the wait before the first retry, in seconds; it doubles on each retry.
        max_backoff: the longest wait between two attempts, in seconds.
        timeout: the longest one attempt may take, in seconds; ``None`` waits as long as it takes.
        breaker_failures: consecutive failed calls that open the circuit.
        breaker_reset: how long the circuit stays open before a trial call, in seconds.
        clock: monotonic time in seconds, for the breaker.
        sleep: waits between retries.
        jitter: the largest fraction, in [0, 1], taken off a wait at random.
        seed: seeds the random generator of the jitter.

    Attributes:
        name: the wrapped backend's name.
        backend: the wrapped backend.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        retries: int = 2,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        timeout: float | None = None,
        breaker_failures: int = 5,
        breaker_reset: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        jitter: float = 0.1,
        seed: int | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries {retries} is negative")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff {backoff} and max_backoff {max_backoff} must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout {timeout} is not positive")
        if breaker_failures < 1:
            raise ValueError(f"breaker_failures {breaker_failures} is below 1")
        if breaker_reset < 0:
            raise ValueError(f"breaker_reset {breaker_reset} is negative")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter {jitter} is not in [0, 1]")
        self.backend = backend
        self.name: str = backend.name
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.breaker_failures = breaker_failures
        self.breaker_reset = breaker_reset
        self.jitter = jitter
        self._clock = clock
        self._sleep = sleep
        self._random = random.Random(seed)  # jitter, not cryptography
        self._lock = threading.Lock()
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # --- the Backend protocol -----------------------------------------------------------------

    def classify(self, request: ClassifyRequest) -> Classification:
        """Classify with the wrapped backend, retrying and circuit-breaking."""
        return self._call(lambda: self.backend.classify(request))

    def choose(self, request: ChooseRequest) -> Choice:
        """Choose with the wrapped backend, retrying and circuit-breaking."""
        return self._call(lambda: self.backend.choose(request))

    # --- the breaker, seen from outside -------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """``"closed"``, ``"open"``, or ``"half_open"`` once ``breaker_reset`` has passed."""
        with self._lock:
            self._refresh()
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive failed calls so far (reset by a success)."""
        with self._lock:
            return self._failures

    def warm(self, vocabulary: tuple[Label, ...], key: str = "") -> None:
        """Let the wrapped backend evaluate its prompt early, when it can."""
        warm = getattr(self.backend, "warm", None)
        if callable(warm):
            warm(vocabulary, key)

    def close(self) -> None:
        """Shut the worker thread down; later calls fail. A running call is not waited for."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ResilientBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------

    def _call(self, call: Callable[[], _T]) -> _T:
        trial = self._admit()
        try:
            result = self._attempt(call) if trial else self._retrying(call)
        except BackendAnswerError:
            self._succeeded()  # the backend answered: it is reachable
            raise
        except BackendError:
            self._failed()
            raise
        except BaseException:
            if trial:
                self._release()
            raise
        self._succeeded()
        return result

    def _retrying(self, call: Callable[[], _T]) -> _T:
        for retry in range(self.retries + 1):
            try:
                return self._attempt(call)
            except BackendError as exc:
                if not exc.retryable or retry == self.retries:
                    raise
                wait = self._delay(retry)
                asked = getattr(exc, "retry_after", None)
                if asked is not None:
                    # The provider's Retry-After, within the cap on any one wait.
                    wait = max(wait, min(asked, self.max_backoff))
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, retry: int) -> float:
        wait = min(self.max_backoff, self.backoff * 2.0 ** min(retry, 64))
        return wait * (1.0 - self.jitter * self._random.random())

    def _attempt(self, call: Callable[[], _T]) -> _T:
        try:
            if self.timeout is None:
                return call()
            return self._timed(call, self.timeout)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"{type(exc).__name__}: {exc}", provider=self.name, retryable=False
            ) from exc

    def _timed(self, call: Callable[[], _T], timeout: float) -> _T:
        with self._lock:
            if self._closed:
                raise BackendUnavailable(f"{self.name} backend is closed", provider=self.name)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"resilient-{self.name}"
                )
            executor = self._executor
            future: Future[_T] = executor.submit(call)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            if not future.cancel():
                # The worker is stuck in this call: leave it to finish alone (its result is
                # discarded) and give later calls a fresh worker.
                with self._lock:
                    if self._executor is executor:
                        self._executor = None
                executor.shutdown(wait=False)
            raise BackendTimeout(
                f"no answer within {timeout} s", provider=self.name, retryable=True
            ) from None

    def _refresh(self) -> None:
        """Move an open circuit to half-open once ``breaker_reset`` has passed (lock held)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.breaker_reset:
            self._state = "half_open"

    def _admit(self) -> bool:
        """Fail fast when the circuit is open; return whether this call is the trial call."""
        with self._lock:
            if self._closed:
                raise BackendUnavailable(f"{self.name} backend is closed", provider=self.name)
            self._refresh()
            if self._state == "closed":
                return False
            if self._state == "half_open" and not self._trial_running:
                self._trial_running = True
                return True
            if self._state == "open":
                left = self.breaker_reset - (self._clock() - self._opened_at)
                why = f"after {self._failures} consecutive failures; next try in {left:.1f} s"
            else:
                why = "while a trial call runs"
            raise BackendUnavailable(f"circuit open {why}", provider=self.name, retryable=False)

    def _succeeded(self) -> None:
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._trial_running = False

    def _failed(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._state == "half_open" or self._failures >= self.breaker_failures:
                self._state = "open"
                self._opened_at = self._clock()

    def _release(self) -> None:
        """Let another call be the trial after this one ended without a verdict."""
        with self._lock:
            self._trial_running = False


def resilient(
    backend: Backend,
    *,
    retries: int = 2,
    backoff: float = 0.2,
    max_backoff: float = 2.0,
    timeout: float | None = None,
    breaker_failures: int = 5,
    breaker_reset: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    jitter: float = 0.1,
    seed: int | None = None,
) -> ResilientBackend:
    """Return ``backend`` with bounded retries, an optional timeout and a circuit breaker.

    See `ResilientBackend` for the arguments.
    """
    return ResilientBackend(
        backend,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        timeout=timeout,
        breaker_failures=breaker_failures,
        breaker_reset=breaker_reset,
        clock=clock,
        sleep=sleep,
        jitter=jitter,
        seed=seed,
    )
