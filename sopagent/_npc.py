"""Game NPCs: many characters on one compiled policy, a frame budget, save/load and replay.

An `Npc` is one character: a `Session` of a shared `Agent`. `Npc.step` advances it by one
player line. With ``budget_ms`` the turn runs on a worker thread; if it has not finished
within the budget, `step` returns at once with the policy's filler line (a `Turn` with
``pending=True``) and the real turn is collected later with `Npc.poll` (or awaited with
`Npc.finish`). `Npc.astep` awaits a turn without blocking an asyncio loop.

A pending turn runs on a copy of the session; the NPC's session changes only when the turn
is collected, on the thread that collects it. Until then the session is exactly the state
before the turn (a save made meanwhile holds that state), and the NPC takes no other line:
two turns of one NPC never interleave.

`save_state` writes the whole dialogue state as compact JSON and `load_state` restores it
field for field. A `Recording` keeps what each turn understood (labels and slot values, not
the model's output) and a digest of the state after it; `replay` runs it again without any
model call and reports the first turn whose state differs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sopagent._agent import Agent, Heard, _latency_ms, pick
from sopagent._compile import CompiledPolicy
from sopagent.audit import AuditSink, NullSink
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest
from sopagent.errors import BackendError, SessionError
from sopagent.policy import OUT_OF_SCOPE
from sopagent.session import Session, SessionTurn, SessionUsage, Turn, Utterance

__all__ = [
    "Npc",
    "RecordedTurn",
    "Recording",
    "Replay",
    "digest",
    "load_state",
    "replay",
    "save_state",
]

_FORMAT: Literal[1] = 1
_WORKERS = 4
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The shared worker threads of budgeted turns, started on first use."""
    global _POOL  # noqa: PLW0603 (one pool per process, made lazily)
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="sopagent-npc")
        return _POOL


# --- save and load ------------------------------------------------------------------------------


class _Saved(BaseModel):
    """The compact form of a session: defaults left out, history turns as arrays."""

    model_config = ConfigDict(extra="forbid")

    npc: Literal[1]
    policy: str
    hash: str
    id: str
    state: str
    seed: int
    started: bool = False
    ended: bool = False
    turns: int = Field(default=0, ge=0)
    locale: str | None = None
    slots: dict[str, Any] = Field(default_factory=dict)
    facts: dict[str, Any] = Field(default_factory=dict)
    history: list[tuple[str | None, str | None, str, str]] = Field(default_factory=list)
    usage: tuple[int, int, int, int] = (0, 0, 0, 0)


def save_state(session: Session) -> str:
    """Serialize the complete dialogue state as compact JSON.

    Everything is kept (machine state, slots, facts, history, seed, locale, usage); values
    equal to their defaults are left out and history turns are arrays, so a session of a few
    turns takes a few hundred bytes. `load_state` restores it exactly.
    """
    usage = session.usage
    saved = _Saved.model_construct(
        npc=_FORMAT,
        policy=session.policy,
        hash=session.policy_hash,
        id=session.id,
        state=session.state,
        seed=session.seed,
        started=session.started,
        ended=session.ended,
        turns=session.turns,
        locale=session.locale,
        slots=session.slots,
        facts=session.facts,
        history=[(h.user, h.intent, h.state, ",".join(h.responses)) for h in session.history],
        usage=(
            usage.model_calls,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        ),
    )
    return saved.model_dump_json(exclude_defaults=True)


def load_state(blob: str | bytes) -> Session:
    """Restore a session saved with `save_state`.

    Raises:
        SessionError: the blob is not a saved state.
    """
    try:
        saved = _Saved.model_validate_json(blob)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the state"
        if first["type"] == "json_invalid":
            raise SessionError(f"not a saved NPC state: invalid JSON ({first['msg']})") from None
        raise SessionError(f"not a saved NPC state: {where}: {first['msg']}") from None
    calls, prompt, completion, cached = saved.usage
    # Every value was validated with _Saved; the session is built as it is.
    return Session.model_construct(
        id=saved.id,
        policy=saved.policy,
        policy_hash=saved.hash,
        state=saved.state,
        started=saved.started,
        ended=saved.ended,
        turns=saved.turns,
        slots=saved.slots,
        facts=saved.facts,
        history=[
            SessionTurn.model_construct(
                user=user,
                intent=intent,
                state=state,
                responses=tuple(responses.split(",")) if responses else (),
            )
            for user, intent, state, responses in saved.history
        ],
        usage=SessionUsage.model_construct(
            model_calls=calls,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
        ),
        locale=saved.locale,
        seed=saved.seed,
    )


def digest(session: Session) -> str:
    """A hash of the dialogue state: what two peers compare to know they agree.

    It covers the policy, machine state, slots, facts, seed, locale, turn count and the
    remembered turns' intents, states and responses; not the player's texts and not what
    the model calls cost, which a replay from labels does not reproduce.
    """
    state = {
        "policy_hash": session.policy_hash,
        "state": session.state,
        "started": session.started,
        "ended": session.ended,
        "turns": session.turns,
        "slots": session.slots,
        "facts": session.facts,
        "seed": session.seed,
        "locale": session.locale,
        "history": [[h.intent, h.state, list(h.responses)] for h in session.history],
    }
    text = json.dumps(state, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _copy(session: Session) -> Session:
    """A copy a turn may change freely: the containers a turn mutates are new."""
    return session.model_copy(
        update={"history": list(session.history), "usage": session.usage.model_copy()}
    )


def _assign(target: Session, source: Session) -> None:
    for name in Session.model_fields:
        setattr(target, name, getattr(source, name))


# --- recordings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedTurn:
    """One recorded turn: what was understood, the game state given, the state's digest.

    Attributes:
        heard: what the turn understood; None for the opening turn and for a message to an
            ended conversation.
        opening: whether this is the opening turn (`Npc.start`).
        facts: the fact values the game passed in, in JSON form.
        digest: `digest` of the session after the turn.
        text: the player's text, when the recording keeps texts.
    """

    heard: Heard | None
    opening: bool = False
    facts: Mapping[str, Any] = field(default_factory=dict)
    digest: str = ""
    text: str | None = None


@dataclass
class Recording:
    """A session's turns as labels, replayable with no model call (`replay`).

    Attributes:
        policy: the policy's name.
        policy_hash: the exact policy version it was recorded on.
        start: `save_state` of the session before the first recorded turn.
        turns: the recorded turns, in order.
    """

    policy: str
    policy_hash: str
    start: str
    turns: list[RecordedTurn] = field(default_factory=list)

    def to_jsonl(self) -> str:
        """The recording as JSON lines: a header, then one line per turn."""
        lines = [
            {
                "recording": _FORMAT,
                "policy": self.policy,
                "policy_hash": self.policy_hash,
                "start": json.loads(self.start),
            }
        ]
        for index, turn in enumerate(self.turns):
            line: dict[str, Any] = {"turn": index}
            if turn.opening:
                line["opening"] = True
            if turn.text is not None:
                line["text"] = turn.text
            if turn.heard is not None:
                line["heard"] = _heard_json(turn.heard)
            if turn.facts:
                line["facts"] = dict(turn.facts)
            line["digest"] = turn.digest
            lines.append(line)
        return "".join(
            json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines
        )

    @classmethod
    def from_jsonl(cls, text: str) -> Recording:
        """Read a recording written by `to_jsonl`.

        Raises:
            SessionError: a line is not JSON or not part of a recording (its number is named).
        """
        rows: list[tuple[int, Any]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    rows.append((number, json.loads(raw)))
                except ValueError as exc:
                    raise SessionError(f"line {number}: invalid JSON ({exc})") from None
        if not rows:
            raise SessionError("an empty recording")
        number, header = rows[0]
        if not isinstance(header, dict) or header.get("recording") != _FORMAT:
            raise SessionError(f"line {number}: not a recording header of format {_FORMAT}")
        try:
            recording = cls(
                str(header["policy"]),
                str(header["policy_hash"]),
                json.dumps(header["start"], ensure_ascii=False, separators=(",", ":")),
            )
        except KeyError as exc:
            raise SessionError(f"line {number}: the header lacks {exc}") from None
        for number, row in rows[1:]:
            try:
                heard = row.get("heard")
                recording.turns.append(
                    RecordedTurn(
                        heard=None if heard is None else _heard_from_json(heard),
                        opening=bool(row.get("opening", False)),
                        facts=dict(row.get("facts", {})),
                        digest=str(row.get("digest", "")),
                        text=row.get("text"),
                    )
                )
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise SessionError(f"line {number}: not a recorded turn ({exc})") from None
        return recording


def _heard_json(heard: Heard) -> dict[str, Any]:
    out: dict[str, Any] = {"intent": heard.intent, "source": heard.source, "score": heard.score}
    if heard.slots:
        out["slots"] = dict(heard.slots)
    if heard.invalid:
        out["invalid"] = dict(heard.invalid)
    if heard.unsure:
        out["unsure"] = True
    if heard.choices:
        out["choices"] = list(heard.choices)
    if heard.error is not None:
        out["error"] = heard.error
    return out


_SOURCES = frozenset({"model", "example", "slots", "forced", "none", "error"})


def _heard_from_json(data: dict[str, Any]) -> Heard:
    source = data["source"]
    if source not in _SOURCES:
        raise ValueError(f"unknown source {source!r}")
    intent = data.get("intent")
    if intent is not None and not isinstance(intent, str):
        raise TypeError("intent must be a string or null")
    error = data.get("error")
    return Heard(
        intent=intent,
        score=float(data.get("score", 0.0)),
        source=source,
        slots=dict(data.get("slots", {})),
        invalid={str(k): str(v) for k, v in data.get("invalid", {}).items()},
        unsure=bool(data.get("unsure", False)),
        choices=tuple(str(c) for c in data.get("choices", ())),
        error=None if error is None else str(error),
    )


def _typed(compiled: CompiledPolicy, heard: Heard) -> Heard:
    """A recorded understanding with its slot values validated and typed again."""
    known = heard.intent in (None, OUT_OF_SCOPE) or heard.intent in compiled.policy.intents
    if not known:
        raise SessionError(f"recorded intent {heard.intent!r} is not in the policy")
    slots: dict[str, Any] = {}
    for name, value in heard.slots.items():
        kind = compiled.slot_types.get(name)
        if kind is None:
            raise SessionError(f"recorded slot {name!r} is not in the policy")
        try:
            slots[name] = kind.validate(kind.from_json(value))
        except (ValueError, TypeError) as exc:
            raise SessionError(f"recorded slot {name!r}: {exc}") from None
    return Heard(
        heard.intent,
        heard.score,
        heard.source,
        slots,
        heard.invalid,
        heard.unsure,
        heard.choices,
        heard.error,
    )


# --- replay -------------------------------------------------------------------------------------


class _NoModel:
    """The backend of a replay: any call is a divergence from the recording."""

    name = "replay"

    def classify(self, request: ClassifyRequest) -> Classification:  # noqa: ARG002 (refuses all)
        """Refuse: a replay takes every label from the recording."""
        raise BackendError("a replay makes no model calls", provider=self.name)

    def choose(self, request: ChooseRequest) -> Choice:  # noqa: ARG002 (refuses all)
        """Refuse: a replay takes every choice from the recording."""
        raise BackendError("a replay makes no model calls", provider=self.name)


@dataclass
class Replay:
    """What a replay produced.

    Attributes:
        session: the session after the last turn.
        turns: every replayed turn.
        diverged: index of the first turn whose state digest differs from the recorded one,
            or None when every turn matched.
        expected: the recorded digest at that turn.
        actual: the digest the replay produced there.
    """

    session: Session
    turns: list[Turn]
    diverged: int | None = None
    expected: str = ""
    actual: str = ""


def replay(
    policy: CompiledPolicy | Agent, recording: Recording, *, audit: AuditSink | None = None
) -> Replay:
    """Run a recording again with no model call and compare each turn's state digest.

    Args:
        policy: the compiled policy (or an agent of it) the recording was made on.
        recording: the recording.
        audit: where the replayed turns' audit events go; by default nowhere.

    Raises:
        SessionError: the recording was made on another policy version, or holds values the
            policy does not declare.
    """
    compiled = policy.compiled if isinstance(policy, Agent) else policy
    if recording.policy_hash != compiled.hash:
        raise SessionError(
            f"the recording was made on {recording.policy} {recording.policy_hash}, not"
            f" {compiled.name} {compiled.hash}"
        )
    agent = Agent(compiled, _NoModel(), audit=audit if audit is not None else NullSink())
    session = load_state(recording.start)
    if session.policy_hash != compiled.hash:
        raise SessionError("the recording's start state belongs to another policy version")
    result = Replay(session, [])
    for index, recorded in enumerate(recording.turns):
        try:
            facts = agent.game_state(recorded.facts)
        except ValueError as exc:
            raise SessionError(f"turn {index}: {exc}") from None
        if recorded.opening:
            turn = agent._turn(session, None, None, facts=facts)
        else:
            heard = recorded.heard or Heard(None, 0.0, "none")
            turn = agent._turn(
                session,
                recorded.text or "",
                None,
                facts=facts,
                heard=_typed(compiled, heard),
            )
        result.turns.append(turn)
        actual = digest(session)
        if result.diverged is None and recorded.digest and actual != recorded.digest:
            result.diverged, result.expected, result.actual = index, recorded.digest, actual
    return result


# --- the NPC ------------------------------------------------------------------------------------


@dataclass
class _Job:
    """A turn running on a worker thread, on a copy of the session."""

    future: Future[Turn]
    copy: Session
    tape: list[Heard | None]
    facts: dict[str, Any]
    text: str
    before: dict[str, Any]


class Npc:
    """One game character: a session of a shared agent, advanced without blocking the game.

    Create many from one agent (`sopagent.load_agent` compiles the policy once); each holds
    only its session. Not thread-safe: call an NPC from one thread (the game loop).

    Args:
        agent: the agent of the character's policy.
        session: a session to continue; by default a new one.
        facts: fact values (the game state) for a new session.
        locale: the locale of the lines said, for a new session.
        seed: seeds the lines picked by ``vary``, for a new session.
        npc_id: the session id of a new session, e.g. the character's id in the game.
        record: keep a `Recording` of every turn from now on (`recording`).
        record_text: keep the player's texts in the recording too.
        executor: runs budgeted turns; by default a pool of four threads shared by all NPCs.

    Raises:
        ValueError: a fact or the locale is not the policy's.
    """

    __slots__ = ("_agent", "_executor", "_job", "_recording", "_session", "_text")

    def __init__(
        self,
        agent: Agent,
        session: Session | None = None,
        *,
        facts: Mapping[str, Any] | None = None,
        locale: str | None = None,
        seed: int | None = None,
        npc_id: str | None = None,
        record: bool = False,
        record_text: bool = False,
        executor: Executor | None = None,
    ) -> None:
        if session is None:
            session = agent.new_session(session_id=npc_id, facts=facts, locale=locale, seed=seed)
        elif session.policy_hash != agent.compiled.hash:
            raise SessionError(
                f"session {session.id} belongs to {session.policy} {session.policy_hash},"
                f" not {agent.compiled.name} {agent.compiled.hash}"
            )
        self._agent = agent
        self._session = session
        self._executor = executor
        self._job: _Job | None = None
        self._text = record_text
        self._recording = (
            Recording(session.policy, session.policy_hash, save_state(session)) if record else None
        )

    # -- state ---------------------------------------------------------------------------------

    @property
    def agent(self) -> Agent:
        """The agent this character runs on."""
        return self._agent

    @property
    def session(self) -> Session:
        """The session; while a turn is pending, the state before it."""
        return self._session

    @property
    def pending(self) -> bool:
        """Whether a turn is running or finished but not yet collected."""
        return self._job is not None

    @property
    def recording(self) -> Recording | None:
        """The turns recorded so far, if the NPC records."""
        return self._recording

    def save(self) -> str:
        """`save_state` of the session (the state before a pending turn, if one runs)."""
        return save_state(self._session)

    def warm(self) -> Future[None] | None:
        """Have the model evaluate this NPC's prompt now (at level load), on a worker thread.

        Its first turn is then as fast as the others. NPCs of one policy and locale share the
        prompt, so warming one warms them all.

        Returns:
            A future done when the prompt is ready, or None if the backend cannot warm.
        """
        warm = getattr(self._agent.backend, "warm", None)
        if not callable(warm):
            return None
        compiled = self._agent.compiled
        locale = self._session.locale
        table = compiled.locales.get(locale) if locale is not None else None
        if table is not None and table.vocabulary is not None:
            vocabulary, key = table.vocabulary, table.key
        else:
            vocabulary, key = compiled.vocabulary, compiled.hash
        executor = self._executor if self._executor is not None else _pool()
        future: Future[None] = executor.submit(warm, vocabulary, key)
        return future

    def digest(self) -> str:
        """`digest` of the session: equal on two machines that played the same turns."""
        return digest(self._session)

    @classmethod
    def load(
        cls,
        agent: Agent,
        state: str | bytes,
        *,
        record: bool = False,
        record_text: bool = False,
        executor: Executor | None = None,
    ) -> Npc:
        """Restore a character saved with `save`.

        Raises:
            SessionError: the state is not a saved state, or it was saved on another policy
                version.
        """
        return cls(
            agent,
            load_state(state),
            record=record,
            record_text=record_text,
            executor=executor,
        )

    # -- turns ---------------------------------------------------------------------------------

    def start(self, *, facts: Mapping[str, Any] | None = None) -> Turn:
        """Say the opening lines (runs the initial state's decisions). Runs on this thread.

        Raises:
            SessionError: a turn is pending.
            ValueError: a fact is not declared or has the wrong type.
        """
        self._idle()
        given = self._agent.game_state(facts)
        started, before = self._session.started, self._session.facts
        tape: list[Heard | None] = []
        turn = self._agent._turn(self._session, None, None, validated=given, tape=tape)
        if not started:
            self._record(tape, given, before, None, opening=True)
        return turn

    def step(
        self,
        text: str,
        *,
        intent: str | None = None,
        facts: Mapping[str, Any] | None = None,
        budget_ms: float | None = None,
    ) -> Turn:
        """Advance the character by one player line.

        Args:
            text: what the player said.
            intent: a label to use instead of asking the model (dialogue buttons, tests).
            facts: the game state now (declared facts); None as a value clears a fact.
            budget_ms: the longest this call may take. The turn then runs on a worker
                thread; if it is not done in time, a `Turn` with ``pending=True`` is returned
                at once, saying the policy's filler line (nothing if it has none), and the
                real turn is collected with `poll`, `wait` or `finish`. None runs the turn on
                this thread and returns it.

        Raises:
            SessionError: a turn is pending, or the session does not fit the agent.
            ValueError: the intent or a fact is not the policy's.
        """
        self._idle()
        agent = self._agent
        agent.check_intent(intent)
        given = agent.game_state(facts)
        if budget_ms is None:
            tape: list[Heard | None] = []
            before = self._session.facts
            turn = agent._turn(self._session, text, intent, validated=given, tape=tape)
            self._record(tape, given, before, text)
            return turn
        if budget_ms < 0:
            raise ValueError(f"budget_ms {budget_ms} is negative")
        started = time.perf_counter()
        self._job = job = self._submit(text, intent, given)
        wait([job.future], timeout=budget_ms / 1000)
        finished = self.poll()
        return finished if finished is not None else self._filler(text, started)

    def submit(
        self,
        text: str,
        *,
        intent: str | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> Future[Turn]:
        """Start a turn on a worker thread and return at once; collect it with `poll`.

        Returns:
            A future done when the turn has run (its result is the turn, not yet collected:
            the session advances only when `poll`, `wait` or `finish` collects it).

        Raises:
            SessionError: a turn is pending.
            ValueError: the intent or a fact is not the policy's.
        """
        self._idle()
        self._agent.check_intent(intent)
        job = self._submit(text, intent, self._agent.game_state(facts))
        self._job = job
        return job.future

    async def astep(
        self,
        text: str,
        *,
        intent: str | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> Turn:
        """Advance the character by one player line without blocking the event loop.

        Cancelling the awaiting task cancels the turn (`cancel`).

        Raises:
            SessionError: a turn is pending.
            ValueError: the intent or a fact is not the policy's.
        """
        self.submit(text, intent=intent, facts=facts)
        return await self.finish()

    async def finish(self) -> Turn:
        """Await the pending turn and collect it.

        Raises:
            SessionError: no turn is pending.
        """
        import asyncio  # noqa: PLC0415 (only async callers need it; it is slow to import)

        job = self._job
        if job is None:
            raise SessionError(f"no turn of {self._session.id} is pending")
        try:
            await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            if self._job is job:
                self.cancel()
            raise
        finished = self.poll()
        assert finished is not None
        return finished

    def poll(self) -> Turn | None:
        """Collect the pending turn if it is done: the session advances and it is returned.

        Returns:
            The finished turn, or None while it runs or when none is pending.
        """
        job = self._job
        if job is None or not job.future.done():
            return None
        self._job = None
        turn = job.future.result()  # re-raises what the turn itself raised
        _assign(self._session, job.copy)
        self._record(job.tape, job.facts, job.before, job.text)
        return turn

    def wait(self, timeout: float | None = None) -> Turn | None:
        """Block until the pending turn is done (at most ``timeout`` seconds) and collect it.

        Returns:
            The finished turn, or None if it is still running after ``timeout`` or none is
            pending.
        """
        job = self._job
        if job is None:
            return None
        wait([job.future], timeout=timeout)
        return self.poll()

    def cancel(self) -> bool:
        """Drop the pending turn: the session stays as it was and the NPC is free at once.

        A turn already running finishes on its worker and its result is discarded; its audit
        event is still written, since it ran.

        Returns:
            Whether a turn was pending.
        """
        job, self._job = self._job, None
        if job is None:
            return False
        job.future.cancel()
        return True

    # -- internals -----------------------------------------------------------------------------

    def _idle(self) -> None:
        if self._job is not None:
            raise SessionError(
                f"a turn of {self._session.id} is pending; collect it (poll, wait, finish) or"
                " cancel it first"
            )

    def _submit(self, text: str, intent: str | None, given: dict[str, Any]) -> _Job:
        copy = _copy(self._session)
        tape: list[Heard | None] = []
        executor = self._executor if self._executor is not None else _pool()
        future = executor.submit(self._agent._turn, copy, text, intent, validated=given, tape=tape)
        return _Job(future, copy, tape, given, text, self._session.facts)

    def _record(
        self,
        tape: list[Heard | None],
        facts: dict[str, Any],
        before: Mapping[str, Any],
        text: str | None,
        *,
        opening: bool = False,
    ) -> None:
        if self._recording is None or not tape:
            return
        heard = tape[-1]
        if heard is not None and heard.slots:
            types = self._agent.compiled.slot_types
            heard = replace(heard, slots={n: types[n].to_json(v) for n, v in heard.slots.items()})
        self._recording.turns.append(
            RecordedTurn(
                heard=heard,
                opening=opening,
                # Values the session already held change nothing: only the others replay.
                facts={k: v for k, v in facts.items() if before.get(k) != v},
                digest=digest(self._session),
                text=text if self._text else None,
            )
        )

    def _filler(self, text: str, started: float) -> Turn:
        session = self._session
        compiled = self._agent.compiled
        state = compiled.states[session.state]
        route = state.filler
        lines: list[str] = []
        if route is not None:
            lines.extend(route.say)
            if route.vary:
                lines.append(pick(session.seed, session.turns + 1, "filler", route.vary))
        table = compiled.locales.get(session.locale) if session.locale is not None else None
        said: list[Utterance] = []
        for line in lines:
            template, locale = compiled.templates[line], compiled.catalog.locale
            if table is not None and line in table.templates:
                template, locale = table.templates[line], table.code
            said.append(
                Utterance(
                    id=line, text=template.text.format_map({}), hash=template.hash, locale=locale
                )
            )
        return Turn(
            session_id=session.id,
            index=session.turns + 1,
            user_text=text,
            state_before=session.state,
            state_after=session.state,
            path=(),
            intent=None,
            score=0.0,
            intent_source="none",
            accepted=False,
            slots={},
            responses=tuple(said),
            pending=True,
            ended=session.ended,
            latency_ms=_latency_ms(started),
        )
