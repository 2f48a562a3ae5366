"""Game NPCs: per-turn overhead, turns on the embedded model, memory of 1,000 NPCs, state size.

Four parts, each with its baseline measured in the same process:

* **overhead without the model**: a merchant conversation (policies/merchant_npc.yaml, the game
  state passed with every turn, effects emitted) through `Npc.step` on a scripted backend,
  median microseconds per turn; against the refund policy's scripted turn of
  ``bench/overhead.py`` and one raw ``transitions`` trigger, interleaved in rounds so that load
  changes hit all alike. Also `Agent.respond` on the same turns (the `Npc` layer's share), the
  budgeted path (the turn on a worker thread), recording, save/load and replay.
* **with the embedded model**: NPC turns whose texts need the model, median and p90 ms of the
  warm ones; the baseline is the backend's ``classify`` of the very same request, repeated right
  after each turn (the model call alone). And ``step(..., budget_ms=16)``: how long the call
  takes to return with the filler, and how long until the real answer.
* **memory**: 1,000 NPCs on one compiled policy (each started and three turns in), traced with
  ``tracemalloc``: bytes per NPC, against NPCs that each compile their own policy.
* **state size**: ``Npc.save()`` bytes per NPC, after three turns and after 40 (the policy keeps
  12 turns of history), against ``Session.to_json()``.

    python bench/npc.py [--quick] [--no-model] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _report import markdown, median, p90, row, write_json
from overhead import make_agent, reset_world, run_conversation
from transitions import Machine

import sopagent
from sopagent import Agent, Npc, Recording, compile_policy, load_policy, replay
from sopagent._npc import load_state, save_state
from sopagent.audit import NullSink
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Usage

ROOT = Path(__file__).resolve().parent.parent
MERCHANT = ROOT / "policies" / "merchant_npc.yaml"
REFUND = ROOT / "policies" / "refund.yaml"
GAME_STATE = {"gold": 80, "inventory": {"moonstone": 1, "lantern": 1}, "flags": []}

# (user text, label the scripted model answers or None for slot values alone, state after)
# Texts are not intent examples, so each is classified as a model would classify it.
TURNS: tuple[tuple[str, str | None, str], ...] = (
    ("hello there, merchant", "greet", "shop"),
    ("what are you selling today?", "ask_wares", "shop"),
    ("I fancy that silver key", "buy_key", "haggle"),
    ("30", None, "barter_offered"),
    ("alright, take the stone", "affirm", "sold_out"),
    ("farewell, friend", "farewell", "goodbye"),
)
# Texts the embedded model classifies in the shop (none is an example of the policy).
MODEL_TEXTS = (
    "good evening, old man",
    "what are you selling?",
    "can I swap something for it?",
    "I want to trade my moonstone for the key",
    "tell me about your wares",
    "what do you have in stock?",
)


class Labels:
    """A scripted model that keeps nothing (ScriptedBackend keeps every request)."""

    name = "labels"

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def classify(self, request: ClassifyRequest) -> Classification:
        label = self.labels.get(request.text, "out_of_scope")
        return Classification(label, 1.0, {label: 1.0}, {}, Usage(calls=1))

    def choose(self, request: ChooseRequest) -> Choice:
        return Choice(request.options[0].name, 1.0, Usage(calls=1))


class Spy:
    """Remembers the last classification request, to repeat it as the baseline."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.name = backend.name
        self.last: ClassifyRequest | None = None

    def classify(self, request: ClassifyRequest) -> Classification:
        self.last = request
        answer: Classification = self.backend.classify(request)
        return answer

    def choose(self, request: ChooseRequest) -> Choice:
        answer: Choice = self.backend.choose(request)
        return answer


def labels() -> dict[str, str]:
    return {text: label for text, label, _ in TURNS if label is not None}


def timed_ns(call: Callable[[], Any]) -> int:
    start = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - start


def npc_conversation(
    agent: Agent, out: list[int], *, budget_ms: float | None = None, record: bool = False
) -> Npc:
    """One merchant conversation through Npc.step; each turn's nanoseconds go to ``out``."""
    npc = Npc(agent, facts=GAME_STATE, seed=1, record=record)
    npc.start()
    for text, _, expected in TURNS:
        start = time.perf_counter_ns()
        turn = npc.step(text, facts=GAME_STATE, budget_ms=budget_ms)
        out.append(time.perf_counter_ns() - start)
        if turn.state_after != expected or turn.pending:
            raise SystemExit(f"{text!r} led to {turn.state_after!r} (error {turn.error})")
    return npc


def agent_conversation(agent: Agent, out: list[int]) -> None:
    """The same turns through Agent.respond, without the Npc layer."""
    session = agent.new_session(facts=GAME_STATE, seed=1)
    agent.start(session)
    for text, _, _ in TURNS:
        start = time.perf_counter_ns()
        agent.respond(session, text, facts=GAME_STATE)
        out.append(time.perf_counter_ns() - start)


def overhead(quick: bool) -> list[dict[str, Any]]:
    rounds, repeats = 10, (40 if quick else 200)
    compiled = compile_policy(load_policy(MERCHANT))
    agent = Agent(compiled, Labels(labels()), audit=NullSink())
    refund_agent, refund_backend = make_agent(compile_policy(load_policy(REFUND)), NullSink())
    config = compiled.machine_config()

    class RawModel:
        state = "shop"

    raw = RawModel()
    machine = Machine(
        model=raw,
        states=config["states"],
        transitions=config["transitions"],
        initial="shop",
        auto_transitions=False,
    )
    trigger = machine.events["intent:buy_key"]
    samples: dict[str, list[int]] = {
        k: [] for k in ("raw", "refund", "npc", "agent", "budget", "record", "save", "load")
    }
    samples |= {"to_json": [], "from_json": [], "replay": []}
    for _ in range(3):  # warm-up: first calls fill caches
        npc_conversation(agent, [], record=True)
        reset_world(refund_agent, refund_backend, None)
        run_conversation(refund_agent, forced=False, check=True, out=_sink())
    for _ in range(rounds):
        for _ in range(repeats):
            raw.state = "shop"
            samples["raw"].append(timed_ns(lambda: trigger.trigger(raw)))
        for _ in range(repeats // 4):
            reset_world(refund_agent, refund_backend, None)
            per_kind = _sink()
            run_conversation(refund_agent, forced=False, check=False, out=per_kind)
            samples["refund"] += [
                ns for kind, values in per_kind.items() if kind != "start" for ns in values
            ]
            npc_conversation(agent, samples["npc"])
            agent_conversation(agent, samples["agent"])
        for _ in range(max(repeats // 20, 2)):
            npc_conversation(agent, samples["budget"], budget_ms=1000)
            recorded = npc_conversation(agent, samples["record"], record=True)
        mid = Npc(agent, facts=GAME_STATE, seed=1)
        mid.start()
        for text, _, _ in TURNS[:3]:
            mid.step(text, facts=GAME_STATE)
        session = mid.session
        blob = save_state(session)
        general = session.to_json()
        for _ in range(repeats):
            samples["save"].append(timed_ns(partial(save_state, session)))
            samples["load"].append(timed_ns(partial(load_state, blob)))
            samples["to_json"].append(timed_ns(session.to_json))
            samples["from_json"].append(timed_ns(partial(sopagent.Session.from_json, general)))
        assert recorded.recording is not None
        tape = Recording.from_jsonl(recorded.recording.to_jsonl())
        for _ in range(max(repeats // 20, 2)):
            ns = timed_ns(partial(replay, compiled, tape))
            samples["replay"].append(ns // len(tape.turns))
    us = {key: median(values) / 1000 for key, values in samples.items()}
    count = {key: len(values) for key, values in samples.items()}
    return [
        row("raw transitions trigger (1 transition)", us["raw"], "µs", n=count["raw"]),
        row(
            "refund turn, scripted (bench/overhead.py's conversation)",
            us["refund"],
            "µs",
            baseline=us["raw"],
            baseline_name="1 raw trigger",
            n=count["refund"],
        ),
        row(
            "NPC turn, Npc.step, scripted (game state in, effects out)",
            us["npc"],
            "µs",
            baseline=us["refund"],
            baseline_name="refund turn",
            n=count["npc"],
            note=f"{us['npc'] / us['raw']:.2f}x one raw trigger",
        ),
        row(
            "NPC turn, Agent.respond on the same turns",
            us["agent"],
            "µs",
            baseline=us["npc"],
            baseline_name="Npc.step",
            n=count["agent"],
        ),
        row(
            "NPC turn, Npc.step with budget_ms (worker thread), done in time",
            us["budget"],
            "µs",
            baseline=us["npc"],
            baseline_name="Npc.step",
            n=count["budget"],
        ),
        row(
            "NPC turn, Npc.step recording",
            us["record"],
            "µs",
            baseline=us["npc"],
            baseline_name="Npc.step",
            n=count["record"],
        ),
        row(
            "replay of a recording, per turn (no model call)",
            us["replay"],
            "µs",
            baseline=us["npc"],
            baseline_name="Npc.step",
            n=count["replay"],
        ),
        row(
            "save_state (Npc.save), mid-conversation",
            us["save"],
            "µs",
            baseline=us["to_json"],
            baseline_name="Session.to_json",
            n=count["save"],
        ),
        row(
            "load_state (Npc.load), mid-conversation",
            us["load"],
            "µs",
            baseline=us["from_json"],
            baseline_name="Session.from_json",
            n=count["load"],
        ),
    ]


def _sink() -> dict[str, list[int]]:
    from collections import defaultdict  # noqa: PLC0415

    return defaultdict(list)


# --- the embedded model ---------------------------------------------------------------------------


def with_model(quick: bool) -> list[dict[str, Any]]:
    """Each text three ways, back to back so that load changes hit all alike.

    A turn without a budget, then the same classify request alone (the model call), then the
    same text on a fresh NPC with ``budget_ms=16`` polled every 1/60 s frame.
    """
    reps = 2 if quick else 5
    spy = Spy(sopagent.embedded())
    compiled = compile_policy(load_policy(MERCHANT))
    agent = Agent(compiled, spy, audit=NullSink())
    warmup = Npc(agent, facts=GAME_STATE)
    warmup.start()
    warmup.step("good day to you, sir")  # evaluates the prompt: the cold turn, not counted
    warm: list[float] = []
    alone: list[float] = []
    ratios: list[float] = []
    returned: list[float] = []
    answered: list[float] = []
    answered_ratios: list[float] = []
    frames: list[float] = []
    for _ in range(reps):
        for text in MODEL_TEXTS:
            npc = Npc(agent, facts=GAME_STATE)
            npc.start()
            start = time.perf_counter()
            turn = npc.step(text, facts=GAME_STATE)
            elapsed = (time.perf_counter() - start) * 1000
            if turn.model_calls < 1 or turn.cached_tokens < turn.prompt_tokens / 2:
                continue
            assert spy.last is not None
            request = spy.last
            start = time.perf_counter()
            spy.backend.classify(request)
            model = (time.perf_counter() - start) * 1000
            warm.append(elapsed)
            alone.append(model)
            ratios.append(elapsed / model)
            npc = Npc(agent, facts=GAME_STATE)
            npc.start()
            start = time.perf_counter()
            turn = npc.step(text, facts=GAME_STATE, budget_ms=16)
            returned.append((time.perf_counter() - start) * 1000)
            ticks = 0
            while turn.pending:
                time.sleep(1 / 60)
                ticks += 1
                done = npc.poll()
                if done is not None:
                    turn = done
            total = (time.perf_counter() - start) * 1000
            answered.append(total)
            answered_ratios.append(total / elapsed)
            frames.append(ticks)
    return [
        row(
            "NPC turn with the embedded model (warm)",
            median(warm),
            "ms",
            p90_value=p90(warm),
            baseline=median(alone),
            baseline_name="the same classify request alone",
            n=len(warm),
            note=f"median of per-turn ratios {median(ratios):.3f}",
        ),
        row(
            "step(budget_ms=16) returns (the filler, the model being slower)",
            median(returned),
            "ms",
            p90_value=p90(returned),
            baseline=16.0,
            baseline_name="the budget",
            n=len(returned),
        ),
        row(
            "step(budget_ms=16): until the real answer, polling each 1/60 s frame",
            median(answered),
            "ms",
            p90_value=p90(answered),
            baseline=median(warm),
            baseline_name="the same text without a budget, just before",
            n=len(answered),
            note=f"median of per-turn ratios {median(answered_ratios):.3f};"
            f" median {median(frames):.0f} frames",
        ),
    ]


# --- memory and size ------------------------------------------------------------------------------


def spawn(agent: Agent, count: int, turns: int) -> list[Npc]:
    npcs = []
    texts = [text for text, _, _ in TURNS[:3]]
    for index in range(count):
        npc = Npc(agent, facts=GAME_STATE, seed=index, npc_id=f"npc{index}")
        npc.start()
        for turn in range(turns):
            npc.step(texts[turn % len(texts)] if turn < 3 else "what are you selling today?")
        npcs.append(npc)
    return npcs


def own_agent() -> Agent:
    """An agent compiling its own copy of the policy, as if every NPC loaded it."""
    return Agent(compile_policy(load_policy(MERCHANT)), Labels(labels()), audit=NullSink())


def traced(build: Callable[[], Any]) -> tuple[Any, int]:
    """Build something and return it with the bytes it holds (traced allocations kept)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    built = build()
    gc.collect()
    return built, tracemalloc.get_traced_memory()[0] - before


def memory(quick: bool) -> list[dict[str, Any]]:
    count = 200 if quick else 1000
    tracemalloc.start()
    try:
        compiled, compiled_bytes = traced(lambda: compile_policy(load_policy(MERCHANT)))
        agent = Agent(compiled, Labels(labels()), audit=NullSink())
        spawn(agent, 5, 3)  # first use builds lazy caches; not per NPC
        started = time.perf_counter()
        npcs, npcs_bytes = traced(lambda: spawn(agent, count, 3))
        spawn_ms = (time.perf_counter() - started) * 1000
        long_npcs, long_bytes = traced(lambda: spawn(agent, 100, 40))
        naive, naive_bytes = traced(lambda: [spawn(own_agent(), 1, 3)[0] for _ in range(10)])
    finally:
        tracemalloc.stop()
    gc.collect()
    started = time.perf_counter()
    fresh = [Npc(agent, facts=GAME_STATE, seed=i) for i in range(count)]
    for npc in fresh:
        npc.start()
    untraced_ms = (time.perf_counter() - started) * 1000
    del fresh
    sizes = [len(npc.save().encode()) for npc in npcs]
    long_sizes = [len(npc.save().encode()) for npc in long_npcs]
    general = [len(npc.session.to_json().encode()) for npc in npcs]
    per_npc = npcs_bytes / len(npcs)
    del naive
    return [
        row("compiled merchant policy, shared by every NPC", compiled_bytes / 1024, "KiB"),
        row(
            f"memory per NPC, {len(npcs)} NPCs on one compiled policy (3 turns each)",
            per_npc / 1024,
            "KiB",
            n=len(npcs),
            note="goal < 10 KB",
        ),
        row(
            "memory per NPC compiling its own policy (10 NPCs, 3 turns each)",
            naive_bytes / 10 / 1024,
            "KiB",
            baseline=per_npc / 1024,
            baseline_name="on one shared compiled policy",
            n=10,
        ),
        row(
            "memory per NPC, 100 NPCs after 40 turns each (history capped at 12)",
            long_bytes / len(long_npcs) / 1024,
            "KiB",
            baseline=per_npc / 1024,
            baseline_name="3 turns each",
            n=len(long_npcs),
        ),
        row(
            f"spawn and start {count} NPCs (opening lines and decisions)",
            untraced_ms,
            "ms",
            n=count,
        ),
        row(
            f"spawn, start and 3 turns of {len(npcs)} NPCs, under tracemalloc",
            spawn_ms,
            "ms",
            n=len(npcs),
        ),
        row(
            "saved state per NPC (Npc.save), 3 turns",
            median(sizes),
            "bytes",
            p90_value=max(sizes),
            baseline=median(general),
            baseline_name="Session.to_json",
            n=len(sizes),
            note="goal < 2 KB; p90 column: the largest",
        ),
        row(
            "saved state per NPC, 40 turns",
            median(long_sizes),
            "bytes",
            p90_value=max(long_sizes),
            baseline=median(sizes),
            baseline_name="3 turns",
            n=len(long_sizes),
            note="p90 column: the largest",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and NPCs")
    parser.add_argument("--no-model", action="store_true", help="skip the embedded model part")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    figures = overhead(args.quick)
    if not args.no_model:
        figures += with_model(args.quick)
    figures += memory(args.quick)
    load_end = os.getloadavg()
    print(markdown(figures))
    note = f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}"
    print(f"\n{os.cpu_count()} cores; {note}", file=sys.stderr)
    write_json(
        args.json,
        {
            "benchmark": "npc",
            "quick": args.quick,
            "load_average": {"start": load_start, "end": load_end},
            "figures": figures,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
