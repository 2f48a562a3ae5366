"""Audit step: one structured event per turn, written through structlog to a sink.

A sink is anything with ``emit(event)``. `StructlogSink` (the default) hands events to the
application's structlog configuration under the logger name ``sopagent.audit``;
`JsonLinesSink` writes them as JSON lines to a file; `MemorySink` keeps them in a list.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["AuditSink", "JsonLinesSink", "MemorySink", "StructlogSink"]


class AuditSink(Protocol):
    """Where audit events go."""

    def emit(self, event: Mapping[str, Any]) -> None:
        """Record one event; must not raise for ordinary I/O hiccups of the caller's turn."""
        ...


class StructlogSink:
    """Send events to structlog's configured pipeline (``structlog.get_logger``)."""

    def __init__(self, name: str = "sopagent.audit") -> None:
        import structlog  # noqa: PLC0415 (imported when a sink is made, not with sopagent)

        self._log = structlog.get_logger(name)

    def emit(self, event: Mapping[str, Any]) -> None:
        """Log the event as ``turn`` with its fields as key/values."""
        self._log.info("turn", **event)


class JsonLinesSink:
    """Append events to a file as JSON lines, one per turn, flushed at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        import structlog  # noqa: PLC0415 (imported when a sink is made, not with sopagent)

        self._log = structlog.wrap_logger(
            structlog.WriteLogger(self._file),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=False, default=str),
            ],
        )

    def emit(self, event: Mapping[str, Any]) -> None:
        """Write the event as one JSON line."""
        with self._lock:
            self._log.info("turn", **event)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


class MemorySink:
    """Keep events in ``events``, for tests and the REPL."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Mapping[str, Any]) -> None:
        """Append a copy of the event."""
        self.events.append(dict(event))


class NullSink:
    """Drop events."""

    def emit(self, event: Mapping[str, Any]) -> None:
        """Do nothing."""
