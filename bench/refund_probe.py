"""Intent accuracy of the embedded model on a probe set of the refund policy's greeting state.

The messages in ``bench/data/refund_probe.jsonl`` are none of the policy's examples: refund
requests phrased in other words, questions about the rules, requests for a person, greetings,
goodbyes and off-topic or injection text. Each is classified with the shipped prompt.

    python bench/refund_probe.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sopagent
from sopagent.audit import NullSink
from sopagent.backends import ClassifyRequest

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    lines = (HERE / "data" / "refund_probe.jsonl").read_text().splitlines()
    cases = [json.loads(line) for line in lines if line.strip()]
    backend = sopagent.embedded()
    agent = sopagent.load_agent(
        HERE.parent / "policies/refund.yaml", backend=backend, audit=NullSink()
    )
    state = agent.compiled.states["greeting"]
    misses: list[str] = []
    for case in cases:
        answer = backend.classify(
            ClassifyRequest(
                text=case["text"],
                labels=state.labels,
                vocabulary=agent.compiled.vocabulary,
                key=agent.policy_hash,
                instructions=agent.compiled.policy.description,
            )
        )
        if answer.intent != case["intent"]:
            misses.append(
                f"{case['text']!r}: {answer.intent} ({answer.score:.2f}), want {case['intent']}"
            )
    figures = {"messages": len(cases), "accuracy": round(1 - len(misses) / len(cases), 4)}
    for key, value in figures.items():
        print(f"{key:28} {value}")
    print("misses of the shipped prompt:")
    for miss in misses:
        print("  " + miss)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
