"""Cost of conversation tests, of the diagram layout and of the review document.

In one process, each figure next to a baseline measured in the same run:

- **a test turn**: one step of the shipped conversation tests (load excluded: the suite is
  loaded once, then every conversation is run ``--reps`` times), per step, against one plain
  `Agent.respond` turn with a forced intent on the same policy (what a step costs on top of a
  turn: comparing expectations, resetting the decision modules, recording routes);
- **generate**: `sopagent test --generate` on each shipped policy, against one exhaustive
  exploration of its abstract machine (what making the suite concrete costs on top);
- **layout**: the built-in layered layout and SVG of generated policies of 10, 30, 100 and 300
  states (``bench/generate_policy.py``), against compiling the same policy;
- **review**: the whole review document of the refund policy (verify with 200 search
  conversations, the tests, the diagram, HTML), against `sopagent verify` alone.

Medians of ``--reps`` runs. The machine is shared: read ratios, not absolute figures.

    python bench/testing_scale.py [--reps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _report import markdown, median, row, write_json  # noqa: E402
from generate_policy import generate  # noqa: E402

from sopagent import Agent, ScriptedBackend  # noqa: E402
from sopagent._compile import compile_policy  # noqa: E402
from sopagent._diagram import graph_of, svg  # noqa: E402
from sopagent._explore import AbstractMachine  # noqa: E402
from sopagent._generate import generate_suite  # noqa: E402
from sopagent._load import load_policy  # noqa: E402
from sopagent._review import build_review, render_html  # noqa: E402
from sopagent._testing import Suite  # noqa: E402
from sopagent._verify import verify  # noqa: E402
from sopagent.audit import NullSink  # noqa: E402


def timed(function: Callable[[], Any], reps: int) -> tuple[float, list[float]]:
    """Median seconds of ``reps`` calls, and every sample."""
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return median(samples), samples


def plain_turn_ms(policy: Path, count: int = 2000) -> float:
    """Median of one Agent.respond turn with a forced intent (no model), in ms."""
    compiled = compile_policy(load_policy(policy))
    agent = Agent(compiled, ScriptedBackend(), audit=NullSink())
    samples = []
    for _ in range(count):
        session = agent.new_session()
        agent.start(session)
        started = time.perf_counter()
        agent.respond(session, "hello", intent="greet")
        samples.append(time.perf_counter() - started)
    return median(samples) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []

    for name in ("refund", "merchant_npc"):
        policy = ROOT / "policies" / f"{name}.yaml"
        suite = Suite.load([ROOT / "policies" / f"{name}.test.yaml"])
        steps = sum(len(checked.file.conversations[i].steps) for checked, i in suite.items())
        seconds, _ = timed(suite.run, args.reps)
        baseline = plain_turn_ms(policy)
        rows.append(
            row(f"test step ({name}, {steps} steps)", seconds / steps * 1000, "ms",
                baseline=baseline, baseline_name="Agent.respond turn", n=args.reps)
        )  # fmt: skip
        compiled = compile_policy(load_policy(policy))
        out = Path(tempfile.mkdtemp()) / f"{name}.test.yaml"
        made, _ = timed(
            lambda c=compiled, p=policy, o=out: generate_suite(c, p, o), max(1, args.reps // 2)
        )
        explored, _ = timed(lambda c=compiled: AbstractMachine(c).explore(), args.reps)
        rows.append(
            row(f"generate suite ({name})", made * 1000, "ms", baseline=explored * 1000,
                baseline_name="exhaustive exploration", n=max(1, args.reps // 2))
        )  # fmt: skip

    with tempfile.TemporaryDirectory() as directory:
        for states in (10, 30, 100, 300):
            path = generate(Path(directory) / str(states), states=states, intents=20)
            compiled_once = compile_policy(load_policy(path))
            compile_s, _ = timed(lambda p=path: compile_policy(load_policy(p)), args.reps)
            layout_s, _ = timed(lambda c=compiled_once: svg(graph_of(c)), args.reps)
            rows.append(
                row(f"layout + SVG ({states} states)", layout_s * 1000, "ms",
                    baseline=compile_s * 1000, baseline_name="load + compile", n=args.reps)
            )  # fmt: skip

    refund = ROOT / "policies" / "refund.yaml"
    compiled = compile_policy(load_policy(refund))
    review_s, _ = timed(
        lambda: render_html(build_review(compiled, refund, layout="builtin")), args.reps
    )
    verify_s, _ = timed(lambda: verify(compiled), args.reps)
    rows.append(
        row("review document (refund)", review_s * 1000, "ms", baseline=verify_s * 1000,
            baseline_name="verify alone", n=args.reps)
    )  # fmt: skip
    print("Machine shared with other developers; ratios are what to read.\n")
    print(markdown(rows))
    write_json(args.json, {"benchmark": "testing_scale", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
