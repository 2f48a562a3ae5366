"""Limits of one turn: the longest message, hidden characters, the longest decision run.

User text is first made encodable: lone surrogates, which JSON can carry but UTF-8 cannot,
become U+FFFD, so sessions and audit events can always be written. It may also hold control
and bidirectional-formatting characters (pasted text, spoofing attempts: U+202E turns the rest
of a line around on screen). They carry nothing an intent or a
slot value needs, so they are removed before slot grammars and the model see the text; the
turn keeps what was received, and audit events write those characters as ``\\uXXXX`` escapes so
a log viewer shows them instead of obeying them.

A decision function with a time limit runs on a worker thread while the turn waits for it. Python
cannot stop a thread: a call past its limit is abandoned, its thread left to finish on its own
and its result thrown away (anything it does meanwhile, such as a write, still happens). At most
`MAX_ABANDONED` abandoned calls per agent may be running at once; past that, limited decisions
fail at once instead of starting more threads that may never end.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "MAX_ABANDONED",
    "DecisionRunner",
    "DecisionTimeoutError",
    "encodable",
    "escape_hidden",
    "received",
    "visible",
]

MAX_ABANDONED = 4

# C0 and C1 controls, and the format characters (Unicode category Cf) people can type or paste:
# soft hyphen, Arabic and Syriac marks, zero-width characters, bidirectional embeddings,
# overrides and isolates, invisible operators, the byte-order mark, interlinear annotation and tags.
_CONTROL = "\x00-\x1f\x7f-\x9f"
_FORMAT = (
    "\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_HIDDEN = re.compile(f"[{_CONTROL}{_FORMAT}]")
_SPACING = re.compile(f"[{_CONTROL}]")


_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """``text`` with lone surrogates (JSON can carry them, UTF-8 cannot) replaced by U+FFFD.

    Sessions and audit events are UTF-8 JSON; a message that cannot be written there would
    make the session unsaveable after the turn.
    """
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


_SUSPECT = re.compile(f"[{_CONTROL}{_FORMAT}\ud800-\udfff]")


def received(text: str) -> tuple[str, str]:
    """``(encodable(text), visible(encodable(text)))``, with one scan for ordinary text."""
    # Every character these patterns match is non-printable (a control, format or surrogate
    # code point), so text that is all printable needs no regex scan (the usual case).
    if text.isprintable() or _SUSPECT.search(text) is None:
        return text, text
    kept = encodable(text)
    return kept, visible(kept)


def visible(text: str) -> str:
    """``text`` without hidden characters: controls become spaces, format characters go."""
    if text.isprintable() or _HIDDEN.search(text) is None:
        return text
    return _HIDDEN.sub(lambda m: " " if _SPACING.match(m.group()) else "", text)


def escape_hidden(text: str) -> str:
    """``text`` with every hidden character written as a ``\\uXXXX`` (or ``\\UXXXXXXXX``) escape."""
    if text.isprintable() or _HIDDEN.search(text) is None:
        return text
    return _HIDDEN.sub(
        lambda m: (
            f"\\u{ord(m.group()):04x}" if ord(m.group()) <= 0xFFFF else f"\\U{ord(m.group()):08x}"
        ),
        text,
    )


class DecisionTimeoutError(Exception):
    """A decision function ran past its limit, or too many earlier calls still hang."""


_Job = tuple[Callable[[Any], Any], Any, "queue.SimpleQueue[tuple[bool, Any]]"]


class _Worker:
    """A daemon thread that runs one job at a time from its own queue."""

    def __init__(self, runner: DecisionRunner) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.abandoned = False
        self._runner = runner
        self.thread = threading.Thread(target=self._loop, name="sopagent-decision", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            function, argument, answer = job
            try:
                answer.put((True, function(argument)))
            except BaseException as exc:
                answer.put((False, exc))
            if not self._runner.returned(self):
                return


class DecisionRunner:
    """Runs decision calls on worker threads and waits for each at most ``seconds``.

    Args:
        seconds: the limit of one call.
        max_abandoned: how many abandoned calls may still be running before limited calls
            are refused.
    """

    def __init__(self, seconds: float, max_abandoned: int = MAX_ABANDONED) -> None:
        self.seconds = seconds
        self.max_abandoned = max_abandoned
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._hung = 0

    @property
    def hung(self) -> int:
        """Abandoned calls still running."""
        return self._hung

    def call(self, function: Callable[[Any], Any], argument: Any) -> Any:
        """Return ``function(argument)``, or raise what it raised.

        Raises:
            DecisionTimeoutError: it did not return within the limit (it is abandoned), or too
                many abandoned calls are still running to start another.
        """
        with self._lock:
            if self._hung >= self.max_abandoned:
                raise DecisionTimeoutError(
                    f"{self._hung} earlier decision calls past their limit are still running"
                )
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
        answer: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        worker.jobs.put((function, argument, answer))
        try:
            ok, value = answer.get(timeout=self.seconds)
        except queue.Empty:
            with self._lock:
                # The worker may have finished just now; if it did, it is idle again.
                if worker in self._idle:
                    self._idle.remove(worker)
                    worker.jobs.put(None)
                else:
                    worker.abandoned = True
                    self._hung += 1
            raise DecisionTimeoutError(
                f"ran longer than {self.seconds:g} s and was abandoned"
                " (Python cannot stop a thread)"
            ) from None
        if not ok:
            raise value
        return value

    def returned(self, worker: _Worker) -> bool:
        """Called by a worker whose job ended: whether it should wait for another."""
        with self._lock:
            if worker.abandoned:
                self._hung -= 1
                return False
            self._idle.append(worker)
            return True
