"""Per-turn latency and tokens with the embedded model (Gemma 3 270M on llama.cpp).

Runs scripted refund conversations (policies/refund.yaml; user texts, not forced labels)
N times each, every repetition in a fresh session, on one backend, and reports:

* cold turns: a model call that evaluated its prompt prefix (and the prompt's calibration), told
  by the turn's token counts (cached tokens under half the prompt); measured on fresh backends
  (the very first turn) and wherever it happens in the run;
* warm turns: a model call whose prefix was already in the KV cache, split by whether the
  previous model call was made in the same state (a backend that keeps one prompt per state
  would have to switch prompts after a state change);
* turns that needed no model call (an intent example, slot values alone);
* tokens per turn (prompt, cached, completion, model calls).

The baseline is the raw cost of llama.cpp in the same process, on the backend's own
``llama_cpp.Llama``: evaluating a prompt prefix of similar length from scratch, and one forward
pass over a user message's tokens appended to that already-evaluated prefix. It is measured
before and after the conversations (machine load drifts), and the medians of both are used.

    python bench/embedded_turns.py [--reps N] [--cold N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _report import markdown, mean, median, p90, row, write_json

import sopagent
from sopagent.audit import NullSink

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "refund.yaml"
PREFIX_TOKENS = 512  # baseline prefix length; refund's classify prompts are ~450-600 tokens

RASA_CALM = {"calls": 1.0, "prompt_tokens": 1000.0, "completion_tokens": 10.0}
"""Rasa's published cost of a CALM turn on its sample bot: one LLM call, ~1,000 prompt tokens,
~10 completion tokens. A published figure, not measured here: the ratio compares orders of
magnitude, not two runs."""


CONVERSATIONS: dict[str, tuple[str, ...]] = {
    "refund": ("I want a refund for my order", "10001", "yes please", "no, that's all"),
    "questions": (
        "hi there, how long does a refund take?",
        "tell me a joke",
        "I'd like to get my money back",
        "it's order 10004",
        "what's your refund policy",
        "no",
    ),
    "verification": (
        "I want a refund for my order",
        "my order number is 10002",
        "the code is 615204",
        "yes",
        "bye",
    ),
    "handoff": ("hello", "can I talk to a person"),
}
FIRST_MESSAGE = CONVERSATIONS["refund"][0]


# -- the raw llama.cpp baseline -----------------------------------------------------------------


def baseline_block(
    llm: Any, prefix: list[int], messages: list[list[int]], reps: int, prefix_reps: int
) -> tuple[list[float], list[float]]:
    """Time prefix evaluations from scratch and message forward passes after the prefix (ms).

    This overwrites the model's KV cache: no backend may use ``llm`` afterwards (a backend
    believes its last prefix is still loaded); backends are created after it, or discarded.
    """
    clock = time.perf_counter_ns
    llm.reset()
    llm.eval(prefix)  # warm-up, not timed: the first evaluation also pages the weights in
    prefix_ms: list[float] = []
    for _ in range(prefix_reps):
        llm.reset()
        start = clock()
        llm.eval(prefix)
        prefix_ms.append((clock() - start) / 1e6)
    forward_ms: list[float] = []
    for _ in range(reps):
        for tokens in messages:
            llm.n_tokens = len(prefix)
            start = clock()
            llm.eval(tokens)
            forward_ms.append((clock() - start) / 1e6)
    return prefix_ms, forward_ms


def prefix_tokens(llm: Any, length: int) -> list[int]:
    """A fixed natural-language prompt of ``length`` tokens (the catalog's texts, repeated)."""
    compiled = sopagent.compile_policy(sopagent.load_policy(POLICY))
    text = "\n".join(t.text for t in compiled.templates.values())
    tokens: list[int] = llm.tokenize(text.encode(), add_bos=True, special=False)
    body = tokens[1:]
    while len(tokens) < length:
        tokens += body
    return tokens[:length]


def message_tokens(llm: Any, text: str) -> list[int]:
    """What the backend appends to its prefix for one message: the text and the answer cue."""
    suffix = " " + " ".join(text.split())[:300] + "\nIntent:"
    tokens: list[int] = llm.tokenize(suffix.encode(), add_bos=False, special=False)
    return tokens


def paired_forward(llm: Any, text: str) -> float | None:
    """Right after a model turn, time one more forward pass of its message (ms).

    The backend leaves its prompt prefix in the KV cache followed by the message; setting
    ``n_tokens`` back to the end of the prefix and evaluating the same message tokens again
    is the raw llama.cpp cost of the turn's forward pass, measured at the same moment (the
    same machine load) as the turn, without disturbing the backend (its next turn does the
    same). ``None`` when the message tokens are not found right before ``n_tokens``.
    """
    tokens = message_tokens(llm, text)
    end = int(llm.n_tokens)
    start = end - len(tokens)
    if start <= 0 or list(llm.input_ids[start:end]) != tokens:
        return None
    llm.n_tokens = start
    began = time.perf_counter_ns()
    llm.eval(tokens)
    return (time.perf_counter_ns() - began) / 1e6


# -- conversations ------------------------------------------------------------------------------


def new_agent(llm: Any, compiled: sopagent.CompiledPolicy) -> sopagent.Agent:
    """An agent on a fresh backend (empty prefix cache) over the already loaded model."""
    return sopagent.Agent(compiled, sopagent.embedded(llm=llm), audit=NullSink())


def forget_refunds(compiled: sopagent.CompiledPolicy) -> None:
    """The example's order service remembers issued refunds in a module global."""
    getattr(compiled.functions["issue_refund"], "__globals__")["_REFUNDED"].clear()  # noqa: B009


def run(reps: int, cold: int, forward_reps: int, prefix_reps: int) -> dict[str, Any]:
    started = time.perf_counter()
    backend = sopagent.embedded()
    llm = backend.llm
    load_s = time.perf_counter() - started
    compiled = sopagent.compile_policy(sopagent.load_policy(POLICY))

    prefix = prefix_tokens(llm, PREFIX_TOKENS)
    texts = sorted({text for conversation in CONVERSATIONS.values() for text in conversation})
    messages = [message_tokens(llm, text) for text in texts]
    print("baseline (before) ...", file=sys.stderr)
    prefix_a, forward_a = baseline_block(llm, prefix, messages, forward_reps, prefix_reps)

    # Cold: the very first classification of a fresh backend (prefix + calibration evaluated).
    print(f"cold first turns x{cold} ...", file=sys.stderr)
    first_turns: list[dict[str, Any]] = []
    for _ in range(cold):
        agent = new_agent(llm, compiled)
        session = agent.new_session()
        agent.start(session)
        start = time.perf_counter_ns()
        turn = agent.respond(session, FIRST_MESSAGE)
        first_turns.append({"ms": (time.perf_counter_ns() - start) / 1e6, "turn": turn})

    # Conversations, all on one fresh backend; sessions are fresh every repetition.
    print(f"conversations x{reps} ...", file=sys.stderr)
    agent = new_agent(llm, compiled)
    last_model_state: str | None = None
    records: list[dict[str, Any]] = []
    intents: dict[tuple[str, int], set[str | None]] = defaultdict(set)
    transcript: list[dict[str, Any]] = []
    skipped = 0
    for rep in range(reps):
        for name, conversation in CONVERSATIONS.items():
            session = agent.new_session()
            agent.start(session)
            for index, text in enumerate(conversation):
                if session.ended:
                    skipped += 1
                    continue
                start = time.perf_counter_ns()
                turn = agent.respond(session, text)
                ms = (time.perf_counter_ns() - start) / 1e6
                paired = paired_forward(llm, text) if turn.model_calls else None
                if turn.model_calls == 0:
                    kind = "no model"
                elif turn.cached_tokens * 2 < turn.prompt_tokens:
                    kind = "cold"  # most of the prompt was evaluated in this turn
                elif turn.state_before == last_model_state:
                    kind = "warm, same state"
                else:
                    kind = "warm, state changed"
                if turn.model_calls:
                    last_model_state = turn.state_before
                records.append({"kind": kind, "ms": ms, "turn": turn, "paired": paired})
                intents[(name, index)].add(turn.intent)
                if rep == 0:
                    transcript.append(
                        {
                            "conversation": name,
                            "user": text,
                            "intent": turn.intent,
                            "score": turn.score,
                            "source": turn.intent_source,
                            "state": f"{turn.state_before} -> {turn.state_after}",
                            "responses": list(turn.response_ids),
                            "model_calls": turn.model_calls,
                            "prompt_tokens": turn.prompt_tokens,
                            "cached_tokens": turn.cached_tokens,
                            "ms": round(ms, 2),
                            "paired_forward_ms": round(paired, 2) if paired else None,
                            "kind": kind,
                        }
                    )
            forget_refunds(compiled)

    print("baseline (after) ...", file=sys.stderr)
    prefix_b, forward_b = baseline_block(llm, prefix, messages, forward_reps, prefix_reps)
    prefix_ms = prefix_a + prefix_b
    forward_ms = forward_a + forward_b

    def pick(*kinds: str) -> list[dict[str, Any]]:
        return [r for r in records if r["kind"] in kinds]

    model_turns = pick("cold", "warm, same state", "warm, state changed")
    warm = pick("warm, same state", "warm, state changed")
    cold_run = pick("cold")
    forward = median(forward_ms)
    raw_prefix = median(prefix_ms) if prefix_ms else None
    prefix_name = f"raw {len(prefix)}-token prefix eval"
    message_lengths = [len(m) for m in messages]
    all_ms = [r["ms"] for r in records]

    def latency_row(name: str, chosen: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        values = [r["ms"] for r in chosen]
        if not values:
            return row(name, float("nan"), "ms", n=0)
        return row(name, median(values), "ms", p90_value=p90(values), n=len(values), **extra)

    def paired_row(name: str, chosen: list[dict[str, Any]]) -> dict[str, Any]:
        """Turn latency against the forward pass timed right after each turn."""
        pairs = [(r["ms"], r["paired"]) for r in chosen if r["paired"]]
        if not pairs:
            return row(name, float("nan"), "ms", n=0)
        figure = row(
            name,
            median([t for t, _ in pairs]),
            "ms",
            p90_value=p90([t for t, _ in pairs]),
            baseline=median([f for _, f in pairs]),
            baseline_name="paired raw forward pass",
            n=len(pairs),
            note="ratio: median of per-turn ratios turn / its paired forward pass",
        )
        figure["ratio"] = round(median([t / f for t, f in pairs]), 2)
        return figure

    def per_turn(chosen: list[dict[str, Any]], field: str) -> float:
        return mean([getattr(r["turn"], field) for r in chosen])

    rows = [
        row("model load (sopagent.embedded())", load_s * 1000, "ms", n=1),
        row(
            f"raw llama.cpp: evaluate a {len(prefix)}-token prefix from scratch",
            raw_prefix or float("nan"),
            "ms",
            p90_value=p90(prefix_ms) if prefix_ms else None,
            n=len(prefix_ms),
            note="llm.reset(); llm.eval(prefix), before and after the conversations",
        ),
        row(
            "raw llama.cpp: forward pass of a message after the prefix",
            forward,
            "ms",
            p90_value=p90(forward_ms),
            n=len(forward_ms),
            note=f"llm.n_tokens = {len(prefix)}; llm.eval(message), before and after the"
            f" conversations; message tokens median {median(message_lengths):g}"
            f" (min {min(message_lengths)}, max {max(message_lengths)})",
        ),
        latency_row(
            "cold: first turn of a fresh backend",
            first_turns,
            baseline=raw_prefix,
            baseline_name=prefix_name,
            note="prefix + calibration + message evaluated",
        ),
        latency_row(
            "cold: model turns that evaluated their prompt (in the run)",
            cold_run,
            baseline=raw_prefix,
            baseline_name=prefix_name,
        ),
        latency_row(
            "warm model turns",
            warm,
            baseline=forward,
            baseline_name="raw forward pass",
        ),
        paired_row("warm model turns, paired", warm),
        paired_row("warm, same state as the previous model call, paired", pick("warm, same state")),
        paired_row(
            "warm, another state than the previous model call, paired",
            pick("warm, state changed"),
        ),
        latency_row("turns without a model call", pick("no model")),
        row("all turns", median(all_ms), "ms", p90_value=p90(all_ms), n=len(all_ms)),
        row(
            "model calls per turn (all turns)",
            per_turn(records, "model_calls"),
            "calls",
            n=len(records),
            baseline=RASA_CALM["calls"],
            baseline_name="Rasa CALM, published",
        ),
        row(
            "prompt tokens per turn (all turns)",
            per_turn(records, "prompt_tokens"),
            "tokens",
            n=len(records),
            baseline=RASA_CALM["prompt_tokens"],
            baseline_name="Rasa CALM, published",
            note="turns without a model call count 0",
        ),
        row(
            "evaluated prompt tokens per turn (all turns, prompt - cached)",
            mean([r["turn"].prompt_tokens - r["turn"].cached_tokens for r in records]),
            "tokens",
            n=len(records),
            baseline=RASA_CALM["prompt_tokens"],
            baseline_name="Rasa CALM, published",
        ),
        row(
            "completion tokens per turn (all turns)",
            per_turn(records, "completion_tokens"),
            "tokens",
            n=len(records),
            baseline=RASA_CALM["completion_tokens"],
            baseline_name="Rasa CALM, published",
        ),
        row(
            "prompt tokens per warm model turn",
            per_turn(warm, "prompt_tokens"),
            "tokens",
            n=len(warm),
            note="prefix + message",
        ),
        row("cached tokens per warm model turn", per_turn(warm, "cached_tokens"), "tokens"),
        row(
            "evaluated tokens per warm model turn (prompt - cached)",
            mean([r["turn"].prompt_tokens - r["turn"].cached_tokens for r in warm]),
            "tokens",
            n=len(warm),
        ),
        row(
            "prompt tokens per cold model turn",
            per_turn(cold_run + first_turns, "prompt_tokens"),
            "tokens",
            n=len(cold_run + first_turns),
            note=f"cached tokens {per_turn(cold_run + first_turns, 'cached_tokens'):g}",
        ),
        row(
            "completion tokens per model turn",
            per_turn(model_turns, "completion_tokens"),
            "tokens",
            n=len(model_turns),
            note="label scoring generates nothing",
        ),
    ]
    unstable = {f"{n}[{i}]": sorted(map(str, v)) for (n, i), v in intents.items() if len(v) > 1}
    return {
        "benchmark": "embedded_turns",
        "policy": str(POLICY.relative_to(ROOT)),
        "reps": reps,
        "turns_skipped_after_conversation_ended": skipped,
        "cold_reps": cold,
        "forward_reps": forward_reps,
        "conversations": {k: list(v) for k, v in CONVERSATIONS.items()},
        "intents_stable_across_reps": not unstable,
        "unstable_intents": unstable,
        "transcript": transcript,
        "figures": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each conversation")
    parser.add_argument("--cold", type=int, default=3, help="fresh backends for cold turns")
    parser.add_argument(
        "--forward-reps", type=int, default=3, help="baseline forward passes per message"
    )
    parser.add_argument(
        "--prefix-reps", type=int, default=3, help="baseline prefix evaluations per block"
    )
    parser.add_argument(
        "--quick", action="store_true", help="--reps 2 --cold 1 --forward-reps 1 --prefix-reps 1"
    )
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.cold, args.forward_reps, args.prefix_reps = 2, 1, 1, 1
    result = run(args.reps, args.cold, args.forward_reps, args.prefix_reps)
    for t in result["transcript"]:
        print(
            f"  {t['conversation']:12} {t['user']!r:42} {t['source']:7} {t['intent']!s:18}"
            f" {t['state']:32} {t['kind']:20} {t['ms']:9.2f} ms",
            file=sys.stderr,
        )
    if not result["intents_stable_across_reps"]:
        print(f"intents differed across repetitions: {result['unstable_intents']}", file=sys.stderr)
    print(markdown(result["figures"]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
