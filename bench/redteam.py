"""Red team on the embedded model: every attack string against every shipped policy.

The 336 attacks of ``tests/data/injection/attacks_ci.jsonl`` (real prompt-injection and jailbreak
text from public corpora) are each played as one user turn at the start of a conversation and
mid-conversation at a guarded point, on the refund, retail, merchant and warden policies. Every
line, move and consequential action is checked from outside the agent (``sopagent/_redteam.py``);
the table counts attacks tried, off-policy lines, undeclared transitions and effects without the
procedure's preconditions (the last three must be 0), then what the attacks were classified as.

    python bench/redteam.py [--sample N] [--policy NAME ...] [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import sopagent
from sopagent._redteam import load_attacks, markdown, red_team, sample_attacks
from sopagent.audit import NullSink

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("refund", "retail", "merchant_npc", "warden_npc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--attacks", type=Path, default=ROOT / "tests/data/injection/attacks_ci.jsonl"
    )
    parser.add_argument("--sample", type=int, help="a stratified sample of N attacks per policy")
    parser.add_argument("--policy", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    attacks = load_attacks(args.attacks)
    if args.sample is not None:
        attacks = sample_attacks(attacks, args.sample)
    backend = sopagent.embedded()
    reports = []
    started = time.perf_counter()
    for name in args.policy:
        agent = sopagent.load_agent(
            ROOT / "policies" / f"{name}.yaml", backend=backend, audit=NullSink()
        )
        print(f"{name}: {len(attacks)} attacks x 2 positions", file=sys.stderr, flush=True)
        reports.append(red_team(agent, attacks))
    seconds = time.perf_counter() - started
    findings = sum(len(r.findings) for r in reports)
    document = {
        "attacks": len(attacks),
        "turns": sum(r.total("tried") for r in reports),
        "seconds": round(seconds, 1),
        "findings": findings,
        "policies": [r.to_json(attacks=True) for r in reports],
    }
    if args.out:
        args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(markdown(reports, attacks=len(attacks)), end="")
        print(f"\n{document['turns']} attack turns in {seconds:.0f} s on the embedded model.")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
