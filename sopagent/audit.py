"""Audit step: one structured event per turn, written through structlog to a sink.

A sink is anything with ``emit(event)``. `StructlogSink` (the default) hands events to the
application's structlog configuration under the logger name ``sopagent.audit``;
`JsonLinesSink` writes them as JSON lines to a file; `RotatingJsonLinesSink` does too and
rotates the file by size, for services; `MemorySink` keeps them in a list.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["AuditSink", "JsonLinesSink", "MemorySink", "RotatingJsonLinesSink", "StructlogSink"]


class AuditSink(Protocol):
    """Where audit events go."""

    def emit(self, event: Mapping[str, Any]) -> None:
        """Record one event; must not raise for ordinary I/O hiccups of the caller's turn.

        The event is the sink's to keep: sopagent builds a new one for every call and never
        reads or changes it afterwards.
        """
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


class RotatingJsonLinesSink:
    """Append events as JSON lines and rotate the file when it grows past ``max_bytes``.

    Lines have the shape `JsonLinesSink` writes (``event``, the fields, ``timestamp``). Each
    line is written whole with one ``write`` and flushed, so a crash loses at most the line
    being written and never mixes two. When the file is full it becomes ``FILE.1`` (``FILE.1``
    becomes ``FILE.2``, ... up to ``backups``; the oldest is deleted).

    Args:
        path: the file; its directory is created if missing.
        max_bytes: size at which the file is rotated.
        backups: how many rotated files to keep.
        fsync: also fsync after every line (survives power loss; slower).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 10,
        fsync: bool = False,
    ) -> None:
        if max_bytes < 1 or backups < 1:
            raise ValueError("max_bytes and backups must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._size = self._file.tell()

    def emit(self, event: Mapping[str, Any]) -> None:
        """Write the event (``event`` defaults to ``"turn"``) as one JSON line."""
        record = {"event": "turn", **event}
        record["timestamp"] = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        size = len(line.encode("utf-8"))
        with self._lock:
            if self._size and self._size + size > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            self._size += size

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("a", encoding="utf-8")
        self._size = 0

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()


class MemorySink:
    """Keep events in ``events``, for tests and the REPL."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Mapping[str, Any]) -> None:
        """Append the event (a dict as it is, any other mapping as a dict)."""
        self.events.append(event if type(event) is dict else dict(event))


class NullSink:
    """Drop events."""

    def emit(self, event: Mapping[str, Any]) -> None:
        """Do nothing."""
