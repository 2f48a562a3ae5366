"""Cost of `sopagent verify` on generated policies of 10, 100, 1,000 and 10,000 states.

Each policy comes from ``bench/generate_policy.py`` (20 intents, a seeded random graph with
decision states, slot filling and one terminal state) with five properties of every kind the
exhaustive engine checks: a ``reachable`` game, a ``before`` precedence and an ``at_most_once``
safety property (both proved: the product of the machine with their monitors is searched in
full), a ``never`` that fails (a shortest counterexample is built), and a bounded ``leads_to``.

For each size, in one process:

- **exhaustive verify**: `sopagent._verify.verify(compiled, engines=["exhaustive"])`, wall
  time, median of ``--reps`` runs (each run explores a fresh abstract machine), and of it the
  **exploration** alone (`AbstractMachine(compiled).explore()`, timed in the same runs) and the
  **property checks** (the rest);
- **steps** and **nodes**: turns of the real agent the exploration ran (one per node and
  input, one per pending decision and outcome) and nodes of the abstract machine;
- **exploration per step**: the exploration's time over its steps (a mean, so it takes in
  every pause of a shared machine), and **one step**: 2,000 steps of the explored machine
  timed one by one (a median), both against the baseline measured in the same run on the
  same policy: one real `Agent.respond` turn with a forced intent (NullSink audit), median of
  2,000;
- **peak memory**: tracemalloc's peak during one more exhaustive run (allocations by Python,
  the machine and its monitors), against the compiled policy's own allocations;
- **growth**: time, steps and memory over the previous size, next to the growth of states.

    python bench/verify_scale.py [--quick] [--reps N] [--sizes 10 100 1000 10000] [--json FILE]

``--quick`` stops at 1,000 states with one repetition.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _report import markdown, median, row, write_json
from generate_policy import generate

from sopagent import Agent, ScriptedBackend, compile_policy, load_policy
from sopagent._explore import AbstractMachine
from sopagent._verify import verify
from sopagent.audit import NullSink

INTENTS = 20


def properties(states: int) -> dict[str, object]:
    """Five properties, one of each kind the exhaustive engine checks."""
    last = f"s{states - 1}"
    return {
        "can_end": {"description": "The end stays reachable.", "reachable": {"ended": True}},
        "end_after_start": {
            "description": "The last state only after the first.",
            "never": {"state": last},
            "before": {"state": "s0"},
        },
        "greeting_once": {
            "description": "The first line is said at most once.",
            "at_most_once": {"say": "say_s0"},
        },
        "never_the_end": {
            "description": "Fails: a shortest conversation to the end is built.",
            "never": {"ended": True},
        },
        "ends_soon": {
            "description": "Saying intent_0 three times ends the conversation.",
            "leads_to": {"ended": True},
            "within": 3,
            "saying": "intent_0",
        },
    }


def turn_baseline(compiled: Any, samples: int) -> float:
    """Median seconds of one real forced-intent turn on the policy."""
    agent = Agent(compiled, ScriptedBackend(), audit=NullSink())
    initial = compiled.policy.initial
    label = next(iter(compiled.states[initial].routes), "out_of_scope")
    times = []
    session = agent.new_session()
    agent.start(session)
    saved = session.to_json()
    for _ in range(samples):
        session = type(session).from_json(saved)
        started = time.perf_counter()
        agent.respond(session, "go", intent=label)
        times.append(time.perf_counter() - started)
    return median(times)


def step_timing(compiled: Any, samples: int) -> float:
    """Median seconds of one abstract step, over the first ``samples`` of an explored machine."""
    machine = AbstractMachine(compiled)
    machine.explore()
    moves = [
        (node, move.input)
        for node in machine.nodes
        if node.kind == "rest"
        for move in machine.moves(node)
    ][:samples]
    times = []
    for node, given in moves:
        started = time.perf_counter()
        machine._step(node, given)
        times.append(time.perf_counter() - started)
    return median(times)


def measure(states: int, reps: int, workdir: Path) -> dict[str, Any]:
    path = generate(
        workdir / f"gen{states}", states=states, intents=INTENTS, properties=properties(states)
    )
    tracemalloc.start()
    compiled = compile_policy(load_policy(path))
    _, compiled_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times = []
    explored = []
    report = None
    for _ in range(reps):
        gc.collect()
        started = time.perf_counter()
        report = verify(compiled, engines=["exhaustive"])
        times.append(time.perf_counter() - started)
        gc.collect()
        started = time.perf_counter()
        AbstractMachine(compiled).explore()
        explored.append(time.perf_counter() - started)
    assert report is not None
    gc.collect()
    tracemalloc.start()
    verify(compiled, engines=["exhaustive"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    baseline = turn_baseline(compiled, 2000)
    one_step = step_timing(compiled, 2000)
    seconds = median(times)
    exploration = median(explored)
    return {
        "states": states,
        "intents": INTENTS,
        "seconds": seconds,
        "runs": times,
        "explore_seconds": exploration,
        "explore_runs": explored,
        "nodes": report.nodes,
        "steps": report.steps,
        "per_step": exploration / report.steps,
        "turn": baseline,
        "one_step": one_step,
        "peak_bytes": peak,
        "compiled_peak_bytes": compiled_peak,
        "verdicts": {r.spec.id: r.verdict for r in report.results},
        "counterexample_turns": {
            r.spec.id: r.counterexample.turns for r in report.results if r.counterexample
        },
    }


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    previous: dict[str, Any] | None = None
    for r in results:
        size = f"{r['states']} states x {r['intents']} intents"
        n = len(r["runs"])
        out.append(
            row(
                f"{size}: exhaustive verify",
                r["seconds"] * 1000,
                "ms",
                n=n,
                note=f"{r['nodes']} nodes, {r['steps']} steps",
            )
        )
        out.append(
            row(
                f"{size}: of which exploration",
                r["explore_seconds"] * 1000,
                "ms",
                n=n,
                baseline=r["seconds"] * 1000,
                baseline_name="exhaustive verify",
            )
        )
        out.append(
            row(
                f"{size}: exploration per step (mean)",
                r["per_step"] * 1e6,
                "µs",
                baseline=r["turn"] * 1e6,
                baseline_name="one real forced-intent turn",
            )
        )
        out.append(
            row(
                f"{size}: one step (median)",
                r["one_step"] * 1e6,
                "µs",
                n=2000,
                baseline=r["turn"] * 1e6,
                baseline_name="one real forced-intent turn",
            )
        )
        out.append(
            row(
                f"{size}: peak memory",
                r["peak_bytes"] / 1e6,
                "MB",
                baseline=r["compiled_peak_bytes"] / 1e6,
                baseline_name="compiling the policy",
            )
        )
        if previous is not None:
            growth = r["states"] / previous["states"]
            out.append(
                row(
                    f"{size}: time growth",
                    r["seconds"] / previous["seconds"],
                    "x",
                    baseline=growth,
                    baseline_name="growth of states",
                )
            )
            out.append(
                row(
                    f"{size}: steps growth",
                    r["steps"] / previous["steps"],
                    "x",
                    baseline=growth,
                    baseline_name="growth of states",
                )
            )
            out.append(
                row(
                    f"{size}: memory growth",
                    r["peak_bytes"] / previous["peak_bytes"],
                    "x",
                    baseline=growth,
                    baseline_name="growth of states",
                )
            )
        previous = r
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10, 100, 1000] if args.quick else [10, 100, 1000, 10_000])
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for states in sizes:
            reps = args.reps or (1 if args.quick else (5 if states <= 1000 else 3))
            print(f"{states} states: {reps} run(s)...", file=sys.stderr, flush=True)
            results.append(measure(states, reps, Path(directory)))
    table = rows(results)
    print(markdown(table))
    write_json(args.json, {"rows": table, "sizes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
