"""The 20 retail dev tasks with a real model classifying: how many end with the right actions.

``tests/e2e/test_retail_example.py`` plays the conversations of
``tests/data/tau_retail/retail_conversations.yaml`` with the label a correct classifier gives
each message (20 of 20 pass). Here the same user messages go to a real backend instead, the
embedded model by default, and the figures are:

* tasks whose database actions are exactly the expected ones;
* tasks with a write that was not expected (the confirmations should make this rare: a write
  needs the model to hear a "yes" where the user said one);
* agreement of the model's label with the scripted one, on the messages that reached the model.

    python bench/retail_tasks.py [--backend embedded|scripted] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import markdown, row, write_json

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "tau_retail"


def comparable(actions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for action in actions:
        kwargs = dict(action["kwargs"])
        if "new_item_ids" in kwargs:
            pairs = zip(kwargs.pop("item_ids"), kwargs.pop("new_item_ids"), strict=True)
            kwargs["pairs"] = sorted(pairs)
        elif "item_ids" in kwargs:
            kwargs["item_ids"] = sorted(kwargs["item_ids"])
        out.append((action["name"], json.dumps(kwargs, sort_keys=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["embedded", "scripted"], default="embedded")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from sopagent import (  # noqa: PLC0415 (after the arguments are parsed)
        Agent,
        MemorySink,
        ScriptedBackend,
        compile_policy,
        embedded,
        load_policy,
    )
    from sopagent.decisions import import_decision_module  # noqa: PLC0415

    tools: Any = import_decision_module("tools.py", ROOT / "examples" / "retail")
    compiled = compile_policy(load_policy(ROOT / "policies" / "retail.yaml"))
    tasks = json.loads((DATA / "tasks_dev.json").read_text())
    conversations = yaml.safe_load((DATA / "retail_conversations.yaml").read_text())
    model = embedded() if args.backend == "embedded" else None
    exact = wrong_write = agree = asked = 0
    details = []
    started = time.perf_counter()
    for conversation in conversations["conversations"]:
        turns = conversation["turns"]
        script = {t["text"]: t["intent"] for t in turns if "intent" in t}
        backend = model or ScriptedBackend(script, default="out_of_scope")
        agent = Agent(compiled, backend, audit=MemorySink())
        tools.reset()
        session = agent.new_session()
        agent.start(session)
        for turn in turns:
            if session.ended:
                break
            played = agent.respond(session, turn["text"])
            if played.intent_source == "model":
                asked += 1
                agree += played.intent == script.get(turn["text"], "out_of_scope")
        expected = comparable(tasks[conversation["task"]]["actions"])
        got = comparable(tools.DB.actions)
        exact += got == expected
        unexpected = [a for a in got if a not in expected]
        wrong_write += bool(unexpected)
        missing = [a for a in expected if a not in got]
        details.append({"task": conversation["task"], "exact": got == expected,
                        "unexpected": unexpected, "missing": missing})  # fmt: skip
        print(f"task {conversation['task']}: {'ok' if got == expected else 'differs'}",
              file=sys.stderr)  # fmt: skip
    seconds = time.perf_counter() - started
    rows = [
        row("tasks with exactly the expected actions", exact, "of 20", n=20),
        row("tasks with an unexpected write", wrong_write, "of 20", n=20),
        row("model labels agreeing with the script", 100 * agree / max(asked, 1), "%", n=asked),
        row("time for the 20 conversations", seconds, "s"),
    ]
    print(markdown(rows))
    write_json(args.json, {"backend": args.backend, "rows": rows, "tasks": details})


if __name__ == "__main__":
    main()
