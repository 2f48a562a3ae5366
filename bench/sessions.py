"""Sessions at scale: memory of many live refund sessions, and restoring one from its JSON.

``--sessions`` (default 100,000) refund conversations are started and advanced to the
mid-conversation point (after the refund request and the order number: in ``confirm_refund``
with slots, facts and a three-turn history), then held in a list. Memory is the growth of
the process's resident set and of the Python heap (``tracemalloc`` off: it would double the
cost) while they are built, divided per session. The baseline is the same number of plain
``transitions`` models on one machine (``Machine.add_model``, the way a raw transitions program
holds one conversation per model; 10,000 of them, per model is what is compared), built in a
fresh interpreter of their own (memory freed here would be reused and hide their cost).

Restoring: ``Session.from_json`` of a mid-conversation session's JSON, median over many calls,
against ``json.loads`` of the same text (the cost of just reading the JSON).

    python bench/sessions.py [--sessions N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _report import markdown, median, row, write_json
from transitions import Machine

from sopagent import Agent, ScriptedBackend, Session, compile_policy, load_policy
from sopagent.audit import NullSink

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "refund.yaml"
SCRIPT = {"hi, I would like my money back for an order": "request_refund"}


def rss_bytes() -> int:
    """The process's current resident set, from /proc (peak from getrusage elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_sessions(agent: Agent, count: int) -> tuple[list[Session], int, int]:
    """Build ``count`` mid-conversation sessions; return them with heap and RSS growth."""
    gc.collect()
    rss0, heap0 = rss_bytes(), sys.getallocatedblocks()
    sessions: list[Session] = []
    refunded = agent.compiled.functions["issue_refund"].__globals__["_REFUNDED"]
    for _ in range(count):
        session = agent.new_session(seed=0)
        agent.start(session)
        agent.respond(session, "hi, I would like my money back for an order")
        agent.respond(session, "it's 10001")
        sessions.append(session)
    refunded.clear()
    gc.collect()
    return sessions, rss_bytes() - rss0, sys.getallocatedblocks() - heap0


def raw_models(compiled: Any, count: int) -> int:
    """RSS growth of ``count`` plain transitions models on one machine, in the same state."""
    config = compiled.machine_config()
    gc.collect()
    rss0 = rss_bytes()
    machine = Machine(
        model=None,
        states=config["states"],
        transitions=config["transitions"],
        initial=config["initial"],
        auto_transitions=False,
    )
    models = []
    for _ in range(count):
        model = type("Conversation", (), {})()
        machine.add_model(model, initial="confirm_refund")
        models.append(model)
    gc.collect()
    grown = rss_bytes() - rss0
    del models, machine
    gc.collect()
    return grown


def raw_in_child(count: int) -> int:
    """`raw_models` in a fresh interpreter, so that no memory freed here is reused."""
    out = subprocess.run(
        [sys.executable, __file__, "--raw-child", str(count)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


def restore_times(session: Session, reps: int) -> tuple[float, float, int]:
    """Median microseconds of Session.from_json and of json.loads of the same JSON."""
    data = session.to_json()
    ours: list[float] = []
    base: list[float] = []
    clock = time.perf_counter_ns
    batch = 50
    for _ in range(reps):
        start = clock()
        for _ in range(batch):
            json.loads(data)
        base.append((clock() - start) / batch / 1000)
        start = clock()
        for _ in range(batch):
            Session.from_json(data)
        ours.append((clock() - start) / batch / 1000)
    restored = Session.from_json(data)
    if restored != session:
        raise SystemExit("a restored session differs from the original")
    return median(ours), median(base), len(data)


def measure(count: int, reps: int) -> dict[str, Any]:
    compiled = compile_policy(load_policy(POLICY))
    agent = Agent(compiled, ScriptedBackend(SCRIPT, default=None), audit=NullSink())
    started = time.perf_counter()
    sessions, rss, blocks = live_sessions(agent, count)
    built = time.perf_counter() - started
    states = defaultdict(int)
    for session in sessions:
        states[session.state] += 1
    sample = sessions[0]
    json_bytes = len(sample.to_json())
    del sessions
    gc.collect()
    raw_count = min(count, 10_000)  # per model is what matters
    raw = raw_in_child(raw_count)
    restore, loads, size = restore_times(sample, reps)
    rows = [
        row(
            f"{count:,} live refund sessions, resident memory",
            rss / 2**20,
            "MB",
            note=f"in {dict(states)}; {built:.1f} s to build",
        ),
        row(
            "memory per live session",
            rss / count,
            "bytes",
            baseline=raw / raw_count,
            baseline_name="one raw transitions model (add_model), same machine",
            note=f"{blocks / count:.0f} heap blocks each; JSON {json_bytes} bytes",
        ),
        row(
            "restore a session from its JSON (Session.from_json)",
            restore,
            "µs",
            baseline=loads,
            baseline_name="json.loads of the same JSON",
            note=f"{size} bytes, 3-turn history",
            n=reps,
        ),
    ]
    return {
        "sessions": count,
        "rss_bytes": rss,
        "raw_models": raw_count,
        "raw_model_rss_bytes": raw,
        "restore_us": restore,
        "json_loads_us": loads,
        "json_bytes": json_bytes,
        "figures": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=200, help="restore batches of 50")
    parser.add_argument("--quick", action="store_true", help="20,000 sessions, 50 batches")
    parser.add_argument("--json", type=Path, metavar="FILE")
    parser.add_argument("--raw-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_child:
        print(raw_models(compile_policy(load_policy(POLICY)), args.raw_child))
        return 0
    count = 20_000 if args.quick else args.sessions
    reps = 50 if args.quick else args.reps
    result = measure(count, reps)
    print(markdown(result["figures"]))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
