"""Framework overhead in instructions: the refund conversation of overhead.py under callgrind.

Wall-clock figures on a shared machine drift with its load (another job, CPU steal); an
instruction count does not: the same interpreter, code and inputs execute the same
instructions whatever else runs. Each side runs in a fresh interpreter under
``valgrind --tool=callgrind``, twice, with a few and with many repetitions; the difference of
the two totals, divided by the difference in repetitions, is the cost of one repetition with
start-up (interpreter, imports, compiling the policy) taken out.

- **raw**: the 7 transitions the conversation fires, replayed on a plain ``transitions``
  machine built from the same config (overhead.py's baseline), per conversation and per
  trigger.
- **agent**: start + 6 turns through ``Agent.respond`` with the scripted backend, audit events
  to ``NullSink`` and to ``MemorySink``; per conversation and per turn (a seventh of it), each
  against the raw figures.

Instructions are not time (a cache miss costs more than an add), so this backs up the timed
figures of overhead.py rather than replacing them. Needs valgrind (``apt-get install
valgrind``); without it the benchmark reports that and exits 0.

    python bench/instructions.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _report import markdown, row, write_json

HERE = Path(__file__).resolve().parent
TURNS = 7  # start + the 6 user turns of overhead.CONVERSATION
_COLLECTED = re.compile(r"Collected : (\d+)")


def child(mode: str, reps: int) -> None:
    """Run ``reps`` repetitions of one side (inside valgrind)."""
    from overhead import (  # noqa: PLC0415 (the child alone needs sopagent loaded)
        POLICY,
        make_agent,
        raw_machine,
        raw_transitions,
        reset_world,
        run_conversation,
    )

    from sopagent import compile_policy, load_policy  # noqa: PLC0415
    from sopagent.audit import MemorySink, NullSink  # noqa: PLC0415

    compiled = compile_policy(load_policy(POLICY))
    sink = MemorySink() if mode == "memory" else NullSink()
    agent, backend = make_agent(compiled, sink)
    turns, _ = run_conversation(agent, forced=False, check=True, out=defaultdict(list))
    reset_world(agent, backend, sink)
    if mode == "raw":
        machine, model = raw_machine(compiled)
        events = [(source, machine.events[t]) for source, t in raw_transitions(compiled, turns)]
        for _ in range(reps):
            for source, event in events:
                model.state = source
                event.trigger(model)
        return
    for _ in range(reps):
        run_conversation(agent, forced=False, check=False, out=defaultdict(list))
        reset_world(agent, backend, sink)


def collected(valgrind: str, mode: str, reps: int) -> int:
    """Instructions callgrind counted for a whole child run."""
    command = [
        valgrind,
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        str(reps),
    ]
    # One string-hash seed for every child: dicts and sets then probe alike in each run, so
    # two runs of the same code count the same instructions.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=HERE, env=env)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total for {mode}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def per_repetition(valgrind: str, mode: str, few: int, many: int) -> float:
    with ThreadPoolExecutor(max_workers=2) as pool:
        low, high = pool.map(lambda reps: collected(valgrind, mode, reps), (few, many))
    return (high - low) / (many - few)


def run(quick: bool = False) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {"benchmark": "instructions", "skipped": "valgrind is not installed", "figures": []}
    few, many = (20, 220) if quick else (50, 550)
    counts = {mode: per_repetition(valgrind, mode, few, many) for mode in ("raw", "null", "memory")}
    raw_trigger = counts["raw"] / TURNS
    rows = [
        row("raw replay of the conversation's 7 transitions", counts["raw"] / 1000, "k instr"),
        row("raw transitions trigger", raw_trigger / 1000, "k instr"),
    ]
    for mode, sink in (("null", "NullSink"), ("memory", "MemorySink")):
        rows += [
            row(
                f"conversation, start + 6 turns ({sink})",
                counts[mode] / 1000,
                "k instr",
                baseline=counts["raw"] / 1000,
                baseline_name="raw replay of its 7 transitions",
            ),
            row(
                f"turn, mean over the conversation ({sink})",
                counts[mode] / TURNS / 1000,
                "k instr",
                baseline=raw_trigger / 1000,
                baseline_name="1 raw trigger",
            ),
        ]
    return {
        "benchmark": "instructions",
        "repetitions": {"few": few, "many": many},
        "instructions_per_conversation": counts,
        "figures": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    result = run(quick=args.quick)
    if "skipped" in result:
        print(f"instructions: skipped ({result['skipped']})")
    else:
        print(markdown(result["figures"]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
