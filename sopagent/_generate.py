"""A minimal conversation test suite that covers every route of a policy.

Built on the abstract machine of `sopagent._explore` (every label in every state, every
declared outcome of every decision): for each route (a transition of the compiled machine) the
shortest conversation from the initial state that takes it is found there, counting user turns,
and only through what a test can force (labels, slot values, decision outcomes; not an unsure
model, a failing backend or a response the model picks other than the first). The deepest
route not yet covered goes first, and every route a conversation takes counts as covered, so
the suite stays small.

Each abstract conversation is then made concrete on the real agent: messages that give
exactly the slot values it needs (the slots' examples first, then values searched with
Hypothesis), the facts the host passes at the start (none first, then combinations of the
facts' examples), and the real decision functions wherever they give the outcome the route
needs; only where none does is the outcome forced with ``decisions:``. A route for which no
concrete conversation is found is reported with the reason. The expectations written are what
the real agent did, so the suite passes on the policy it was made from.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sopagent._coverage import route_name
from sopagent._explore import AbstractMachine, Branch, Input, Move, Node
from sopagent._testing import _Recorded, _TestAgent

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy, CompiledState
    from sopagent.session import Turn

__all__ = ["GenerateReport", "generate_suite"]

Route = tuple[str, str, str]
_FACT_COMBINATIONS = 48
_VALUE_SEARCH = 200


@dataclass(frozen=True)
class _Hop:
    node: Node
    move: Move
    branch: Branch


@dataclass(frozen=True)
class _Plan:
    """One turn of an abstract conversation."""

    state: str
    input: Input | None
    decisions: tuple[tuple[str, str, str], ...]
    routes: tuple[Route, ...]
    target: str


@dataclass(frozen=True)
class _Step:
    """One concrete step: the message, the label forced, the outcomes forced."""

    user: str | None
    intent: str | None = None
    decisions: Mapping[str, str] = field(default_factory=dict)


@dataclass
class GenerateReport:
    """What `generate_suite` covered, and why any route is left out."""

    policy: str
    policy_hash: str
    routes: int
    covered: list[str] = field(default_factory=list)
    uncovered: list[tuple[str, str]] = field(default_factory=list)
    conversations: int = 0
    forced: int = 0

    def lines(self) -> list[str]:
        """The report as lines of text."""
        out = [
            f"{self.conversations} conversation{'s' if self.conversations != 1 else ''} cover"
            f" {len(self.covered)}/{self.routes} routes of {self.policy} ({self.policy_hash});"
            f" {self.forced} decision outcome{'s' if self.forced != 1 else ''} forced"
        ]
        out.extend(f"not covered: {route}: {why}" for route, why in self.uncovered)
        return out


# --- shortest forceable paths ------------------------------------------------------------------


def _forceable(move: Move) -> bool:
    given = move.input
    return given is None or not (given.error or given.unsure)


def _branches(machine: AbstractMachine, node: Node) -> Iterator[tuple[Move, Branch]]:
    for move in machine.moves(node):
        if not _forceable(move):
            continue
        for branch in move.branches:
            if branch.failed or branch.target is None or branch.other_choice:
                continue
            yield move, branch


def _shortest(machine: AbstractMachine) -> dict[Node, tuple[int, _Hop | None]]:
    """Fewest user turns to each node through forceable moves (0-1 breadth-first search)."""
    best: dict[Node, tuple[int, _Hop | None]] = {machine.start: (0, None)}
    queue: deque[Node] = deque([machine.start])
    done: set[Node] = set()
    while queue:
        node = queue.popleft()
        if node in done:
            continue
        done.add(node)
        distance = best[node][0]
        cost = 1 if node.kind == "rest" else 0
        for move, branch in _branches(machine, node):
            target = branch.target
            assert target is not None
            known = best.get(target)
            if known is None or distance + cost < known[0]:
                best[target] = (distance + cost, _Hop(node, move, branch))
                if cost:
                    queue.append(target)
                else:
                    queue.appendleft(target)
    return best


def _path(paths: Mapping[Node, tuple[int, _Hop | None]], node: Node) -> list[_Hop]:
    hops: list[_Hop] = []
    while True:
        hop = paths[node][1]
        if hop is None:
            return hops[::-1]
        hops.append(hop)
        node = hop.node


def _finish(machine: AbstractMachine, hops: list[_Hop]) -> list[_Hop] | None:
    """Complete a turn cut at a deciding state with the first outcomes that settle it."""
    out = list(hops)
    seen: set[Node] = set()
    while out[-1].branch.target is not None and out[-1].branch.target.kind == "pending":
        node = out[-1].branch.target
        if node in seen:
            return None
        seen.add(node)
        found = next(iter(_branches(machine, node)), None)
        if found is None:
            return None
        out.append(_Hop(node, *found))
    return out


def _plans(hops: Sequence[_Hop]) -> list[_Plan]:
    """Group a path of hops into turns."""
    plans: list[dict[str, Any]] = []
    for hop in hops:
        if hop.node.kind in ("start", "rest"):
            plans.append(
                {"state": hop.node.state, "input": hop.move.input, "decisions": (), "routes": ()}
            )
        plan = plans[-1]
        if hop.branch.decision is not None:
            plan["decisions"] += (hop.branch.decision,)
        plan["routes"] += hop.branch.routes
        target = hop.branch.target
        assert target is not None
        plan["target"] = target.state
    return [_Plan(**p) for p in plans]


# --- messages ------------------------------------------------------------------------------------


def _gives(
    compiled: CompiledPolicy, state: CompiledState, message: str, wanted: Mapping[str, bool]
) -> bool:
    """Whether ``message`` gives exactly the slots of ``wanted`` (valid or not) in ``state``."""
    taken: list[tuple[int, int]] = []
    order = sorted(
        state.collect,
        key=lambda n: 0 if getattr(compiled.slot_types[n].spec, "pattern", None) else 1,
    )
    for name in order:
        hit = compiled.slot_types[name].find(message, taken)
        if hit is not None:
            taken.append(hit.span)
        if (hit is not None) != (name in wanted):
            return False
        if hit is not None and (hit.error is None) != wanted[name]:
            return False
    return True


def _label_text(compiled: CompiledPolicy, state: CompiledState, label: str | None) -> str | None:
    if label is None:
        return ""
    known = next((lab for lab in state.labels if lab.name == label), None)
    candidates = [*(known.examples if known else ()), label.replace("_", " ")]
    return next((t for t in candidates if _gives(compiled, state, t, {})), None)


def _value_texts(compiled: CompiledPolicy, slot: str, valid: bool) -> list[str]:
    """Texts of a slot's examples that its grammar reads as valid (or invalid) values."""
    from sopagent._search import slot_text  # noqa: PLC0415 (no Hypothesis needed here)

    kind = compiled.slot_types[slot]
    out = []
    for example in kind.spec.examples:
        text = slot_text(kind, example)
        found = kind.find(text, [])
        if found is not None and (found.error is None) == valid and text not in out:
            out.append(text)
    return out


def _messages(compiled: CompiledPolicy, plan: _Plan) -> list[str]:
    """Candidate messages for an abstract input, from the policy's own examples."""
    assert plan.input is not None
    state = compiled.states[plan.state]
    head = _label_text(compiled, state, plan.input.label)
    if head is None:
        return []
    options = [_value_texts(compiled, s, v) for s, v in plan.input.slots]
    wanted = dict(plan.input.slots)
    out = []
    for values in itertools.islice(itertools.product(*options), 12):
        message = " ".join(p for p in (head, *values) if p)
        if _gives(compiled, state, message, wanted) and message not in out:
            out.append(message)
    return out


# --- concrete conversations ----------------------------------------------------------------------


class _Runner:
    """Replays concrete steps from a fresh session, the decision modules reset each time."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        from sopagent._search import ModuleState  # noqa: PLC0415

        self.compiled = compiled
        self.modules = ModuleState(compiled.functions)

    def run(
        self, facts: Mapping[str, Any], steps: Sequence[_Step]
    ) -> list[tuple[Turn, tuple[Route, ...]]] | None:
        self.modules.restore()
        try:
            return self._run(facts, steps)
        finally:
            self.modules.restore()

    def _run(
        self, facts: Mapping[str, Any], steps: Sequence[_Step]
    ) -> list[tuple[Turn, tuple[Route, ...]]] | None:
        agent = _TestAgent(self.compiled, _Recorded())
        try:
            session = agent.new_session(facts=facts, seed=0)
        except ValueError:
            return None
        out: list[tuple[Turn, tuple[Route, ...]]] = []
        for index, step in enumerate(steps):
            agent.fired = []
            if index == 0:
                turn = agent.start(session, decisions=step.decisions)
            else:
                if session.ended:
                    return None
                assert step.user is not None
                turn = agent.respond(
                    session, step.user, intent=step.intent, decisions=step.decisions
                )
            if turn.error is not None:
                return None
            out.append((turn, tuple(agent.fired)))
        return out


def _matches(turn: Turn, routes: tuple[Route, ...], plan: _Plan) -> bool:
    return turn.error is None and routes == plan.routes and turn.state_after == plan.target


def _candidates(compiled: CompiledPolicy, plan: _Plan, forced: bool) -> Iterator[_Step]:
    decisions = {f: o for _, f, o in plan.decisions} if forced else {}
    if plan.input is None:
        yield _Step(None, None, decisions)
        return
    for message in _messages(compiled, plan):
        yield _Step(message, plan.input.label, decisions)


def _search_values(
    compiled: CompiledPolicy,
    runner: _Runner,
    facts: Mapping[str, Any],
    done: list[_Step],
    plan: _Plan,
    forced: bool,
) -> _Step | None:
    """Search slot values with Hypothesis for which the step takes the planned routes."""
    try:
        from hypothesis import HealthCheck, find, settings  # noqa: PLC0415
        from hypothesis import strategies as st  # noqa: PLC0415
        from hypothesis.errors import NoSuchExample  # noqa: PLC0415

        from sopagent._search import slot_text, value_strategy  # noqa: PLC0415
    except ImportError:
        return None
    assert plan.input is not None
    state = compiled.states[plan.state]
    head = _label_text(compiled, state, plan.input.label)
    if head is None or not plan.input.slots:
        return None
    slots = plan.input.slots
    wanted = dict(slots)
    kinds = [compiled.slot_types[s] for s, _ in slots]
    decisions = {f: o for _, f, o in plan.decisions} if forced else {}
    label = plan.input.label

    def step_of(values: tuple[Any, ...]) -> _Step:
        texts = [slot_text(k, v) for k, v in zip(kinds, values, strict=True)]
        return _Step(" ".join(p for p in (head, *texts) if p), label, decisions)

    def works(values: tuple[Any, ...]) -> bool:
        step = step_of(values)
        assert step.user is not None
        if not _gives(compiled, state, step.user, wanted):
            return False
        turns = runner.run(facts, [*done, step])
        return turns is not None and _matches(*turns[-1], plan)

    strategy = st.tuples(*(value_strategy(k) for k in kinds))
    try:
        found = find(
            strategy,
            works,
            settings=settings(
                database=None,
                max_examples=_VALUE_SEARCH,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            ),
        )
    except NoSuchExample:
        return None
    return step_of(found)


def _concrete(
    compiled: CompiledPolicy,
    runner: _Runner,
    plans: Sequence[_Plan],
    facts: Mapping[str, Any],
    *,
    search: bool,
) -> tuple[list[_Step], str]:
    """The concrete steps of an abstract conversation, or how far it got and why it stopped."""
    done: list[_Step] = []
    for index, plan in enumerate(plans):
        chosen: _Step | None = None
        for forced in (False, True):
            if forced and not plan.decisions:
                break
            for step in _candidates(compiled, plan, forced):
                turns = runner.run(facts, [*done, step])
                if turns is not None and _matches(*turns[-1], plan):
                    chosen = step
                    break
            if chosen is None and search and plan.input is not None and plan.input.slots:
                chosen = _search_values(compiled, runner, facts, done, plan, forced)
            if chosen is not None:
                break
        if chosen is None:
            given = "the opening" if plan.input is None else f"{plan.input} in {plan.state}"
            return done, f"turn {index}: no message or forced outcome makes {given} take it"
        done.append(chosen)
    return done, ""


def _fact_choices(compiled: CompiledPolicy) -> Iterator[dict[str, Any]]:
    """No facts first, then combinations of the facts' examples."""
    yield {}
    named = [(n, list(f.examples)) for n, f in compiled.policy.facts.items() if f.examples]
    if not named:
        return
    product = itertools.product(*(values for _, values in named))
    for values in itertools.islice(product, _FACT_COMBINATIONS):
        yield {name: value for (name, _), value in zip(named, values, strict=True)}


def _conversation(
    compiled: CompiledPolicy, runner: _Runner, plans: Sequence[_Plan]
) -> tuple[list[_Step], dict[str, Any], str]:
    """The concrete conversation with the fewest forced outcomes over the facts tried.

    The examples of slots and facts are tried first; values are searched (the costly part)
    only when no combination of examples gives a conversation without forced outcomes.
    """
    best: tuple[int, list[_Step], dict[str, Any]] | None = None
    why = ""
    tries = [(facts, False) for facts in _fact_choices(compiled)]
    tries += [(facts, True) for facts in itertools.islice(_fact_choices(compiled), 4)]
    for facts, search in tries:
        steps, problem = _concrete(compiled, runner, plans, facts, search=search)
        if problem:
            why = why or problem
            continue
        forced = sum(len(s.decisions) for s in steps)
        if best is None or forced < best[0]:
            best = (forced, steps, facts)
        if forced == 0:
            break
    if best is None:
        return [], {}, why
    return best[1], best[2], ""


# --- the suite -----------------------------------------------------------------------------------


def _expect(turn: Turn, index: int) -> dict[str, Any]:
    expect: dict[str, Any] = {}
    if index > 0:
        expect["intent"] = turn.intent
    expect["state"] = turn.state_after
    expect["path"] = list(turn.path)
    expect["responses"] = list(turn.response_ids)
    if turn.slots:
        expect["slots"] = dict(turn.slots)
    if turn.decisions:
        expect["decisions"] = {d.function: d.outcome for d in turn.decisions}
    expect["ended"] = turn.ended
    return expect


def _json_facts(compiled: CompiledPolicy, facts: Mapping[str, Any]) -> dict[str, Any]:
    return {
        n: compiled.fact_types[n].to_json(compiled.fact_types[n].validate(v))
        for n, v in facts.items()
    }


def generate_suite(
    compiled: CompiledPolicy, policy_file: Path, out: Path
) -> tuple[str, GenerateReport]:
    """Write a minimal conversation test suite covering every route of ``compiled``.

    Args:
        compiled: the compiled policy.
        policy_file: its file, named in the suite relative to ``out``.
        out: where the suite will be written.

    Returns:
        The suite's text (format ``sopagent_test: 1``) and what it covers.
    """
    import os  # noqa: PLC0415

    machine = AbstractMachine(compiled)
    machine.explore()
    paths = _shortest(machine)
    runner = _Runner(compiled)
    routes: list[Route] = [
        (t["trigger"], t["source"], t["dest"]) for t in compiled.machine_config()["transitions"]
    ]
    report = GenerateReport(compiled.name, compiled.hash, len(routes))
    # The shortest way to take each route: the hop that takes it from the closest node.
    reach: dict[Route, tuple[int, str, _Hop]] = {}
    for node, (distance, _) in paths.items():
        cost = 1 if node.kind == "rest" else 0
        for move, branch in _branches(machine, node):
            for route in branch.routes:
                key = (distance + cost, str(node) + str(move.input))
                if route not in reach or key < reach[route][:2]:
                    reach[route] = (*key, _Hop(node, move, branch))
    covered: set[Route] = set()
    why: dict[Route, str] = {}
    conversations: list[dict[str, Any]] = []
    order = sorted(routes, key=lambda r: (-reach[r][0] if r in reach else 0, routes.index(r)))
    for route in order:
        if route in covered:
            continue
        if route not in reach:
            why[route] = "no conversation a test can force takes it"
            continue
        hop = reach[route][2]
        hops = _finish(machine, [*_path(paths, hop.node), hop])
        if hops is None:
            why[route] = "its turn cannot be completed without a routing loop"
            continue
        steps, facts, problem = _conversation(compiled, runner, _plans(hops))
        if problem:
            why[route] = problem
            continue
        turns = runner.run(facts, steps)
        assert turns is not None
        fired = {r for _, rs in turns for r in rs}
        if route not in fired:
            why[route] = "the concrete conversation did not take it"
            continue
        covered |= fired
        report.forced += sum(len(s.decisions) for s in steps)
        written: list[dict[str, Any]] = []
        for index, (step, (turn, _)) in enumerate(zip(steps, turns, strict=True)):
            item: dict[str, Any] = {}
            if index > 0:
                item["user"] = step.user
                if step.intent is not None:
                    item["intent"] = step.intent
            if step.decisions:
                item["decisions"] = dict(step.decisions)
            item["expect"] = _expect(turn, index)
            written.append(item)
        conversation: dict[str, Any] = {"name": f"route {route_name(route)}"}
        if facts:
            conversation["facts"] = _json_facts(compiled, facts)
        conversation["steps"] = written
        conversations.append(conversation)
    report.conversations = len(conversations)
    report.covered = [route_name(r) for r in routes if r in covered]
    report.uncovered = [
        (route_name(r), why.get(r, "not reached")) for r in routes if r not in covered
    ]
    relative = Path(os.path.relpath(policy_file.resolve(), out.resolve().parent)).as_posix()
    document = {"sopagent_test": 1, "policy": relative, "conversations": conversations}
    header = (
        f"# Generated by `sopagent test --generate` from policy {compiled.name}"
        f" ({compiled.hash}).\n"
        f"# {len(conversations)} conversations take {len(report.covered)} of {len(routes)}"
        " routes, each the shortest way there.\n"
        "# `decisions:` forces an outcome the real decision function does not give for the\n"
        "# messages and facts tried (the function does not run then).\n"
    )
    text = header + yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )
    return text, report
