"""The JSON-lines stdio protocol: game engines (Godot, Unity, Unreal) run NPCs as a child process.

The engine writes one JSON object per line to the process's standard input and reads one per
line from its standard output; nothing else is ever written there. The process hosts any
number of NPCs of one policy, each named by the engine. A turn that waits for the model runs on
a worker thread: the process keeps reading and answering other messages meanwhile, and writes
the turn when it is done. Messages and replies are documented in ``docs/npc.md``.
"""

from __future__ import annotations

import io
import json
import queue
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import IO, Any

from sopagent._agent import Agent
from sopagent._npc import Npc
from sopagent.errors import SessionError
from sopagent.policy import OUT_OF_SCOPE
from sopagent.session import Turn

__all__ = ["PROTOCOL", "describe", "serve", "turn_message"]

PROTOCOL = 1
_MAX_LINE = 1 << 20


class _RequestError(Exception):
    """A request the server answers with an error message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def turn_message(turn: Turn) -> dict[str, Any]:
    """What the engine needs of a turn: lines with their ids, effects, state, understanding."""
    return {
        "index": turn.index,
        "pending": turn.pending,
        "text": turn.text,
        "lines": [
            {"id": line.id, "text": line.text, "locale": line.locale} for line in turn.responses
        ],
        "effects": [{"name": effect.name, "args": effect.args} for effect in turn.effects],
        "state": turn.state_after,
        "state_before": turn.state_before,
        "intent": turn.intent,
        "score": turn.score,
        "source": turn.intent_source,
        "slots": turn.slots,
        "ended": turn.ended,
        "error": turn.error,
        "latency_ms": turn.latency_ms,
    }


def describe(agent: Agent) -> dict[str, Any]:
    """The ``ready`` message: the policy, its locales, intents, game state and effect schemas."""
    compiled = agent.compiled
    policy = compiled.policy
    return {
        "type": "ready",
        "protocol": PROTOCOL,
        "policy": compiled.name,
        "policy_hash": compiled.hash,
        "locales": [compiled.catalog.locale, *compiled.locales],
        "intents": [*policy.intents, OUT_OF_SCOPE],
        "facts": {
            name: spec.model_dump(exclude_defaults=True) for name, spec in policy.facts.items()
        },
        "effects": {
            name: {
                param: kind.model_dump(exclude_defaults=True) for param, kind in spec.params.items()
            }
            for name, spec in policy.effects.items()
        },
    }


@dataclass
class _Waiting:
    """A turn that missed its budget (or had none) and is written when done."""

    request: Any
    future: Future[Turn]


class _Server:
    def __init__(
        self, agent: Agent, out: IO[str], *, budget_ms: float | None, record: bool
    ) -> None:
        self.agent = agent
        self.out = out
        self.budget_ms = budget_ms
        self.record = record
        self.npcs: dict[str, Npc] = {}
        self.waiting: dict[str, _Waiting] = {}
        self.events: queue.Queue[tuple[str, Any, Any]] = queue.Queue()

    # -- output --------------------------------------------------------------------------------

    def write(self, message: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()

    def reply(self, request: Any, kind: str, **fields: Any) -> None:
        message: dict[str, Any] = {"type": kind}
        if request is not None:
            message["id"] = request
        message.update(fields)
        self.write(message)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, source: IO[str]) -> None:
        reader = threading.Thread(target=self.read, args=(source,), daemon=True)
        reader.start()
        self.write(describe(self.agent))
        ending = False
        while True:
            if ending and not self.waiting:
                break
            kind, first, second = self.events.get()
            if kind == "line":
                if ending:
                    continue
                ending = self.handle(first, second)
            elif kind == "done":
                self.finished(first, second)
            elif kind == "eof":
                ending = True
        self.reply(None, "bye")

    def read(self, source: IO[str]) -> None:
        try:
            for number, line in enumerate(source, start=1):
                if line.strip():
                    self.events.put(("line", number, line))
        except (OSError, ValueError) as exc:
            self.events.put(("line", 0, f"\0 input failed: {exc}"))
        finally:
            self.events.put(("eof", None, None))

    def handle(self, number: int, line: str) -> bool:
        """Answer one request line; return whether it asked the server to quit."""
        request_id: Any = None
        try:
            if len(line) > _MAX_LINE:
                raise _RequestError("bad_request", f"line {number} is longer than {_MAX_LINE}")
            try:
                message = json.loads(line)
            except ValueError as exc:
                raise _RequestError("bad_json", f"line {number}: {exc}") from None
            if not isinstance(message, dict):
                raise _RequestError("bad_request", f"line {number}: a request is a JSON object")
            request_id = message.get("id")
            op = message.get("op")
            handler = _OPS.get(op) if isinstance(op, str) else None
            if handler is None:
                known = ", ".join(sorted(_OPS))
                raise _RequestError("unknown_op", f"line {number}: op {op!r} is not one of {known}")
            return handler(self, request_id, message)
        except _RequestError as exc:
            self.reply(request_id, "error", code=exc.code, message=str(exc))
        except SessionError as exc:
            self.reply(request_id, "error", code="session", message=str(exc))
        except ValueError as exc:
            self.reply(request_id, "error", code="invalid", message=str(exc))
        except Exception as exc:  # one bad request must not stop every NPC
            self.reply(request_id, "error", code="internal", message=f"{type(exc).__name__}: {exc}")
        return False

    # -- helpers -------------------------------------------------------------------------------

    def npc(self, message: Mapping[str, Any]) -> tuple[str, Npc]:
        name = _string(message, "npc")
        found = self.npcs.get(name)
        if found is None:
            raise _RequestError("unknown_npc", f"no NPC {name!r}; spawn or load it first")
        return name, found

    def finished(self, name: str, future: Future[Turn]) -> None:
        waiting = self.waiting.get(name)
        npc = self.npcs.get(name)
        if waiting is None or waiting.future is not future or npc is None:
            return  # cancelled, despawned or replaced meanwhile
        del self.waiting[name]
        try:
            turn = npc.poll()
        except Exception as exc:  # the engine gets every failure as a message
            self.reply(waiting.request, "error", code="internal", npc=name, message=str(exc))
            return
        if turn is not None:
            self.reply(waiting.request, "turn", npc=name, turn=turn_message(turn))

    # -- operations ----------------------------------------------------------------------------

    def op_spawn(self, request: Any, message: Mapping[str, Any]) -> bool:
        name = _string(message, "npc")
        if name in self.npcs:
            raise _RequestError("npc_exists", f"NPC {name!r} exists; despawn it first")
        seed = message.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise _RequestError("bad_request", '"seed" must be an integer')
        npc = Npc(
            self.agent,
            facts=_mapping(message, "facts"),
            locale=_optional_string(message, "locale"),
            seed=seed,
            npc_id=name,
            record=bool(message.get("record", self.record)),
        )
        turn = npc.start()
        npc.warm()  # the first line of a new locale is no slower than the others
        self.npcs[name] = npc
        self.reply(request, "turn", npc=name, turn=turn_message(turn))
        return False

    def op_say(self, request: Any, message: Mapping[str, Any]) -> bool:
        started = time.perf_counter()
        name, npc = self.npc(message)
        if npc.pending:
            raise _RequestError("busy", f"NPC {name!r} is still answering; wait or cancel")
        text = _string(message, "text")
        intent = _optional_string(message, "intent")
        budget = message.get("budget_ms", self.budget_ms)
        if budget is not None and (
            not isinstance(budget, int | float) or isinstance(budget, bool) or budget < 0
        ):
            raise _RequestError("bad_request", '"budget_ms" must be a number >= 0')
        future = npc.submit(text, intent=intent, facts=_mapping(message, "facts"))
        if budget is not None:
            wait([future], timeout=budget / 1000)
            if not future.done():
                filler = npc._filler(text, started)
                self.reply(request, "pending", npc=name, turn=turn_message(filler))
        if future.done():
            turn = npc.poll()
            assert turn is not None
            self.reply(request, "turn", npc=name, turn=turn_message(turn))
            return False
        self.waiting[name] = _Waiting(request, future)
        future.add_done_callback(lambda done: self.events.put(("done", name, done)))
        return False

    def op_save(self, request: Any, message: Mapping[str, Any]) -> bool:
        name, npc = self.npc(message)
        self.reply(request, "saved", npc=name, pending=npc.pending, state=npc.save())
        return False

    def op_load(self, request: Any, message: Mapping[str, Any]) -> bool:
        name = _string(message, "npc")
        if name in self.npcs:
            raise _RequestError("npc_exists", f"NPC {name!r} exists; despawn it first")
        npc = Npc.load(
            self.agent,
            _string(message, "state"),
            record=bool(message.get("record", self.record)),
        )
        self.npcs[name] = npc
        session = npc.session
        self.reply(
            request,
            "loaded",
            npc=name,
            at=session.state,
            turns=session.turns,
            ended=session.ended,
        )
        return False

    def op_cancel(self, request: Any, message: Mapping[str, Any]) -> bool:
        name, npc = self.npc(message)
        self.waiting.pop(name, None)
        self.reply(request, "cancelled", npc=name, cancelled=npc.cancel())
        return False

    def op_despawn(self, request: Any, message: Mapping[str, Any]) -> bool:
        name, npc = self.npc(message)
        npc.cancel()
        self.waiting.pop(name, None)
        del self.npcs[name]
        self.reply(request, "despawned", npc=name)
        return False

    def op_recording(self, request: Any, message: Mapping[str, Any]) -> bool:
        name, npc = self.npc(message)
        recording = npc.recording
        if recording is None:
            raise _RequestError("not_recording", f"NPC {name!r} was spawned without record")
        self.reply(request, "recording", npc=name, recording=recording.to_jsonl())
        return False

    def op_list(self, request: Any, message: Mapping[str, Any]) -> bool:  # noqa: ARG002
        npcs = [
            {"npc": name, "at": n.session.state, "pending": n.pending, "ended": n.session.ended}
            for name, n in self.npcs.items()
        ]
        self.reply(request, "npcs", npcs=npcs)
        return False

    def op_ping(self, request: Any, message: Mapping[str, Any]) -> bool:  # noqa: ARG002
        self.reply(request, "pong")
        return False

    def op_quit(self, request: Any, message: Mapping[str, Any]) -> bool:  # noqa: ARG002
        return True


_OPS = {
    "cancel": _Server.op_cancel,
    "despawn": _Server.op_despawn,
    "list": _Server.op_list,
    "load": _Server.op_load,
    "ping": _Server.op_ping,
    "quit": _Server.op_quit,
    "recording": _Server.op_recording,
    "save": _Server.op_save,
    "say": _Server.op_say,
    "spawn": _Server.op_spawn,
}


def _string(message: Mapping[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise _RequestError("bad_request", f"{key!r} must be a non-empty string")
    return value


def _optional_string(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is not None and not isinstance(value, str):
        raise _RequestError("bad_request", f"{key!r} must be a string")
    return value


def _mapping(message: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = message.get(key)
    if value is not None and not isinstance(value, dict):
        raise _RequestError("bad_request", f"{key!r} must be an object")
    return value


def serve(
    agent: Agent,
    source: IO[str] | None = None,
    out: IO[str] | None = None,
    *,
    budget_ms: float | None = None,
    record: bool = False,
) -> None:
    """Serve the protocol until the input ends or a ``quit`` arrives; pending turns finish.

    Args:
        agent: the agent of the NPCs' policy.
        source: where requests come from; standard input by default.
        out: where replies go; standard output by default.
        budget_ms: the budget of ``say`` requests that give none; None waits for the turn.
        record: whether NPCs record their turns unless a spawn says otherwise.
    """
    if source is None:
        source = sys.stdin
        if isinstance(source, io.TextIOWrapper):
            # Bytes that are not UTF-8 become U+FFFD: the request is then bad JSON, not a crash.
            source.reconfigure(encoding="utf-8", errors="replace")
    if out is None:
        out = sys.stdout
        if isinstance(out, io.TextIOWrapper):
            out.reconfigure(encoding="utf-8", newline="\n")
    _Server(agent, out, budget_ms=budget_ms, record=record).run(source)
