"""Verify step: prove a policy's properties whatever the model says, or find counterexamples.

Two engines, both run by `verify`:

* **exhaustive**: the abstract machine of `sopagent._explore` (every label in every state,
  every declared outcome of every decision) is explored once, then each property is checked on
  it. Safety properties (``never``, ``before``, ``after``, ``at_most_once``, ``never_both``)
  by a breadth-first search of the machine times the property's monitor, ``reachable`` as a
  game in which the user picks what to say and the decision functions are adversaries, and
  ``leads_to`` by a bounded look-ahead over turns. A property holds for every conversation,
  or a shortest counterexample (fewest turns) is returned. Conditions on values (``where``)
  cannot be decided there: such a property is proved only if it holds whatever the values,
  refuted only if it fails whatever they are, and otherwise left to the second engine.
* **search**: Hypothesis generates conversations against the real agent with the real
  decision functions, slot values from each slot's type and examples, and facts from the
  facts' examples, checks every property on each, and shrinks a failing one to a minimal
  transcript. Seeded and bounded; the same seed gives the same conversations.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from sopagent._explore import (
    AbstractMachine,
    Branch,
    Event,
    Input,
    Move,
    Node,
    TurnPath,
    effect_text,
)
from sopagent._findings import Counterexample, EngineResult, Step, any_match
from sopagent._properties import PropertySpec, compile_properties
from sopagent.policy import OUT_OF_SCOPE

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy, CompiledState

__all__ = [
    "Counterexample",
    "EngineResult",
    "PropertyResult",
    "Report",
    "Step",
    "conversation_test",
    "exhaustive",
    "render",
    "transcript",
    "verify",
    "write_counterexamples",
]


@dataclass(frozen=True)
class PropertyResult:
    """Both engines' results for one property, and the verdict."""

    spec: PropertySpec
    exhaustive: EngineResult
    search: EngineResult

    @property
    def verdict(self) -> Literal["proved", "violated", "not_refuted"]:
        """``proved`` for every conversation, ``violated``, or tested without a counterexample."""
        if "violated" in (self.exhaustive.status, self.search.status):
            return "violated"
        if self.exhaustive.status == "proved":
            return "proved"
        return "not_refuted"

    @property
    def counterexample(self) -> Counterexample | None:
        """The counterexample to show: the exhaustive engine's (shortest), else the search's."""
        if self.exhaustive.status == "violated":
            return self.exhaustive.counterexample
        if self.search.status == "violated":
            return self.search.counterexample
        return None

    @property
    def concrete(self) -> Counterexample | None:
        """The counterexample to replay: the search's (real values), else the exhaustive one."""
        if self.search.status == "violated":
            return self.search.counterexample
        return self.counterexample

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON."""
        spec = self.spec
        return {
            "id": spec.id,
            "kind": spec.kind,
            "description": spec.description,
            "property": spec.summary(),
            "location": str(spec.location),
            "verdict": self.verdict,
            "exhaustive": self.exhaustive.to_json(),
            "search": self.search.to_json(),
        }


@dataclass
class Report:
    """Everything `verify` found, with what each engine cost."""

    policy: str
    policy_hash: str
    results: list[PropertyResult]
    nodes: int = 0
    steps: int = 0
    exhaustive_seconds: float = 0.0
    search_seconds: float = 0.0
    conversations: int = 0
    unreadable: tuple[str, ...] = ()

    @property
    def failed(self) -> list[PropertyResult]:
        """The properties with a counterexample."""
        return [r for r in self.results if r.verdict == "violated"]

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON."""
        return {
            "policy": self.policy,
            "policy_hash": self.policy_hash,
            "ok": not self.failed,
            "properties": [r.to_json() for r in self.results],
            "exhaustive": {
                "nodes": self.nodes,
                "steps": self.steps,
                "seconds": round(self.exhaustive_seconds, 3),
                "decisions_read_from_code": not self.unreadable,
                "decisions_not_read": list(self.unreadable),
            },
            "search": {
                "conversations": self.conversations,
                "seconds": round(self.search_seconds, 3),
            },
        }


# --- safety monitors ------------------------------------------------------------------------

Monitor = tuple[bool, ...]


class _Safety:
    """A property's monitor: a few flags, updated event by event.

    ``pessimistic``: unknown values count against the property (to prove it); otherwise in
    its favour (to refute it).
    """

    def __init__(self, spec: PropertySpec, *, pessimistic: bool) -> None:
        self.spec = spec
        self.bad = pessimistic  # the answer for events that can break the property
        self.good = not pessimistic  # the answer for events that protect it
        self.initial: Monitor = (False, False) if spec.kind == "never_both" else (False,)
        self._memo: dict[tuple[Monitor, int], tuple[Monitor, int | None]] = {}
        # Events of other kinds cannot change the monitor.
        self._kinds = frozenset(
            m.kind for m in (*spec.target, *spec.guard, *spec.other, *spec.reset)
        )

    def step(self, state: Monitor, events: tuple[Event, ...]) -> tuple[Monitor, int | None]:
        """The monitor after ``events``, and the index of the event that breaks it, if any."""
        key = (state, id(events))
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        result = self._step(state, events)
        self._memo[key] = result
        return result

    def _step(self, state: Monitor, events: Sequence[Event]) -> tuple[Monitor, int | None]:
        spec, bad, good = self.spec, self.bad, self.good
        kind = spec.kind
        flags = list(state)
        kinds = self._kinds
        for index, event in enumerate(events):
            if event.kind not in kinds:
                continue
            if kind == "never":
                if any_match(spec.target, event, bad):
                    return tuple(flags), index
            elif kind == "before":
                if any_match(spec.target, event, bad) and not flags[0]:
                    return tuple(flags), index
                if any_match(spec.reset, event, bad):
                    flags[0] = False
                if any_match(spec.guard, event, good):
                    flags[0] = True
            elif kind == "after":
                if any_match(spec.target, event, bad) and flags[0]:
                    return tuple(flags), index
                if any_match(spec.reset, event, good):
                    flags[0] = False
                if any_match(spec.guard, event, bad):
                    flags[0] = True
            elif kind == "at_most_once":
                hit = any_match(spec.target, event, bad)
                if hit and flags[0]:
                    return tuple(flags), index
                if any_match(spec.reset, event, good):
                    flags[0] = False
                if hit:
                    flags[0] = True
            elif kind == "never_both":
                first = any_match(spec.target, event, bad)
                second = any_match(spec.other, event, bad)
                if (flags[0] or first) and (flags[1] or second):
                    return tuple(flags), index
                if any_match(spec.reset, event, good):
                    flags = [False, False]
                flags[0] = flags[0] or first
                flags[1] = flags[1] or second
        return tuple(flags), None


SAFETY = frozenset({"never", "before", "after", "at_most_once", "never_both"})


# --- exhaustive engine ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Hop:
    """One step of a path through the abstract machine."""

    node: Node
    move: Move
    branch: Branch


def _cost(node: Node) -> int:
    return 1 if node.kind == "rest" else 0


def _steps(hops: Sequence[_Hop], breaks: tuple[int, int] | None = None) -> list[Step]:
    """Group a path of hops into turns. ``breaks``: (hop index, event index) of the violation."""
    steps: list[Step] = []
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            steps.append(Step(**current))

    for number, hop in enumerate(hops):
        if hop.node.kind in ("start", "rest"):
            close()
            current = {
                "index": len(steps),
                "state": hop.node.state,
                "input": hop.move.input,
                "intent": None if hop.move.input is None else hop.move.input.label,
                "forced": hop.move.input is not None,
                "path": (),
                "responses": (),
                "effects": (),
                "decisions": (),
                "ended": False,
                "failed": False,
                "breaks": None,
                "other_choice": False,
            }
        assert current is not None
        branch = hop.branch
        current["other_choice"] = current["other_choice"] or branch.other_choice
        if branch.failed:
            current["failed"] = True
            current["path"] = ()
            current["decisions"] = ()
            current["responses"] = tuple(e.name for e in branch.events if e.kind == "say")
            current["effects"] = ()
            if current["input"] is not None and current["input"].error:
                current["intent"] = None
        else:
            current["path"] += tuple(e.name for e in branch.events if e.kind == "enter")
            current["responses"] += tuple(e.name for e in branch.events if e.kind == "say")
            current["effects"] += _effects_of(branch.events)
            current["ended"] = current["ended"] or any(e.kind == "ended" for e in branch.events)
            if branch.decision is not None:
                current["decisions"] += (branch.decision,)
        if breaks is not None and breaks[0] == number:
            current["breaks"] = str(branch.events[breaks[1]])
    close()
    return steps


def _effects_of(events: Iterable[Event]) -> tuple[str, ...]:
    """The effects among ``events`` as calls; one a decision may not return ends with ``?``."""
    return tuple(effect_text(e) + ("?" if e.maybe else "") for e in events if e.kind == "effect")


def _finish_turn(machine: AbstractMachine, hops: list[_Hop]) -> list[_Hop]:
    """Complete a turn cut at a pending node by taking its first outcomes."""
    out = list(hops)
    seen: set[Node] = set()
    while out and out[-1].branch.target is not None and out[-1].branch.target.kind == "pending":
        node = out[-1].branch.target
        if node in seen:
            break
        seen.add(node)
        move = machine.moves(node)[0]
        if not move.branches:
            break
        out.append(_Hop(node, move, move.branches[0]))
    return out


def _shortest_paths(machine: AbstractMachine) -> dict[Node, tuple[int, _Hop | None]]:
    """Fewest user turns to reach each node, with the hop that reaches it (0-1 BFS)."""
    cached: dict[Node, tuple[int, _Hop | None]] | None = machine.analyses.get("paths")
    if cached is None:
        cached = machine.analyses["paths"] = _search_paths(machine)
    return cached


def _search_paths(machine: AbstractMachine) -> dict[Node, tuple[int, _Hop | None]]:
    best: dict[Node, tuple[int, _Hop | None]] = {machine.start: (0, None)}
    queue: deque[Node] = deque([machine.start])
    done: set[Node] = set()
    while queue:
        node = queue.popleft()
        if node in done:
            continue
        done.add(node)
        distance = best[node][0]
        cost = _cost(node)
        for move in machine.moves(node):
            for branch in move.branches:
                target = branch.target
                if target is None or branch.failed:
                    continue
                known = best.get(target)
                if known is None or distance + cost < known[0]:
                    best[target] = (distance + cost, _Hop(node, move, branch))
                    if cost:
                        queue.append(target)
                    else:
                        queue.appendleft(target)
    return best


def _path_to(paths: Mapping[Node, tuple[int, _Hop | None]], node: Node) -> list[_Hop]:
    hops: list[_Hop] = []
    while True:
        hop = paths[node][1]
        if hop is None:
            return hops[::-1]
        hops.append(hop)
        node = hop.node


def _check_safety(
    machine: AbstractMachine, spec: PropertySpec, *, pessimistic: bool
) -> tuple[list[_Hop], int] | None:
    """A shortest path that breaks ``spec`` (with the breaking event's index), or None."""
    monitor = _Safety(spec, pessimistic=pessimistic)
    start = (machine.start, monitor.initial)
    best: dict[tuple[Node, Monitor], tuple[int, Any]] = {start: (0, None)}
    queue: deque[tuple[Node, Monitor]] = deque([start])
    done: set[tuple[Node, Monitor]] = set()
    found: tuple[int, list[Any], int] | None = None
    while queue:
        key = queue.popleft()
        if key in done:
            continue
        done.add(key)
        distance = best[key][0]
        if found is not None and distance >= found[0]:
            break
        node, state = key
        cost = _cost(node)
        for move in machine.moves(node):
            for branch in move.branches:
                after, broken = monitor.step(state, branch.events)
                if broken is not None:
                    if found is None or distance + cost < found[0]:
                        found = (distance + cost, [key, move, branch], broken)
                    continue
                target = branch.target
                if target is None:
                    continue
                next_key = (target, after)
                known = best.get(next_key)
                if known is None or distance + cost < known[0]:
                    best[next_key] = (distance + cost, (key, move, branch))
                    if cost:
                        queue.append(next_key)
                    else:
                        queue.appendleft(next_key)
    if found is None:
        return None
    _, (key, move, branch), index = found
    hops = [_Hop(key[0], move, branch)]
    while True:
        link = best[key][1]
        if link is None:
            break
        key, move, branch = link
        hops.append(_Hop(key[0], move, branch))
    return hops[::-1], index


def _winning(machine: AbstractMachine, spec: PropertySpec, assume: bool) -> set[Node]:
    """Nodes from which the user can make a target event happen whatever decisions return.

    At a rest node the user picks an input (the model understands it; backend errors are
    left out); at pending nodes the decision functions, and everywhere the model's choice of
    response, are adversaries. A branch wins if one of its events is a target, or it leads
    to a winning node.
    """
    nodes = machine.nodes
    counters: dict[tuple[Node, int], int] = {}
    waiting: dict[Node, list[tuple[Node, int]]] = {}
    winning: set[Node] = set()
    queue: deque[Node] = deque()

    def hit(branch: Branch) -> bool:
        return not branch.failed and any(any_match(spec.target, e, assume) for e in branch.events)

    for node in nodes:
        for index, move in enumerate(machine.moves(node)):
            if move.input is not None and move.input.error:
                continue
            open_branches = 0
            lost = False
            for branch in move.branches:
                if hit(branch):
                    continue
                target = branch.target
                if branch.failed or target is None or target.kind == "ended":
                    lost = True  # the environment can take this branch: the move never wins
                    break
                open_branches += 1
                waiting.setdefault(target, []).append((node, index))
            if lost:
                continue
            counters[(node, index)] = open_branches
            if open_branches == 0 and node not in winning:
                winning.add(node)
                queue.append(node)
    while queue:
        node = queue.popleft()
        for owner in waiting.get(node, ()):
            if owner not in counters:
                continue  # a move with a losing branch
            counters[owner] -= 1
            if counters[owner] == 0 and owner[0] not in winning:
                winning.add(owner[0])
                queue.append(owner[0])
    return winning


def _check_reachable(
    machine: AbstractMachine, spec: PropertySpec, assume: bool
) -> tuple[list[_Hop], Node] | None:
    winning = _winning(machine, spec, assume)
    paths = _shortest_paths(machine)
    losing = [node for node in paths if node.kind == "rest" and node not in winning]
    if not losing:
        return None
    node = min(losing, key=lambda n: (paths[n][0], str(n)))
    return _path_to(paths, node), node


def _check_leads_to(
    machine: AbstractMachine, spec: PropertySpec, assume: bool
) -> tuple[list[_Hop], list[tuple[Input, TurnPath]], Node] | None:
    """A reachable rest node from which ``within`` turns of saying ``saying`` avoid the target."""
    compiled = machine.compiled
    paths = _shortest_paths(machine)
    rests = [n for n in paths if n.kind == "rest"]

    def hits(turn: TurnPath) -> bool:
        return not turn.failed and any(any_match(spec.target, e, assume) for e in turn.events)

    options: dict[Node, list[tuple[Input, TurnPath]]] = {}
    for node in rests:
        state = compiled.states[node.state]
        inputs = _saying_inputs_at(machine, node, state, spec.saying)
        choices = []
        for given in inputs:
            for turn in machine.turns(node, given):
                if not hits(turn):
                    choices.append((given, turn))
        options[node] = choices
    # avoid[k][node]: a way to go k more turns without the target (None: not possible).
    avoid: dict[Node, list[tuple[Input, TurnPath]] | None] = {n: [] for n in rests}
    for _ in range(spec.within):
        step: dict[Node, list[tuple[Input, TurnPath]] | None] = {}
        for node in rests:
            way = None
            for given, turn in options[node]:
                target = turn.target
                if target.kind == "ended":
                    way = [(given, turn)]  # ended without the target: it can never come
                    break
                rest = avoid.get(target if not turn.failed else node)
                if rest is not None:
                    way = [(given, turn), *rest]
                    break
            step[node] = way
        avoid = step
    bad = [n for n in rests if avoid.get(n) is not None]
    if not bad:
        return None
    node = min(bad, key=lambda n: (paths[n][0], str(n)))
    witness = avoid[node]
    assert witness is not None
    return _path_to(paths, node), witness, node


def _saying_inputs_at(
    machine: AbstractMachine, node: Node, state: CompiledState, saying: frozenset[str] | None
) -> list[Input]:
    moves = [m.input for m in machine.moves(node) if m.input is not None]
    if saying is None:
        return [i for i in moves if not i.error]
    wanted: list[Input] = []
    for label in sorted(saying):
        name = label if label in state.allowed else OUT_OF_SCOPE
        for given in (Input(name), Input(name, unsure=True)):
            if given in moves and given not in wanted:
                wanted.append(given)
    return wanted


def _turn_steps(start: int, witness: Sequence[tuple[Input, TurnPath]], origin: Node) -> list[Step]:
    steps = []
    node = origin
    for offset, (given, turn) in enumerate(witness):
        steps.append(
            Step(
                index=start + offset,
                state=node.state,
                input=given,
                intent=given.label,
                forced=True,
                path=() if turn.failed else tuple(e.name for e in turn.events if e.kind == "enter"),
                responses=tuple(e.name for e in turn.events if e.kind == "say"),
                effects=() if turn.failed else _effects_of(turn.events),
                decisions=turn.decisions if not turn.failed else (),
                ended=any(e.kind == "ended" for e in turn.events),
                failed=turn.failed,
            )
        )
        node = turn.target if not turn.failed else node
    return steps


def _exhaustive_one(machine: AbstractMachine, spec: PropertySpec) -> EngineResult:
    uncertain = spec.uses_values or _has_maybe(machine)
    if spec.kind in SAFETY:
        broken = _check_safety(machine, spec, pessimistic=True)
        if broken is None:
            return EngineResult("proved", "holds in every conversation")
        hops, index = broken
        result = _safety_counterexample(machine, hops, index, spec)
        if not uncertain:
            return EngineResult("violated", "a conversation breaks it", result)
        sure = _check_safety(machine, spec, pessimistic=False)
        if sure is not None:
            hops, index = sure
            return EngineResult(
                "violated",
                "a conversation breaks it",
                _safety_counterexample(machine, hops, index, spec),
            )
        return EngineResult(
            "unknown",
            "depends on slot or fact values the abstraction does not know; this"
            " conversation breaks it if the values allow",
            result,
        )
    if spec.kind == "reachable":
        found = _check_reachable(machine, spec, assume=False)
        if found is None:
            return EngineResult("proved", "reachable from every state the conversation can be in")
        hops, node = found
        steps = _steps(hops)
        example = Counterexample(
            "exhaustive",
            tuple(steps),
            note=f"after this, in {node.state}, no way to {_targets(spec)} is guaranteed:"
            " some decision outcomes always lead away from it",
            from_step=len(steps) - 1,
        )
        if not uncertain or _check_reachable(machine, spec, assume=True) is not None:
            return EngineResult("violated", example.note, example)
        return EngineResult("unknown", "depends on values the abstraction does not know", example)
    found_leads = _check_leads_to(machine, spec, assume=False)
    if found_leads is None:
        return EngineResult("proved", f"within {_turns(spec.within)} from every state")
    hops, witness, node = found_leads
    steps = _steps(hops)
    more = _turn_steps(len(steps), witness, node)
    saying = ", ".join(sorted(spec.saying)) if spec.saying is not None else "anything"
    example = Counterexample(
        "exhaustive",
        tuple(steps + more),
        note=f"from turn {len(steps) - 1} on, {len(more)} turn(s) of saying {saying}"
        f" without {_targets(spec)}",
        from_step=len(steps) - 1,
    )
    if not uncertain or _check_leads_to(machine, spec, assume=True) is not None:
        return EngineResult("violated", example.note, example)
    return EngineResult("unknown", "depends on values the abstraction does not know", example)


def _has_maybe(machine: AbstractMachine) -> bool:
    return any(
        u is None or any(x.facts_unknown or x.slots_unknown for xs in u.values() for x in xs)
        for u in machine.updates.values()
    )


def _targets(spec: PropertySpec) -> str:
    return " or ".join(str(m) for m in spec.target)


def _safety_counterexample(
    machine: AbstractMachine, hops: list[_Hop], index: int, spec: PropertySpec
) -> Counterexample:
    broken_at = len(hops) - 1
    full = _finish_turn(machine, hops)
    steps = _steps(full, (broken_at, index))
    event = hops[-1].branch.events[index]
    return Counterexample(
        "exhaustive",
        tuple(steps),
        note=f"{event} in turn {next(s.index for s in steps if s.breaks)} breaks: {spec.summary()}",
    )


def exhaustive(
    compiled: CompiledPolicy,
    specs: Sequence[PropertySpec],
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, EngineResult], AbstractMachine]:
    """Check every property on the abstract machine of ``compiled``."""
    machine = AbstractMachine(compiled)
    machine.explore(progress)
    return {spec.id: _exhaustive_one(machine, spec) for spec in specs}, machine


# --- both engines -----------------------------------------------------------------------------

SEARCH_INSTALL = "pip install 'sopagent[verify]'"


def _has_hypothesis() -> bool:
    return importlib.util.find_spec("hypothesis") is not None


Progress = Callable[[str, int, int | None], None]
"""Called with a stage (``explore``, ``search``), work done and the total if known."""


def verify(
    compiled: CompiledPolicy,
    *,
    engines: Iterable[str] = ("exhaustive", "search"),
    examples: int = 200,
    max_turns: int = 12,
    seed: int = 0,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> Report:
    """Check every property of ``compiled`` with both engines.

    Args:
        compiled: the compiled policy.
        engines: which engines to run.
        examples: conversations the search engine generates per search.
        max_turns: user turns per generated conversation at most.
        seed: seeds the search; the same seed gives the same conversations.
        deadline: seconds after which the search starts no new conversation.
        progress: reports progress of each stage.

    Returns:
        The report, property by property.
    """
    chosen = set(engines)
    specs = compile_properties(compiled.policy, compiled.catalog, compiled.functions)
    report = Report(compiled.name, compiled.hash, [])
    exhaustive_results: dict[str, EngineResult] = {}
    search_results: dict[str, EngineResult] = {}
    if "exhaustive" in chosen and specs:
        started = time.perf_counter()
        exhaustive_results, machine = exhaustive(
            compiled,
            specs,
            progress=None if progress is None else lambda n: progress("explore", n, None),
        )
        report.exhaustive_seconds = time.perf_counter() - started
        report.nodes = len(machine.nodes)
        report.steps = machine.calls
        report.unreadable = tuple(sorted(n for n, u in machine.updates.items() if u is None))
    if "search" in chosen and specs and not _has_hypothesis():
        missing = EngineResult("skipped", f"Hypothesis is not installed: {SEARCH_INSTALL}")
        search_results = dict.fromkeys((s.id for s in specs), missing)
    elif "search" in chosen and specs:
        from sopagent._search import search  # noqa: PLC0415 (imports Hypothesis)

        started = time.perf_counter()
        search_results, report.conversations = search(
            compiled,
            specs,
            examples=examples,
            max_turns=max_turns,
            seed=seed,
            deadline=deadline,
            progress=None if progress is None else lambda n: progress("search", n, None),
        )
        report.search_seconds = time.perf_counter() - started
    skipped = EngineResult("skipped", "not run")
    for spec in specs:
        report.results.append(
            PropertyResult(
                spec,
                exhaustive_results.get(spec.id, skipped),
                search_results.get(spec.id, skipped),
            )
        )
    return report


# --- transcripts ----------------------------------------------------------------------------


def _turns(count: int) -> str:
    return f"{count} turn" if count == 1 else f"{count} turns"


def _said(step: Step) -> str:
    return ", ".join(step.responses) or "-"


def transcript(example: Counterexample) -> list[str]:
    """A counterexample as lines of a conversation transcript."""
    lines: list[str] = []
    if example.facts:
        facts = ", ".join(f"{k}={v}" for k, v in example.facts.items())
        lines.append(f"facts: {facts}")
    for step in example.steps:
        if example.from_step is not None and step.index == example.from_step + 1:
            lines.append("  -- from here --")
        if step.index == 0:
            head = "opening"
        elif step.text is not None:
            head = f"user: {step.text!r}"
            if step.forced and step.intent:
                head += f" [{step.intent}]"
        elif step.input is not None:
            head = f"user: {step.input}"
        else:
            head = "user"
        moves = " > ".join(step.path) if step.path else f"stays in {step.state}"
        if step.failed:
            moves = f"error route, stays in {step.state}"
        lines.append(f"{step.index:>3}. {head}")
        lines.append(f"     {step.state} -> {moves}")
        if step.decisions:
            lines.append("     decides " + ", ".join(f"{f}={o}" for _, f, o in step.decisions))
        if step.slots:
            lines.append("     slots " + ", ".join(f"{k}={v}" for k, v in step.slots.items()))
        lines.append(
            f"     says {_said(step)}" + ("  (the conversation ends)" if step.ended else "")
        )
        if step.effects:
            lines.append("     effects " + ", ".join(step.effects))
        if step.breaks:
            lines.append(f"     !! {step.breaks}")
    if example.note:
        lines.append(example.note)
    return lines


def render(report: Report) -> str:
    """The report as text for a terminal."""
    lines = [f"verify {report.policy} {report.policy_hash}"]
    marks = {"proved": "proved", "violated": "FAILS", "not_refuted": "not refuted"}
    for result in report.results:
        spec = result.spec
        lines.append("")
        lines.append(f"{marks[result.verdict]:<12} {spec.id}: {spec.summary()}")
        if spec.description:
            lines.append(f"             {spec.description}")
        lines.append(
            f"             exhaustive: {result.exhaustive.status} ({result.exhaustive.detail})"
        )
        lines.append(f"             search: {result.search.status} ({result.search.detail})")
        example = result.counterexample
        if example is None and result.exhaustive.status == "unknown":
            example = result.exhaustive.counterexample
            if example is not None:
                lines.append("             a conversation that breaks it if the values allow:")
        elif example is not None:
            lines.append(
                f"             counterexample ({example.engine}, {_turns(example.turns)}):"
            )
        if example is not None:
            lines.extend("             " + line for line in transcript(example))
    lines.append("")
    failed = len(report.failed)
    proved = sum(1 for r in report.results if r.verdict == "proved")
    lines.append(
        f"{len(report.results)} propert{'ies' if len(report.results) != 1 else 'y'}:"
        f" {proved} proved, {failed} failed,"
        f" {len(report.results) - proved - failed} not refuted"
        f" (exhaustive: {report.nodes} nodes, {report.steps} steps,"
        f" {report.exhaustive_seconds:.2f} s; search: {report.conversations} conversations,"
        f" {report.search_seconds:.2f} s)"
    )
    if report.unreadable:
        lines.append(
            "decision functions whose updates could not be read from their code (any slot may"
            " change): " + ", ".join(report.unreadable)
        )
    return "\n".join(lines) + "\n"


# --- counterexamples as conversation tests --------------------------------------------------


def conversation_test(
    result: PropertyResult, compiled: CompiledPolicy, policy_path: str
) -> dict[str, Any] | str:
    """The counterexample of ``result`` as a conversation test document.

    Args:
        result: a property with a counterexample.
        compiled: its compiled policy.
        policy_path: how the test file names the policy (relative to the test file).

    Returns:
        The document (format ``sopagent_test: 1``), or why the counterexample cannot be
        written as a conversation test.
    """
    example = result.concrete
    if example is None:
        return "no counterexample"
    steps: list[dict[str, Any]] = []
    for step in example.steps:
        written = _test_step(step, compiled, example.engine)
        if isinstance(written, str):
            return f"turn {step.index}: {written}"
        if written is not None:
            steps.append(written)
    conversation: dict[str, Any] = {
        "name": f"counterexample to {result.spec.id}: {result.spec.summary()}"
    }
    facts = dict(example.facts)
    if example.engine == "exhaustive":
        given = _placeholder_facts(compiled, [r for s in example.steps for r in s.responses])
        if isinstance(given, str):
            return given
        facts.update(given)
    if facts:
        conversation["facts"] = facts
    conversation["steps"] = steps
    return {"sopagent_test": 1, "policy": policy_path, "conversations": [conversation]}


def _placeholder_facts(compiled: CompiledPolicy, said: Sequence[str]) -> dict[str, Any] | str:
    """Facts for the placeholders of lines said after forced decisions, which set none.

    The host passes them at the start, so the lines render as they would have.
    """
    needed = [
        name
        for response in dict.fromkeys(said)
        for name in compiled.templates[response].placeholders
        if name in compiled.fact_types
    ]
    if not needed:
        return {}
    if not _has_hypothesis():
        return f"writing the facts lines need needs Hypothesis: {SEARCH_INSTALL}"
    from sopagent._search import sample_value  # noqa: PLC0415 (imports Hypothesis)

    facts: dict[str, Any] = {}
    for name in dict.fromkeys(needed):
        value = sample_value(compiled.fact_types[name])
        if value is None:
            return f"no valid value of fact {name!r} is found for the lines said"
        facts[name] = value
    return facts


def _test_step(step: Step, compiled: CompiledPolicy, engine: str) -> dict[str, Any] | str | None:
    if step.other_choice:
        return "the model chose a response other than the first, which a test cannot force"
    decisions: dict[str, str] = {}
    for _, function, outcome in step.decisions:
        if decisions.setdefault(function, outcome) != outcome:
            return f"{function} decides twice with different outcomes in one turn"
    expect: dict[str, Any] = {}
    out: dict[str, Any] = {}
    given = step.input
    if given is not None and given.error:
        if not step.breaks and step.index > 0:
            return None  # a failing backend changes nothing: leave the turn out
        return "the backend or a decision fails here, which a test cannot force"
    if given is not None and given.unsure:
        return "the model is unsure here, which a test cannot force"
    if step.index > 0:
        if engine == "exhaustive":
            assert given is not None
            if given.slots and not _has_hypothesis():
                return f"writing slot values needs Hypothesis: {SEARCH_INSTALL}"
            text = _message(compiled, step)
            if text is None:
                return f"no message gives {given} in {step.state}"
            out["user"] = text
            if given.label is not None:
                out["intent"] = given.label
        else:
            out["user"] = step.text or ""
            if step.forced and step.intent is not None:
                out["intent"] = step.intent
        if engine == "exhaustive" and decisions:
            out["decisions"] = dict(decisions)
        if step.intent is not None:
            expect["intent"] = step.intent
    elif engine == "exhaustive" and decisions:
        out["decisions"] = dict(decisions)
    expect["state"] = step.state_after
    if not step.failed:
        expect["path"] = list(step.path)
    expect["responses"] = list(step.responses)
    if engine == "search" and step.index > 0:
        expect["slots"] = dict(step.slots)
    if engine == "search" and compiled.policy.effects:
        expect["effects"] = [{n: dict(a) for n, a in e.items()} for e in step.effect_args]
    if decisions and not step.failed:
        expect["decisions"] = dict(decisions)
    expect["ended"] = step.ended
    out["expect"] = expect
    return out


def _message(compiled: CompiledPolicy, step: Step) -> str | None:
    from sopagent._search import message_for  # noqa: PLC0415 (imports Hypothesis)

    assert step.input is not None
    return message_for(compiled, compiled.states[step.state], step.input.label, step.input.slots)


def write_counterexamples(
    report: Report, compiled: CompiledPolicy, directory: Path, policy_file: Path
) -> list[tuple[str, Path | None, str]]:
    """Write each counterexample of ``report`` as a conversation test file in ``directory``.

    Returns:
        ``(property id, file written or None, why not)`` for every failing property.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path | None, str]] = []
    relative = os.path.relpath(policy_file.resolve(), directory.resolve())
    for result in report.failed:
        document = conversation_test(result, compiled, Path(relative).as_posix())
        if isinstance(document, str):
            written.append((result.spec.id, None, document))
            continue
        example = result.concrete
        assert example is not None
        breaking = next((s for s in example.steps if s.breaks), None)
        header = [
            f"Counterexample to property {result.spec.id} of policy {compiled.name}"
            f" ({compiled.hash}),",
            f"found by `sopagent verify` ({example.engine} engine).",
        ]
        if breaking is not None:
            header.append(f"Turn {breaking.index} breaks it: {breaking.breaks}.")
        elif example.note:
            header.append(example.note + ".")
        if example.engine == "exhaustive":
            header.append(
                "Decision outcomes are forced: the decision functions do not run, so values"
            )
            header.append(
                "they would have set stay unset; facts the lines said need are given at the start."
            )
        header.append(
            "The expectations are what the policy did; once it is fixed, update the turn"
            " that breaks it."
        )
        text = "".join(f"# {line}\n" for line in header)
        text += yaml.safe_dump(
            document, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
        )
        target = directory / f"{compiled.name}.{result.spec.id}.test.yaml"
        target.write_text(text, encoding="utf-8")
        written.append((result.spec.id, target, ""))
    return written
