"""Framework overhead per turn with the scripted backend, against a raw transitions machine.

Runs a realistic refund conversation (policies/refund.yaml) through `Agent.respond` with a
`ScriptedBackend` mapping user texts to intents, so every turn takes the whole path of a real
one (slot extraction, classification request, routing, decision functions, rendering, audit
event) except the model itself. Each turn is timed on its own with ``time.perf_counter_ns``;
figures are medians over many repetitions, warm-up excluded, garbage collector enabled.

The baseline is measured in the same process, interleaved with the turns: a plain
``transitions.Machine`` built from the same ``compiled.machine_config()`` with one model
object, firing one ``trigger`` (and, for the whole conversation, the same sequence of
transitions the agent fired). Also measured: session JSON round trip and size, compile time
(against building the raw machine), and ``import sopagent`` in a fresh interpreter.

    python bench/overhead.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import markdown, median, row, write_json
from transitions import Machine

import sopagent
from sopagent import Agent, ScriptedBackend, Session, compile_policy, load_policy
from sopagent.audit import MemorySink, NullSink

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "refund.yaml"

# (kind, user text, scripted/forced intent, expected state after the turn)
# Texts are not intent examples of the policy, so the backend is asked (as a model would be),
# except the order number, which slot extraction alone routes.
CONVERSATION: tuple[tuple[str, str, str | None, str], ...] = (
    ("transition", "hi, I would like my money back for an order", "request_refund", "ask_order"),
    ("slots + 2 decisions", "it's 10001", None, "confirm_refund"),
    ("steady: global say", "how do refunds work here?", "ask_refund_policy", "confirm_refund"),
    ("steady: fallback", "what's the weather tomorrow", "out_of_scope", "confirm_refund"),
    ("decision + transition", "yes do it", "affirm", "anything_else"),
    ("to terminal", "no that's everything", "deny", "closed"),
)
STEADY_TEXT = "how do refunds work here?"
# From confirm_refund: a decision function runs (it may read the session's history).
DECIDE_TEXT = "yes do it"


# -- the agent side ----------------------------------------------------------------------------


def make_agent(compiled: sopagent.CompiledPolicy, sink: Any) -> tuple[Agent, ScriptedBackend]:
    script = {text: intent for _, text, intent, _ in CONVERSATION if intent is not None}
    backend = ScriptedBackend(script, default=None)
    return Agent(compiled, backend, audit=sink), backend


def reset_world(agent: Agent, backend: ScriptedBackend, sink: Any) -> None:
    """Undo what a conversation left behind (outside the timed region)."""
    # The example's order service remembers issued refunds in a module global.
    getattr(agent.compiled.functions["issue_refund"], "__globals__")["_REFUNDED"].clear()  # noqa: B009
    backend.requests.clear()
    if isinstance(sink, MemorySink):
        sink.events.clear()


def run_conversation(
    agent: Agent, *, forced: bool, check: bool, out: dict[str, list[int]]
) -> tuple[list[sopagent.Turn], int]:
    """Run one conversation, appending each turn's nanoseconds to ``out[kind]``.

    Returns the turns and the conversation's total nanoseconds (the sum of its turns).
    """
    clock = time.perf_counter_ns
    session = agent.new_session()
    start = clock()
    first = agent.start(session)
    total = clock() - start
    out["start"].append(total)
    turns = [first]
    for kind, text, intent, expected in CONVERSATION:
        label = intent if forced else None
        start = clock()
        turn = agent.respond(session, text, intent=label)
        elapsed = clock() - start
        out[kind].append(elapsed)
        total += elapsed
        turns.append(turn)
        if check and turn.state_after != expected:
            raise SystemExit(
                f"unexpected route: {text!r} led to {turn.state_after!r}, not {expected!r}"
                f" (path {turn.path}, error {turn.error})"
            )
    return turns, total


def raw_transitions(
    compiled: sopagent.CompiledPolicy, turns: list[sopagent.Turn]
) -> list[tuple[str, str]]:
    """The (source, trigger) pairs the agent fired, read from the turns' paths."""
    by_pair: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in compiled.machine_config()["transitions"]:
        by_pair[(t["source"], t["dest"])].append(t["trigger"])
    fired: list[tuple[str, str]] = []
    for turn in turns:
        states = list(turn.path) if turn.index == 0 else [turn.state_before, *turn.path]
        outcomes = {d.state: f"outcome:{d.outcome}" for d in turn.decisions}
        for source, dest in itertools.pairwise(states):
            candidates = by_pair[(source, dest)]
            preferred = [f"intent:{turn.intent}", outcomes.get(source, ""), "filled"]
            trigger = next((p for p in preferred if p in candidates), candidates[0])
            fired.append((source, trigger))
    return fired


# -- the raw baseline ---------------------------------------------------------------------------


class RawModel:
    """The one model object of the raw machine."""

    state: str


def raw_machine(compiled: sopagent.CompiledPolicy) -> tuple[Machine, RawModel]:
    config = compiled.machine_config()
    model = RawModel()
    machine = Machine(
        model=model,
        states=config["states"],
        transitions=config["transitions"],
        initial=config["initial"],
        auto_transitions=False,
    )
    return machine, model


def time_raw(machine: Machine, model: RawModel, fired: list[tuple[str, str]], batch: int) -> float:
    """Nanoseconds for one replay of ``fired`` (averaged over a batch of replays)."""
    events = [(source, machine.events[trigger]) for source, trigger in fired]
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(batch):
        for source, event in events:
            model.state = source
            event.trigger(model)
    return (clock() - start) / batch


# -- other figures ------------------------------------------------------------------------------


def import_time(runs: int, *, bytecode: bool) -> tuple[float, float]:
    """Median wall seconds of ``python -c "import sopagent"`` and of ``python -c "pass"``.

    With ``bytecode``, every module's bytecode is cached (in a temporary
    ``PYTHONPYCACHEPREFIX``, filled by an excluded first run), as for an installed package;
    without, ``PYTHONDONTWRITEBYTECODE=1`` and only existing ``__pycache__`` directories are
    used, so a source checkout without them (sopagent/ here) is compiled on every import.
    """
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="sopagent-pycache-") as cache:
        if bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = cache
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
        with_import: list[float] = []
        bare: list[float] = []
        for attempt in range(runs + 1):
            for code, out in (("import sopagent", with_import), ("pass", bare)):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
                if attempt:  # the first run is a warm-up (and fills the bytecode cache)
                    out.append(time.perf_counter() - start)
    return median(with_import), median(bare)


def timed_ns(function: Callable[[], Any]) -> int:
    start = time.perf_counter_ns()
    function()
    return time.perf_counter_ns() - start


# -- main ---------------------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    scale = 5 if quick else 1
    conversations = 1500 // scale
    warmup = 100 // scale
    steady_turns = 4000 // scale
    rounds = 10
    raw_batch = 20
    compile_runs = 30 // scale
    roundtrips = 3000 // scale
    import_runs = 5

    compiled = compile_policy(load_policy(POLICY))
    memory, null = MemorySink(), NullSink()
    agents = {
        "memory": (*make_agent(compiled, memory), memory),
        "null": (*make_agent(compiled, null), null),
    }
    machine, model = raw_machine(compiled)

    # Warm-up, and the transitions each turn fires (for the raw replay).
    per_kind_fired: dict[str, list[tuple[str, str]]] = {}
    for agent, backend, sink in agents.values():
        for _ in range(warmup):
            sink_turns, _ = run_conversation(agent, forced=False, check=True, out=defaultdict(list))
            reset_world(agent, backend, sink)
    kinds = ["start", *(kind for kind, *_ in CONVERSATION)]
    for kind, turn in zip(kinds, sink_turns, strict=True):
        per_kind_fired[kind] = raw_transitions(compiled, [turn])
    fired_all = raw_transitions(compiled, sink_turns)
    one_transition = [("greeting", "intent:request_refund")]

    # Steady-state sessions: mid-conversation (short history) and after many turns (history
    # capped at its maximum). Each repetition of the short one starts from the same snapshot.
    agent_null, backend_null, _ = agents["null"]
    mid = agent_null.new_session()
    agent_null.start(mid)
    for _, text, _, _ in CONVERSATION[:2]:
        agent_null.respond(mid, text)
    mid_json = mid.to_json()
    long_session = Session.from_json(mid_json)
    for _ in range(300):
        agent_null.respond(long_session, STEADY_TEXT)
    long_json = long_session.to_json()
    backend_null.requests.clear()

    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        # Raw baseline: one transition, and the whole conversation's transitions.
        for _ in range(max(steady_turns // rounds // raw_batch, 20)):
            samples["raw one"].append(time_raw(machine, model, one_transition, raw_batch))
        for _ in range(max(conversations // rounds // 4, 10)):
            samples["raw conversation"].append(time_raw(machine, model, fired_all, 4))
        for kind, fired in per_kind_fired.items():
            if fired:
                for _ in range(max(steady_turns // rounds // raw_batch, 20)):
                    samples[f"raw {kind}"].append(
                        time_raw(machine, model, fired, max(raw_batch // len(fired), 1))
                    )
        # Whole conversations, both sinks, scripted and forced intents.
        for sink_name, (agent, backend, sink) in agents.items():
            for forced in (False, True):
                if forced and sink_name == "memory":
                    continue
                by_kind: dict[str, list[int]] = defaultdict(list)
                totals: list[int] = []
                tag = f"{sink_name}{' forced' if forced else ''}"
                for _ in range(conversations // rounds):
                    # Paired: a raw trigger timed just before and just after the conversation,
                    # so that a machine whose speed drifts cancels out of each ratio.
                    before = time_raw(machine, model, one_transition, raw_batch)
                    turns: dict[str, list[int]] = defaultdict(list)
                    _, total = run_conversation(agent, forced=forced, check=False, out=turns)
                    raw_around = (before + time_raw(machine, model, one_transition, raw_batch)) / 2
                    samples[f"{tag} paired raw"].append(raw_around)
                    for kind, values in turns.items():
                        by_kind[kind].extend(values)
                        samples[f"{tag} paired"].extend(v / raw_around for v in values)
                    totals.append(total)
                    reset_world(agent, backend, sink)
                for kind, values in by_kind.items():
                    samples[f"{tag} {kind}"].extend(values)
                    samples[f"{tag} all turns"].extend(values)
                samples[f"{tag} conversation"].extend(totals)
        # Steady-state turn from a short-history snapshot, and on a long session.
        for _ in range(steady_turns // rounds):
            session = Session.from_json(mid_json)
            samples["steady short"].append(
                timed_ns(functools.partial(agent_null.respond, session, STEADY_TEXT))
            )
        for _ in range(steady_turns // rounds):
            samples["steady long"].append(
                timed_ns(lambda: agent_null.respond(long_session, STEADY_TEXT))
            )
        # A turn that runs a decision function, on both sessions (each from its snapshot).
        for _ in range(max(steady_turns // rounds // 4, 20)):
            for key, snapshot in (("decide short", mid_json), ("decide long", long_json)):
                session = Session.from_json(snapshot)
                gc.collect(0)  # its objects are young: not this turn's collection to pay for
                samples[key].append(
                    timed_ns(functools.partial(agent_null.respond, session, DECIDE_TEXT))
                )
                reset_world(agent_null, backend_null, null)
        backend_null.requests.clear()
        # Session JSON round trip of the mid-conversation session.
        for _ in range(roundtrips // rounds):
            samples["roundtrip"].append(timed_ns(lambda: Session.from_json(mid.to_json())))
        samples["roundtrip long"].extend(
            timed_ns(lambda: Session.from_json(long_session.to_json()))
            for _ in range(max(roundtrips // rounds // 10, 5))
        )

    # Compile time, against building the raw machine from the same config.
    compile_ns: list[int] = []
    machine_ns: list[int] = []
    config = compiled.machine_config()
    for _ in range(compile_runs):
        compile_ns.append(timed_ns(lambda: compile_policy(load_policy(POLICY))))
        machine_ns.append(
            timed_ns(
                lambda: Machine(
                    model=RawModel(),
                    states=config["states"],
                    transitions=config["transitions"],
                    initial=config["initial"],
                    auto_transitions=False,
                )
            )
        )
    gc.collect()
    imported_s, bare_s = import_time(import_runs, bytecode=True)
    imported_src_s, bare_src_s = import_time(import_runs, bytecode=False)

    us = {key: median(values) / 1000 for key, values in samples.items()}

    def paired_row(sink_name: str, tag: str) -> dict[str, Any]:
        figure = row(
            f"turn vs raw trigger, paired ({sink_name})",
            us[f"{tag} all turns"],
            "µs",
            baseline=us[f"{tag} paired raw"],
            baseline_name="raw trigger timed around each conversation",
            n=len(samples[f"{tag} paired"]),
            note="ratio: median over turns of turn / raw trigger timed around its conversation",
        )
        figure["ratio"] = round(median(samples[f"{tag} paired"]), 2)
        return figure

    raw_one = us["raw one"]
    rows = [
        row(
            "raw transitions trigger (1 transition)",
            raw_one,
            "µs",
            note="baseline: Machine(auto_transitions=False) from compiled.machine_config()",
            n=len(samples["raw one"]) * raw_batch,
        ),
        row(
            "turn, median over the conversation (MemorySink)",
            us["memory all turns"],
            "µs",
            baseline=raw_one,
            baseline_name="1 raw trigger",
            n=len(samples["memory all turns"]),
        ),
        row(
            "turn, median over the conversation (NullSink)",
            us["null all turns"],
            "µs",
            baseline=raw_one,
            baseline_name="1 raw trigger",
            n=len(samples["null all turns"]),
        ),
        paired_row("MemorySink", "memory"),
        paired_row("NullSink", "null"),
        row(
            "turn, forced intents (NullSink)",
            us["null forced all turns"],
            "µs",
            baseline=raw_one,
            baseline_name="1 raw trigger",
            n=len(samples["null forced all turns"]),
        ),
        row(
            f"whole conversation, start + {len(CONVERSATION)} turns (NullSink)",
            us["null conversation"],
            "µs",
            baseline=us["raw conversation"],
            baseline_name=f"raw replay of its {len(fired_all)} transitions",
            n=len(samples["null conversation"]),
        ),
        row(
            f"whole conversation, start + {len(CONVERSATION)} turns (MemorySink)",
            us["memory conversation"],
            "µs",
            baseline=us["raw conversation"],
            baseline_name=f"raw replay of its {len(fired_all)} transitions",
            n=len(samples["memory conversation"]),
        ),
    ]
    for kind in kinds:
        fired = per_kind_fired[kind]
        if fired:
            baseline = us[f"raw {kind}"]
            base_name = f"raw: {len(fired)} trigger{'s' if len(fired) > 1 else ''}"
        else:
            baseline, base_name = raw_one, "1 raw trigger; the turn fires none"
        # Both sinks: the framework-turn target is decided with MemorySink.
        rows += [
            row(
                f"turn kind '{kind}' ({label})",
                us[f"{sink} {kind}"],
                "µs",
                baseline=baseline,
                baseline_name=base_name,
                n=len(samples[f"{sink} {kind}"]),
                note=" -> ".join(f"{s}:{t}" for s, t in fired),
            )
            for sink, label in (("null", "NullSink"), ("memory", "MemorySink"))
        ]
    # The same turn on a short history (against a raw trigger) and at the cap (against itself).
    for label, key in (("steady turn", "steady"), ("decision turn", "decide")):
        rows += [
            row(
                f"{label}, {len(mid.history)}-turn history (NullSink)",
                us[f"{key} short"],
                "µs",
                baseline=raw_one,
                baseline_name="1 raw trigger",
                n=len(samples[f"{key} short"]),
            ),
            row(
                f"{label}, 200-turn history (NullSink)",
                us[f"{key} long"],
                "µs",
                baseline=us[f"{key} short"],
                baseline_name=f"{len(mid.history)}-turn history",
                n=len(samples[f"{key} long"]),
            ),
        ]
    rows += [
        row(
            "session JSON round trip, mid-conversation",
            us["roundtrip"],
            "µs",
            n=len(samples["roundtrip"]),
            note="Session.from_json(s.to_json()) in state confirm_refund",
        ),
        row(
            "session JSON round trip, 200-turn history",
            us["roundtrip long"],
            "µs",
            baseline=us["roundtrip"],
            baseline_name="mid-conversation",
            n=len(samples["roundtrip long"]),
        ),
        row("session size, mid-conversation", len(mid_json.encode()), "bytes"),
        row(
            "session size, 200-turn history",
            len(long_session.to_json().encode()),
            "bytes",
            baseline=len(mid_json.encode()),
            baseline_name="mid-conversation",
        ),
        row(
            "compile refund policy (load_policy + compile_policy)",
            median(compile_ns) / 1e6,
            "ms",
            baseline=median(machine_ns) / 1e6,
            baseline_name="raw Machine from the same config",
            n=len(compile_ns),
        ),
        row(
            "import sopagent (fresh interpreter, bytecode cached)",
            (imported_s - bare_s) * 1000,
            "ms",
            note=f"python -c 'import sopagent' {imported_s * 1000:.0f} ms"
            f" minus python -c 'pass' {bare_s * 1000:.0f} ms, medians of {import_runs}",
            n=import_runs,
        ),
        row(
            "import sopagent (fresh interpreter, PYTHONDONTWRITEBYTECODE=1)",
            (imported_src_s - bare_src_s) * 1000,
            "ms",
            baseline=(imported_s - bare_s) * 1000,
            baseline_name="bytecode cached",
            note=f"{imported_src_s * 1000:.0f} ms minus {bare_src_s * 1000:.0f} ms, medians of"
            f" {import_runs}; sopagent/__pycache__"
            f" {'present' if (ROOT / 'sopagent' / '__pycache__').is_dir() else 'absent'}",
            n=import_runs,
        ),
    ]
    return {
        "benchmark": "overhead",
        "quick": quick,
        "policy": str(POLICY.relative_to(ROOT)),
        "conversation": [
            {"kind": k, "text": t, "intent": i, "state_after": s} for k, t, i, s in CONVERSATION
        ],
        "figures": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the repetitions")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(markdown(result["figures"]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
