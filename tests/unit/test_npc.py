"""Npc: save/load, seeded lines, recordings replayed with no model call, the frame budget."""

from __future__ import annotations

import asyncio
import json
import threading
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import FixedBackend
from hypothesis import given, settings
from hypothesis import strategies as st

import sopagent
from sopagent import (
    Agent,
    CompiledPolicy,
    MemorySink,
    Npc,
    Recording,
    ScriptedBackend,
    Session,
    SessionError,
    Turn,
    replay,
)
from sopagent._agent import pick
from sopagent._npc import digest, load_state, save_state
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Usage
from sopagent.errors import BackendTimeout
from sopagent.session import SessionTurn, SessionUsage

ROOT = Path(__file__).resolve().parents[2]
MERCHANT = ROOT / "policies" / "merchant_npc.yaml"
WARDEN = ROOT / "policies" / "warden_npc.yaml"
PURSE = {"gold": 80, "inventory": {"moonstone": 1}, "flags": []}


@cache
def compiled(path: Path = MERCHANT) -> CompiledPolicy:
    return sopagent.compile_policy(sopagent.load_policy(path))


class GatedBackend:
    """A slow model: every call waits until the test opens the gate, then answers ``intent``."""

    name = "gated"

    def __init__(self, intent: str = "greet", score: float = 0.9) -> None:
        self.intent = intent
        self.score = score
        self.gate = threading.Event()
        self.calls = 0

    def classify(self, request: ClassifyRequest) -> Classification:
        self.calls += 1
        assert self.gate.wait(10), "the test never opened the gate"
        return Classification(self.intent, self.score, {self.intent: self.score}, {}, Usage(1))

    def choose(self, request: ChooseRequest) -> Choice:
        return Choice(request.options[0].name, 1.0, Usage(1))


def npc_on(backend: Any, path: Path = MERCHANT, **options: Any) -> Npc:
    agent = Agent(compiled(path), backend, audit=MemorySink())
    npc = Npc(agent, facts=options.pop("facts", PURSE), **options)
    npc.start()
    return npc


# --- save and load ----------------------------------------------------------------------------


def test_save_and_load_restore_every_field() -> None:
    """A saved NPC mid-haggle loads into an equal session, and goes on the same way."""
    npc = npc_on(ScriptedBackend({"make me a price": "buy_key"}), locale="de", seed=7)
    npc.step("make me a price")
    npc.step("30")
    blob = npc.save()
    assert len(blob.encode()) < 1000
    restored = Npc.load(npc.agent, blob)
    assert restored.session == npc.session
    assert restored.session is not npc.session
    assert save_state(restored.session) == blob
    assert restored.step("60").response_ids == npc.step("60").response_ids


def test_save_is_smaller_than_the_general_session_json() -> None:
    """The compact form leaves defaults out and writes history turns as arrays."""
    npc = npc_on(ScriptedBackend())
    for text in ("hello", "what do you sell?", "no"):
        npc.step(text)
    assert len(npc.save()) < 0.7 * len(npc.session.to_json())


SESSIONS = st.builds(
    Session,
    id=st.text(min_size=1, max_size=12),
    policy=st.just("merchant_npc"),
    policy_hash=st.just("sha256:0000000000000000"),
    state=st.sampled_from(["shop", "haggle", "sold_out"]),
    started=st.booleans(),
    ended=st.booleans(),
    turns=st.integers(0, 10_000),
    slots=st.dictionaries(st.sampled_from(["offer"]), st.integers(0, 100)),
    facts=st.fixed_dictionaries(
        {},
        optional={
            "gold": st.integers(0, 10**6),
            "inventory": st.dictionaries(st.sampled_from(["moonstone", "rope"]), st.integers(1, 9)),
            "flags": st.lists(st.sampled_from(["crypt_quest", "crypt_open"]), unique=True),
        },
    ),
    history=st.lists(
        st.builds(
            SessionTurn,
            user=st.none() | st.text(max_size=40),
            intent=st.none() | st.sampled_from(["greet", "buy_key"]),
            state=st.sampled_from(["shop", "haggle"]),
            responses=st.lists(st.sampled_from(["welcome", "ask_offer"]), max_size=3).map(tuple),
        ),
        max_size=5,
    ),
    usage=st.builds(SessionUsage, model_calls=st.integers(0, 99), prompt_tokens=st.integers(0, 9)),
    locale=st.none() | st.just("de"),
    seed=st.integers(0, 2**31),
)


@settings(max_examples=200, deadline=None, database=None)
@given(SESSIONS)
def test_any_session_survives_save_and_load(session: Session) -> None:
    """load_state(save_state(s)) equals s, field for field, for arbitrary sessions."""
    assert load_state(save_state(session)) == session


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        ("not json", "invalid JSON"),
        ('{"npc": 2}', "npc: Input should be 1"),
        ('{"npc": 1, "policy": "x"}', "not a saved NPC state: hash: Field required"),
        ("[]", "not a saved NPC state: the state: Input should be an object"),
        (
            '{"npc": 1, "policy": "x", "hash": "h", "id": "i", "state": 5, "seed": 1}',
            "state: Input should be",
        ),
    ],
)
def test_a_broken_save_is_a_session_error(blob: str, message: str) -> None:
    """Anything that is not a saved state raises SessionError, never a bare KeyError."""
    with pytest.raises(SessionError, match=message):
        load_state(blob)


def test_a_save_of_another_policy_version_is_refused() -> None:
    """Loading a state saved on another policy hash is a SessionError."""
    npc = npc_on(ScriptedBackend())
    other = Agent(compiled(WARDEN), ScriptedBackend())
    with pytest.raises(SessionError, match="belongs to merchant_npc"):
        Npc.load(other, npc.save())


# --- lines picked by the seed -----------------------------------------------------------------


def test_vary_lines_follow_the_seed() -> None:
    """The same seed says the same greeting lines; over many seeds both lines occur."""

    def greetings(seed: int) -> list[str]:
        npc = npc_on(ScriptedBackend(), seed=seed)
        return [npc.step("hello").response_ids[0] for _ in range(6)]

    assert greetings(3) == greetings(3)
    said = {line for seed in range(12) for line in greetings(seed)}
    assert said == {"greet_back", "small_talk"}


def test_pick_is_the_same_on_every_machine() -> None:
    """The seeded pick is a hash of seed, turn and salt, not Python's random: fixed for good."""
    picked = "".join(pick(42, turn, 1, ("a", "b", "c")) for turn in range(12))
    assert picked == "bbccbaaabcca"


# --- recordings and replay --------------------------------------------------------------------


def record(npc: Npc, *lines: str | tuple[str, dict[str, Any]]) -> list[Turn]:
    turns = []
    for line in lines:
        text, facts = line if isinstance(line, tuple) else (line, None)
        turns.append(npc.step(text, facts=facts))
    return turns


def comparable(turn: Turn) -> dict[str, Any]:
    """What a replay must reproduce: everything but the text and the cost of the model."""
    data = turn.model_dump(
        exclude={
            "latency_ms",
            "model_calls",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "answered_by",
            "user_text",
        }
    )
    if data["intent_source"] == "model":
        data["score"] = round(data["score"], 4)
    return data


def test_a_recording_replays_exactly_with_no_model_call() -> None:
    """Turns the model, examples, slots and game state decided replay to the same states."""
    script = {"fancy that key": "buy_key", "take it, take my stone": "trade_offer"}
    backend = ScriptedBackend(script, default=None)
    npc = npc_on(backend, record=True, seed=11)
    turns = [
        *record(
            npc,
            "hello",
            "fancy that key",
            ("30", {"gold": 25}),
            "take it, take my stone",
            "no",
            ("60", {"gold": 90}),
            "bye",
        )
    ]
    assert npc.recording is not None
    text = npc.recording.to_jsonl()
    assert "fancy that key" not in text  # labels, not text
    result = replay(compiled(), Recording.from_jsonl(text))
    assert result.diverged is None
    assert [comparable(t) for t in result.turns[1:]] == [comparable(t) for t in turns]
    assert all(t.model_calls == 0 for t in result.turns)
    assert digest(result.session) == npc.digest()
    assert result.session.facts == npc.session.facts


def test_a_failed_turn_replays_as_the_same_failure() -> None:
    """A backend failure is recorded and replayed where it happened; the state matches."""
    backend = ScriptedBackend({"hmm": "greet"}, default=None)
    npc = npc_on(backend, record=True)
    failed = npc.step("what now?")
    assert failed.error is not None
    npc.step("hmm")
    assert npc.recording is not None
    result = replay(compiled(), npc.recording)
    assert result.diverged is None
    assert result.turns[1].error == failed.error
    assert result.turns[1].response_ids == ("distracted",)


def test_a_doubted_intent_replays_as_doubted(write_policy: Any) -> None:
    """The confidence rule's verdict is recorded, not recomputed from the turn's rounded score."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  error: {say: oops}",
            "  error: {say: oops}\n  confidence: {threshold: 0.4, below: {say: sorry}}",
        )
    )
    agent = Agent(
        sopagent.compile_policy(sopagent.load_policy(path)),
        FixedBackend("greet", 0.39999),
        audit=MemorySink(),
    )
    npc = Npc(agent, record=True)
    npc.start()
    doubted = npc.step("hey you")
    assert doubted.score == 0.4
    assert doubted.response_ids == ("sorry",)
    assert npc.recording is not None
    result = replay(agent, Recording.from_jsonl(npc.recording.to_jsonl()))
    assert result.diverged is None
    assert result.turns[1].response_ids == ("sorry",)


def test_a_tampered_recording_is_caught_at_the_turn_it_diverges() -> None:
    """A changed label gives another state: the replay names the first turn that differs."""
    npc = npc_on(ScriptedBackend(), record=True)
    record(npc, "hello", "sell me the key", "60", "bye")
    assert npc.recording is not None
    lines = npc.recording.to_jsonl().splitlines()
    turn = json.loads(lines[3])
    turn["heard"]["intent"] = "deny"
    lines[3] = json.dumps(turn)
    result = replay(compiled(), Recording.from_jsonl("\n".join(lines)))
    assert result.diverged == 2
    assert result.expected != result.actual


def test_a_recording_of_another_version_or_broken_is_refused() -> None:
    """Another policy hash, a broken line or an undeclared slot is a SessionError."""
    npc = npc_on(ScriptedBackend(), record=True)
    npc.step("hello")
    assert npc.recording is not None
    with pytest.raises(SessionError, match="was made on merchant_npc"):
        replay(compiled(WARDEN), npc.recording)
    with pytest.raises(SessionError, match="line 2: invalid JSON"):
        Recording.from_jsonl(npc.recording.to_jsonl().splitlines()[0] + "\n{oops\n")
    bad = npc.recording.to_jsonl().replace('"source":"example"', '"source":"oracle"')
    with pytest.raises(SessionError, match="line 3: not a recorded turn"):
        Recording.from_jsonl(bad)


# --- the frame budget -------------------------------------------------------------------------


def test_a_turn_that_misses_its_budget_says_the_filler_and_changes_nothing() -> None:
    """Past the budget: the filler line at once, pending=True; the session is the one before."""
    backend = GatedBackend("buy_key")
    npc = npc_on(backend, seed=5)
    before, saved = npc.session.model_dump(), npc.save()
    filler = npc.step("I fancy that key", budget_ms=10)
    assert filler.pending is True
    assert filler.response_ids[0] in ("filler_hmm", "filler_beard")
    assert (filler.state_before, filler.state_after) == ("shop", "shop")
    assert filler.effects == ()
    assert filler.index == npc.session.turns + 1
    assert npc.pending is True
    assert npc.poll() is None
    assert npc.session.model_dump() == before
    assert npc.save() == saved
    with pytest.raises(SessionError, match="pending"):
        npc.step("hello")
    backend.gate.set()
    done = npc.wait(5)
    assert done is not None
    assert done.pending is False
    assert done.response_ids == ("key_pitch", "ask_offer")
    assert npc.session.state == "haggle"
    assert npc.pending is False
    assert npc.poll() is None


def test_a_turn_within_its_budget_returns_the_real_turn() -> None:
    """A turn that needs no model call is done in time and returned as it is."""
    npc = npc_on(GatedBackend())
    turn = npc.step("what do you sell?", budget_ms=5000)
    assert turn.pending is False
    assert turn.response_ids == ("wares",)


def test_the_same_filler_in_german_and_none_without_one(write_policy: Any) -> None:
    """The filler is said in the session's locale; a policy without one says nothing."""
    backend = GatedBackend()
    npc = npc_on(backend, locale="de", seed=1)
    filler = npc.step("grüß gott, alter", budget_ms=1)
    assert filler.responses[0].locale == "de"
    assert filler.text in ("Hm, hm...", "Bramble streicht sich über den Bart...")
    backend.gate.set()
    assert npc.wait(5) is not None
    refund = Agent(
        sopagent.compile_policy(sopagent.load_policy(ROOT / "policies" / "refund.yaml")),
        GatedBackend("request_refund"),
    )
    quiet = Npc(refund)
    quiet.start()
    pending = quiet.step("money back please", budget_ms=1)
    assert pending.pending is True
    assert pending.responses == ()
    quiet.cancel()


def test_cancel_drops_the_turn_and_frees_the_npc() -> None:
    """A cancelled turn never reaches the session, even when it finishes later."""
    backend = GatedBackend("buy_key")
    npc = npc_on(backend)
    before = npc.session.model_dump()
    abandoned = npc.submit("I fancy that key")
    assert npc.cancel() is True
    assert npc.pending is False
    assert npc.cancel() is False
    backend.gate.set()
    assert abandoned.result(5).response_ids == ("key_pitch", "ask_offer")
    assert npc.session.model_dump() == before
    turn = npc.step("what do you sell?")
    assert turn.response_ids == ("wares",)
    assert npc.session.state == "shop"


def test_a_finished_turn_changes_the_session_only_when_collected() -> None:
    """submit returns at once; a done turn waits for poll before the session advances."""
    backend = GatedBackend("greet")
    npc = npc_on(backend)
    future = npc.submit("good evening, old friend")
    assert npc.poll() is None
    backend.gate.set()
    future.result(5)
    assert npc.session.turns == 0
    assert npc.session.history[-1].intent is None
    session = npc.session
    turn = npc.poll()
    assert turn is not None
    assert turn.intent == "greet"
    assert npc.session is session
    assert (session.turns, session.history[-1].intent) == (1, "greet")


def test_two_npcs_of_one_agent_wait_for_the_model_at_once() -> None:
    """Two characters on one agent can both be pending; each gets its own turn."""
    backend = GatedBackend("buy_key")
    agent = Agent(compiled(), backend, audit=MemorySink())
    first, second = Npc(agent, facts=PURSE), Npc(agent, facts={"gold": 5})
    first.start(), second.start()
    assert first.step("I fancy that key", budget_ms=1).pending
    assert second.step("that key, friend", budget_ms=1).pending
    backend.gate.set()
    one, two = first.wait(5), second.wait(5)
    assert one is not None
    assert two is not None
    assert one.session_id == first.session.id
    assert two.session_id == second.session.id
    assert first.session.state == second.session.state == "haggle"


def test_astep_does_not_block_the_event_loop() -> None:
    """While astep waits for the model, other tasks of the loop keep running."""
    backend = GatedBackend("buy_key")
    npc = npc_on(backend)

    async def game() -> tuple[Turn, int]:
        frames = 0

        async def frames_until_answered(task: asyncio.Task[Turn]) -> None:
            nonlocal frames
            while not task.done():
                frames += 1
                if frames == 3:
                    backend.gate.set()
                await asyncio.sleep(0.001)

        task = asyncio.ensure_future(npc.astep("I fancy that key"))
        await frames_until_answered(task)
        return await task, frames

    turn, frames = asyncio.run(game())
    assert frames >= 3
    assert turn.response_ids == ("key_pitch", "ask_offer")
    assert npc.session.state == "haggle"


def test_a_cancelled_astep_leaves_the_npc_free() -> None:
    """Cancelling the awaiting task cancels the turn; the session is unchanged."""
    backend = GatedBackend("buy_key")
    npc = npc_on(backend)

    async def game() -> None:
        task = asyncio.ensure_future(npc.astep("I fancy that key"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(game())
    backend.gate.set()
    assert npc.pending is False
    assert npc.session.state == "shop"


def test_finish_awaits_a_turn_that_missed_its_budget() -> None:
    """A pending step can be awaited from async code."""
    backend = GatedBackend("buy_key")
    npc = npc_on(backend)
    assert npc.step("I fancy that key", budget_ms=1).pending

    async def later() -> Turn:
        backend.gate.set()
        return await npc.finish()

    assert asyncio.run(later()).response_ids == ("key_pitch", "ask_offer")


def test_a_budgeted_turn_is_recorded_when_collected() -> None:
    """Recording goes through the budget path too; the replay matches."""
    backend = GatedBackend("buy_key")
    npc = npc_on(backend, record=True)
    npc.step("I fancy that key", budget_ms=1)
    backend.gate.set()
    npc.wait(5)
    assert npc.recording is not None
    assert len(npc.recording.turns) == 2
    assert replay(compiled(), npc.recording).diverged is None


def test_a_backend_timeout_under_the_budget_is_the_error_line_later() -> None:
    """A model that fails after the filler gives the error line as the real turn; state kept."""

    class Failing(GatedBackend):
        def classify(self, request: ClassifyRequest) -> Classification:
            self.gate.wait(10)
            raise BackendTimeout("too slow", provider="gated", retryable=True)

    backend = Failing()
    npc = npc_on(backend)
    assert npc.step("I fancy that key", budget_ms=1).pending
    backend.gate.set()
    turn = npc.wait(5)
    assert turn is not None
    assert turn.response_ids == ("distracted",)
    assert npc.session.state == "shop"


def test_warm_evaluates_the_prompt_of_the_npcs_locale() -> None:
    """warm hands the backend the vocabulary and key its turns in that locale will use."""

    class Warming(GatedBackend):
        def __init__(self) -> None:
            super().__init__()
            self.warmed: list[tuple[int, str]] = []

        def warm(self, vocabulary: tuple[Any, ...], key: str) -> None:
            self.warmed.append((len(vocabulary), key))

    backend = Warming()
    german, english = npc_on(backend, locale="de"), npc_on(backend)
    for npc in (german, english):
        future = npc.warm()
        assert future is not None
        future.result(5)
    table = compiled().locales["de"]
    assert table.vocabulary is not None
    assert backend.warmed == [
        (len(table.vocabulary), table.key),
        (len(compiled().vocabulary), compiled().hash),
    ]
    assert table.key == compiled().hash + ":de"
    assert npc_on(ScriptedBackend()).warm() is None
