"""Handoff events: a conversation entered a handoff state and waits for a person.

An event carries the session's id, tenant, policy, the state it stopped in and the whole
transcript. It is sent after the turn that caused it is stored, through one `HandoffSink`:
a webhook (JSON POST, retried with backoff in a background thread) or a Redis stream (XADD).
The store remains the source of truth: ``GET /v1/handoffs`` lists every session waiting for a
person, including one whose event could not be delivered.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sopagent.errors import StoreError

if TYPE_CHECKING:
    import redis

__all__ = ["HandoffSink", "NullHandoff", "RedisStreamHandoff", "WebhookHandoff"]


class HandoffSink(Protocol):
    """Where handoff events go."""

    def send(self, event: Mapping[str, Any]) -> None:
        """Deliver (or queue) one event; must not raise for delivery failures."""
        ...

    def close(self) -> None:
        """Deliver what is queued, within a short grace period, and stop."""
        ...


class NullHandoff:
    """Send nothing: sessions are still marked and listed by ``GET /v1/handoffs``."""

    def send(self, event: Mapping[str, Any]) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


class WebhookHandoff:
    """POST each event as JSON to a URL, from a background thread, with bounded retries.

    Args:
        url: the webhook (``http://`` or ``https://``).
        retries: further attempts after a failure (connection error or a non-2xx answer).
        timeout: seconds per attempt.
        on_failure: called with the event and the last error when every attempt failed.
        headers: extra request headers (e.g. an authorization token for the receiver).
    """

    def __init__(
        self,
        url: str,
        *,
        retries: int = 4,
        timeout: float = 5.0,
        on_failure: Callable[[Mapping[str, Any], str], None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a webhook URL starts with http:// or https://, not {url!r}")
        self.url = url
        self.retries = retries
        self.timeout = timeout
        self._on_failure = on_failure
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._run, name="sopagent-handoff", daemon=True)
        self._thread.start()

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue the event for delivery."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._failed(event, "the delivery queue is full")

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._deliver(event)

    def _deliver(self, event: Mapping[str, Any]) -> None:
        body = json.dumps(event, default=str).encode("utf-8")
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
            request = urllib.request.Request(self.url, data=body, headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                    if 200 <= answer.status < 300:
                        return
                    error = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        self._failed(event, error)

    def _failed(self, event: Mapping[str, Any], error: str) -> None:
        if self._on_failure is not None:
            self._on_failure(event, error)

    def close(self) -> None:
        """Stop after delivering what is queued (waits at most 10 seconds)."""
        self._queue.put(None)
        self._thread.join(timeout=10)


class RedisStreamHandoff:
    """Append each event to a Redis stream (``XADD``), capped at ``maxlen`` entries.

    The event is one stream entry with a single field ``event`` holding its JSON.

    Args:
        client: a redis-py client.
        stream: the stream's key.
        maxlen: approximate length cap of the stream.
        on_failure: called with the event and the error when Redis refuses it.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str = "sopagent:handoffs",
        *,
        maxlen: int = 100_000,
        on_failure: Callable[[Mapping[str, Any], str], None] | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self._on_failure = on_failure

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStreamHandoff:
        """Connect to ``redis://host:port/db``; a ``#name`` fragment names the stream."""
        try:
            import redis as redis_module  # noqa: PLC0415 (optional dependency: extra "redis")
        except ImportError as exc:
            raise StoreError(
                "a Redis handoff stream needs redis-py: pip install 'sopagent[redis]'"
            ) from exc
        address, _, stream = url.partition("#")
        client = redis_module.Redis.from_url(address, decode_responses=True)
        return cls(client, stream or "sopagent:handoffs", **options)

    def send(self, event: Mapping[str, Any]) -> None:
        """XADD the event."""
        try:
            self.client.xadd(
                self.stream,
                {"event": json.dumps(event, default=str)},
                maxlen=self.maxlen,
                approximate=True,
            )
        except Exception as exc:
            if self._on_failure is not None:
                self._on_failure(event, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Nothing is queued; the client belongs to the caller."""
