"""Intent accuracy and out-of-scope rejection of the embedded model on CLINC150 (10 intents).

Runs every test utterance of ten banking intents, and the out-of-scope test set, through a
fresh session of ``bench/clinc/banking10.yaml`` with the shipped prompt, and reports accuracy,
out-of-scope recall and precision, and per-turn latency.

    python bench/clinc_eval.py [--oos N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import sopagent
from sopagent.audit import NullSink

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oos", type=int, default=1000, help="out-of-scope utterances to use")
    parser.add_argument("--limit", type=int, default=0, help="in-scope utterances (0: all)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    data = json.loads((HERE / "data" / "clinc150_banking10.json").read_text())
    cases = [(text, intent) for text, intent in data["test"]]
    if args.limit:
        cases = cases[: args.limit]
    cases += [(text, "out_of_scope") for text, _ in data["oos_test"][: args.oos]]

    started = time.perf_counter()
    agent = sopagent.load_agent(HERE / "clinc" / "banking10.yaml", audit=NullSink())
    load_s = time.perf_counter() - started
    confusion: Counter[tuple[str, str]] = Counter()
    latencies: list[float] = []
    for text, expected in cases:
        session = agent.new_session()
        turn = agent.respond(session, text)
        predicted = turn.intent or "out_of_scope"
        confusion[(expected, predicted)] += 1
        latencies.append(turn.latency_ms)
    in_scope = [c for c in cases if c[1] != "out_of_scope"]
    correct_in = sum(n for (e, p), n in confusion.items() if e == p and e != "out_of_scope")
    oos_total = len(cases) - len(in_scope)
    oos_caught = confusion[("out_of_scope", "out_of_scope")]
    predicted_oos = sum(n for (e, p), n in confusion.items() if p == "out_of_scope")
    latencies.sort()
    figures = {
        "in_scope_utterances": len(in_scope),
        "oos_utterances": oos_total,
        "in_scope_accuracy": round(correct_in / len(in_scope), 4) if in_scope else None,
        "oos_recall": round(oos_caught / oos_total, 4) if oos_total else None,
        "oos_precision": round(oos_caught / predicted_oos, 4) if predicted_oos else None,
        "overall_accuracy": round((correct_in + oos_caught) / len(cases), 4),
        "latency_ms_median": round(statistics.median(latencies), 2),
        "latency_ms_p90": round(latencies[int(0.9 * (len(latencies) - 1))], 2),
        "load_s": round(load_s, 2),
    }
    for key, value in figures.items():
        print(f"{key:24} {value}")
    errors = Counter({k: v for k, v in confusion.items() if k[0] != k[1]})
    print("most frequent confusions:", errors.most_common(8))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
