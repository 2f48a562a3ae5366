"""Label scoring with and without prefix reuse, against outlines constrained generation.

The same fixed sample of CLINC150 banking-10 test utterances (evenly spaced through the
in-scope and the out-of-scope test sets) goes through ``Agent.classify`` of
``bench/clinc/banking10.yaml``, on a fresh session per utterance, with three backends over the
same GGUF model file:

1. ``label scoring, prefix reuse``: ``sopagent.embedded()``, the shipped default. The prompt
   stays in the KV cache; each turn evaluates only the message and the label branches.
2. ``label scoring, no reuse``: the same backend class over the same ``llama_cpp.Llama``, but
   ``_loaded`` is set to ``None`` before every call, so the backend believes nothing is cached,
   resets the KV cache and evaluates the whole prompt each time. Everything else (prompt, label
   trie, calibration) is identical, so the difference is the prefix reuse alone.
3. ``outlines constrained generation``: ``from_outlines(outlines.from_llamacpp(llm,
   chat_mode=False))`` over its own ``llama_cpp.Llama`` of the same file (``n_ctx=4096``, and
   the same thread count as the embedded backend). outlines resets the model after every
   generation, so it evaluates the whole prompt each turn too. Its backend reports no token
   usage, so its tokens are counted by wrapping that ``Llama``'s ``eval`` (tokens evaluated) and
   ``create_completion`` (prompt and completion tokens of llama.cpp's own usage figures).

Each backend gets one warm-up call on an out-of-scope training utterance first (for outlines
it compiles the label grammar; for label scoring it evaluates the prompt and its calibration);
the warm-up is reported on its own and left out of the figures. The three backends take turns
utterance by utterance, so load changes on the machine hit all of them alike. Latency is
``Turn.latency_ms``.

    python bench/backend_compare.py [--n N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import markdown, mean, median, p90, row, write_json

import sopagent
from sopagent.audit import NullSink
from sopagent.backends import Classification, ClassifyRequest
from sopagent.backends.llamacpp import LlamaCppBackend, default_model_path

HERE = Path(__file__).parent
OOS = "out_of_scope"


class NoPrefixReuse(LlamaCppBackend):
    """The label-scoring backend made to forget its evaluated prefix before every call."""

    def classify(self, request: ClassifyRequest) -> Classification:
        with self._lock:
            self._loaded = None
        return super().classify(request)


class Counted:
    """Counts what a ``llama_cpp.Llama`` evaluates and what its completions report."""

    def __init__(self, llm: Any) -> None:
        self.evaluated = 0
        self.prompt = 0
        self.completion = 0
        eval_ = llm.eval
        complete = llm.create_completion

        def counting_eval(tokens: Any) -> Any:
            self.evaluated += len(tokens)
            return eval_(tokens)

        def counting_completion(*args: Any, **kwargs: Any) -> Any:
            out = complete(*args, **kwargs)
            usage = (out.get("usage") or {}) if isinstance(out, dict) else {}
            self.prompt += int(usage.get("prompt_tokens", 0))
            self.completion += int(usage.get("completion_tokens", 0))
            return out

        llm.eval = counting_eval
        llm.create_completion = counting_completion

    def take(self) -> tuple[int, int, int]:
        figures = (self.prompt, self.evaluated, self.completion)
        self.evaluated = self.prompt = self.completion = 0
        return figures


def sample(data: dict[str, Any], n: int) -> list[tuple[str, str]]:
    """Evenly spaced in-scope test utterances (two thirds of n) and out-of-scope ones."""
    n_in = round(n * 2 / 3)
    n_oos = n - n_in
    ins = data["test"]
    oos = data["oos_test"]
    cases = [tuple(ins[k * len(ins) // n_in]) for k in range(n_in)]
    cases += [(oos[k * len(oos) // n_oos][0], OOS) for k in range(n_oos)]
    return cases  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120, help="utterances (2/3 in scope, 1/3 not)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    import llama_cpp  # noqa: PLC0415 (optional dependency)
    import outlines  # noqa: PLC0415

    from sopagent.backends.outlines import from_outlines  # noqa: PLC0415

    data = json.loads((HERE / "data" / "clinc150_banking10.json").read_text())
    cases = sample(data, args.n)
    warm_text = data["oos_train"][0][0]  # not in the sample, and not an intent example
    policy = HERE / "clinc" / "banking10.yaml"
    threads = os.cpu_count() or 2

    started = time.perf_counter()
    reuse = sopagent.embedded()
    no_reuse = NoPrefixReuse(reuse.llm)
    out_llm = llama_cpp.Llama(
        str(default_model_path()), n_ctx=4096, n_threads=threads, verbose=False
    )
    counter = Counted(out_llm)
    constrained = from_outlines(outlines.from_llamacpp(out_llm, chat_mode=False))
    load_s = time.perf_counter() - started

    def own_tokens(turn: sopagent.Turn) -> tuple[int, int, int]:
        return (
            turn.prompt_tokens,
            turn.prompt_tokens - turn.cached_tokens,
            turn.completion_tokens,
        )

    def counted_tokens(turn: sopagent.Turn) -> tuple[int, int, int]:  # noqa: ARG001
        return counter.take()

    configs: list[tuple[str, Any, Callable[[sopagent.Turn], tuple[int, int, int]]]] = [
        ("label scoring, prefix reuse (default)", reuse, own_tokens),
        ("label scoring, no prefix reuse", no_reuse, own_tokens),
        ("outlines constrained generation", constrained, counted_tokens),
    ]
    agents = [sopagent.load_agent(policy, backend=b, audit=NullSink()) for _, b, _ in configs]
    results: list[dict[str, Any]] = []
    for (name, _, tokens), agent in zip(configs, agents, strict=True):
        turn = agent.classify(agent.new_session(), warm_text)
        tokens(turn)
        results.append({"name": name, "warmup_ms": turn.latency_ms, "turns": []})
    print(f"loaded in {load_s:.1f} s; {len(cases)} utterances x 3 backends", file=sys.stderr)
    for index, (text, expected) in enumerate(cases):
        for (_, _, tokens), agent, result in zip(configs, agents, results, strict=True):
            turn = agent.classify(agent.new_session(), text)
            prompt, evaluated, completion = tokens(turn)
            result["turns"].append(
                {
                    "text": text,
                    "expected": expected,
                    "predicted": turn.intent or OOS,
                    "source": turn.intent_source,
                    "error": turn.error,
                    "latency_ms": turn.latency_ms,
                    "model_calls": turn.model_calls,
                    "prompt_tokens": prompt,
                    "evaluated_tokens": evaluated,
                    "completion_tokens": completion,
                }
            )
        if (index + 1) % 20 == 0:
            print(f"  {index + 1}/{len(cases)}", file=sys.stderr)

    for result in results:
        turns = result.pop("turns")
        ins = [t for t in turns if t["expected"] != OOS]
        oos = [t for t in turns if t["expected"] == OOS]
        right = [t for t in turns if t["expected"] == t["predicted"]]
        latencies = [t["latency_ms"] for t in turns]
        result.update(
            {
                "n": len(turns),
                "in_scope_accuracy": round(sum(t in right for t in ins) / len(ins), 4)
                if ins
                else None,
                "oos_recall": round(sum(t in right for t in oos) / len(oos), 4) if oos else None,
                "overall_accuracy": round(len(right) / len(turns), 4),
                "latency_ms_median": round(median(latencies), 2),
                "latency_ms_p90": round(p90(latencies), 2),
                "prompt_tokens_per_turn": round(mean([t["prompt_tokens"] for t in turns]), 1),
                "evaluated_tokens_per_turn": round(mean([t["evaluated_tokens"] for t in turns]), 1),
                "completion_tokens_per_turn": round(
                    mean([t["completion_tokens"] for t in turns]), 1
                ),
                "errors": sum(1 for t in turns if t["error"]),
                "turns": turns,
            }
        )
    base = results[0]
    for result in results:
        result["latency_ratio_vs_default"] = round(
            result["latency_ms_median"] / base["latency_ms_median"], 2
        )

    lines = [
        "| backend | in-scope acc. | OOS recall | overall acc. | median ms | p90 ms"
        " | ratio vs (1) | prompt tok/turn | evaluated tok/turn | completion tok/turn"
        " | warm-up ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"| ({i}) {r['name']} | {r['in_scope_accuracy']:.3f} | {r['oos_recall']:.3f}"
            f" | {r['overall_accuracy']:.3f} | {r['latency_ms_median']:.1f}"
            f" | {r['latency_ms_p90']:.1f} | {r['latency_ratio_vs_default']:.2f}x"
            f" | {r['prompt_tokens_per_turn']:g} | {r['evaluated_tokens_per_turn']:g}"
            f" | {r['completion_tokens_per_turn']:g} | {r['warmup_ms']:.0f} |"
        )
    table = "\n".join(lines)
    rows = [
        row(
            f"classify latency: {r['name']}",
            r["latency_ms_median"],
            "ms",
            baseline=base["latency_ms_median"] if r is not base else None,
            baseline_name=base["name"] if r is not base else None,
            n=r["n"],
            p90_value=r["latency_ms_p90"],
        )
        for r in results
    ]
    print(table)
    print()
    print(markdown(rows))
    n_in = sum(1 for c in cases if c[1] != OOS)
    print(
        f"\n{n_in} in-scope + {len(cases) - n_in} out-of-scope utterances; errors:"
        f" {', '.join(str(r['errors']) for r in results)}; load {load_s:.1f} s"
    )
    write_json(
        args.json,
        {
            "benchmark": "backend_compare",
            "n": len(cases),
            "in_scope": n_in,
            "out_of_scope": len(cases) - n_in,
            "threads": threads,
            "load_s": round(load_s, 2),
            "rows": rows,
            "backends": results,
            "table": table,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
