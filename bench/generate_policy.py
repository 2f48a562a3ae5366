"""Generate large, valid policies for scale benchmarks (check, verify, compile, load).

``generate(states=1000, intents=20)`` writes a policy, its catalog and a decision module into a
directory and returns the policy's path. The machine is a seeded random graph that stays
connected and realistic: most states wait for input and route a few intents onward (a chain
keeps every state reachable, extra routes jump forward and back), every tenth state runs a
decision function with two outcomes, one state in fifty collects a slot, and the last state is
terminal. The same arguments always give the same files. ``properties`` adds a
``properties:`` section (for `sopagent verify`).

    python bench/generate_policy.py --states 1000 --intents 20 --out /tmp/gen
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import yaml

__all__ = ["generate"]

_DECISIONS = '''\
"""Decision functions of generated benchmark policies."""

from sopagent import Context, Outcome, decision


@decision(outcomes=["high", "low"])
def by_amount(ctx: Context) -> Outcome | str:
    """Route on the collected amount, when there is one."""
    amount = ctx.slots.get("amount")
    return "high" if amount is not None and amount > 50 else "low"
'''


def _documents(states: int, intents: int, seed: int) -> tuple[dict[str, object], dict[str, object]]:
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(states)]
    intent_names = [f"intent_{i}" for i in range(intents)]
    policy_states: dict[str, dict[str, object]] = {}
    responses: dict[str, str] = {
        "not_understood": "Sorry, I did not understand that.",
        "technical_issue": "Something went wrong on our side; please try again.",
        "ask_amount": "What is the amount?",
        "bad_amount": "That amount is not valid.",
    }
    last = states - 1
    for index, name in enumerate(names):
        responses[f"say_{name}"] = f"You are at step {index}."
        if index == last:
            policy_states[name] = {"say": f"say_{name}", "terminal": True}
            continue
        following = names[index + 1]
        if index % 10 == 9:
            jump = names[min(last, index + rng.randint(1, 20))]
            policy_states[name] = {
                "decide": "by_amount",
                "outcomes": {"high": following, "low": {"to": jump, "say": f"say_{name}"}},
            }
            continue
        routes: dict[str, object] = {intent_names[index % intents]: following}
        for _ in range(rng.randint(1, 3)):
            intent = rng.choice(intent_names)
            if intent in routes:
                continue
            target = rng.randint(max(0, index - 30), min(last, index + 30))
            routes[intent] = names[target]
        state: dict[str, object] = {"say": f"say_{name}", "on": routes}
        if index % 50 == 25:
            state["collect"] = ["amount"]
            state["filled"] = following
        policy_states[name] = state
    policy: dict[str, object] = {
        "sopagent": 1,
        "name": f"generated_{states}_{intents}",
        "description": f"A generated policy of {states} states and {intents} intents.",
        "catalog": "catalog.yaml",
        "decisions": ["decisions.py"],
        "initial": names[0],
        "intents": {
            name: {"description": f"The user means {name.replace('_', ' ')}.", "examples": [name]}
            for name in intent_names
        },
        "slots": {
            "amount": {"type": "integer", "min": 0, "ask": "ask_amount", "invalid": "bad_amount"}
        },
        "global": {"fallback": {"say": "not_understood"}, "error": {"say": "technical_issue"}},
        "states": policy_states,
    }
    catalog: dict[str, object] = {
        "sopagent": 1,
        "catalog": f"generated_{states}",
        "locale": "en",
        "responses": responses,
    }
    return policy, catalog


def generate(
    directory: Path,
    *,
    states: int = 1000,
    intents: int = 20,
    seed: int = 0,
    properties: dict[str, object] | None = None,
) -> Path:
    """Write a generated policy, catalog and decision module into ``directory``.

    Args:
        directory: where the files go (created if needed).
        states: number of states (at least 2).
        intents: number of intents (at least 1).
        seed: seeds the random routes.
        properties: the policy's ``properties`` section, as YAML data (states are named
            ``s0`` to ``s<states-1>``, intents ``intent_0``..., responses ``say_s<i>``).

    Returns:
        The path of the policy file.
    """
    if states < 2 or intents < 1:
        raise ValueError("a generated policy needs at least 2 states and 1 intent")
    policy, catalog = _documents(states, intents, seed)
    if properties:
        policy["properties"] = properties
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    (directory / "decisions.py").write_text(_DECISIONS)
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=1000)
    parser.add_argument("--intents", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(generate(args.out, states=args.states, intents=args.intents, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
