"""Check step: the policy as a graph, and slot and fact values followed along its paths.

`analyze` runs the graph, data and routing rules (SOP040-SOP053) on a policy that has no
reference errors. The model is an adversary that may answer any allowed label in any waiting
state, and a decision function may return any outcome it declares; so a path of the graph is a
conversation that can happen.

Values are sets of slot and fact names, kept as bit masks (one bit per name) so that the
data-flow passes stay linear in the size of the policy:

* forward, *certainly set* (``must``): the values set on every path into a state;
* forward, *possibly set* (``may``): the values some path into a state may have set;
* backward, within one turn (``cleared``, ``untouched``, ``written``): from entering a state
  until the turn stops (a waiting or terminal state), the values some path may clear, some path
  leaves alone, and some path may set. Lines are rendered when the turn stops, so a line said on
  a route needs its values then, not when the route is taken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from sopagent._decision_code import FunctionSummary, shown_path, summarize
from sopagent._rules import RULES
from sopagent.decisions import DecisionFunction
from sopagent.errors import Location, Problem
from sopagent.policy import OUT_OF_SCOPE, Catalog, Policy, Route

__all__ = ["analyze", "references"]

Path_ = tuple[str | int, ...]
Kind = Literal["wait", "decide", "terminal"]

_SHOWN = 3  # states named in a message before "and N more"


@dataclass(frozen=True, slots=True)
class _Edge:
    """A route out of a state, with what taking it does to values."""

    source: str
    kind: Literal["intent", "filled", "fallback", "unsure", "outcome"]
    label: str
    route: Route
    at: Path_
    target: str | None
    adds: int = 0
    clears: int = 0
    may: int = 0
    empties: int = 0

    @property
    def silent(self) -> bool:
        return not self.route.say and not self.route.vary and not self.route.choose

    def describe(self) -> str:
        if self.kind == "intent":
            return f"intent {self.label!r}"
        if self.kind == "outcome":
            return f"outcome {self.label!r}"
        return {"filled": "'filled'", "fallback": "the fallback", "unsure": "'confidence'"}[
            self.kind
        ]


def _states_phrase(states: Iterable[str]) -> str:
    names = sorted(set(states))
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    more = len(names) - _SHOWN
    label = "state" if len(names) == 1 else "states"
    return f"{label} {shown}" + (f" and {more} more" if more > 0 else "")


def references(policy: Policy) -> set[str]:
    """Every response id the policy names anywhere."""
    used: set[str] = set()

    def route(value: Route | None) -> None:
        if value is not None:
            used.update(value.say)
            used.update(value.vary)
            used.update(value.choose)

    for slot in policy.slots.values():
        used.update(r for r in (slot.ask, slot.invalid) if r)
    for value in policy.global_.on.values():
        route(value)
    route(policy.global_.fallback)
    route(policy.global_.error)
    if policy.limits.too_long is not None:
        used.add(policy.limits.too_long)
    route(policy.global_.filler)
    if policy.global_.confidence is not None:
        route(policy.global_.confidence.below)
    for state in policy.states.values():
        used.update(state.say)
        used.update(state.vary)
        used.update(state.choose)
        route(state.filler)
        for value in (*state.on.values(), *state.outcomes.values()):
            route(value)
        route(state.filled)
        route(state.fallback)
        if state.confidence is not None:
            route(state.confidence.below)
    return used


class _Graph:
    """The policy's states and effective routes, with the values analyses over them."""

    def __init__(
        self,
        policy: Policy,
        catalog: Catalog,
        functions: Mapping[str, DecisionFunction],
    ) -> None:
        self.policy = policy
        self.catalog = catalog
        names = list(dict.fromkeys([*policy.slots, *policy.facts]))
        self.bit = {name: 1 << index for index, name in enumerate(names)}
        self.names = names
        self.all = (1 << len(names)) - 1
        self.slot_bits = self.mask(policy.slots)
        self.fact_bits = self.mask(policy.facts)
        self.kind: dict[str, Kind] = {}
        self.guard: dict[str, int] = {}
        self.edges: dict[str, list[_Edge]] = {}
        self._routes: dict[str, dict[str, tuple[Route, Path_]]] = {}
        used = {state.decide for state in policy.states.values() if state.decide}
        self.summaries: dict[str, FunctionSummary] = {
            name: summarize(function) for name, function in functions.items() if name in used
        }
        self._build()

    def mask(self, names: Iterable[str]) -> int:
        if not names:
            return 0
        bits = 0
        for name in names:
            bits |= self.bit.get(name, 0)
        return bits

    def unmask(self, bits: int) -> list[str]:
        return [name for name in self.names if bits & self.bit[name]]

    def intent_routes(self, name: str) -> dict[str, tuple[Route, Path_]]:
        """The intent routes a waiting state takes, in the order the run time tries them."""
        known = self._routes.get(name)
        if known is not None:
            return known
        state = self.policy.states[name]
        routes: dict[str, tuple[Route, Path_]] = {}
        if state.globals:
            for intent, route in self.policy.global_.on.items():
                routes[intent] = (route, ("global", "on", intent))
        # An override keeps the global route's place in the order, as the compiled state does.
        for intent, route in state.on.items():
            routes[intent] = (route, ("states", name, "on", intent))
        self._routes[name] = routes
        return routes

    def _build(self) -> None:
        policy = self.policy
        known = policy.states
        for name, state in policy.states.items():
            if state.terminal:
                self.kind[name] = "terminal"
                self.edges[name] = []
                continue
            if state.decide is not None:
                self.kind[name] = "decide"
                summary = self.summaries.get(state.decide)
                edges = []
                for outcome, route in state.outcomes.items():
                    effects = summary.effects(outcome) if summary else None
                    adds = self.mask(effects.sets) if effects else 0
                    writes = effects.writes if effects else None
                    clears = self.all if writes is None else self.mask(writes) & ~adds
                    may_set = effects.may_set if effects else None
                    may = self.all if may_set is None else self.mask(may_set)
                    empties = self.mask(effects.empties) if effects else 0
                    edges.append(
                        _Edge(
                            name,
                            "outcome",
                            outcome,
                            route,
                            ("states", name, "outcomes", outcome),
                            route.to if route.to in known else None,
                            adds,
                            clears,
                            may,
                            empties,
                        )
                    )
                self.edges[name] = edges
                continue
            self.kind[name] = "wait"
            routes = self.intent_routes(name)
            guard = self.mask(state.collect)
            for route, _ in routes.values():
                guard |= self.mask(route.require)
            self.guard[name] = guard
            edges = [
                _Edge(
                    name,
                    "intent",
                    intent,
                    route,
                    at,
                    route.to if route.to in known else None,
                    self.mask(route.require),
                    0,
                    guard,
                )
                for intent, (route, at) in routes.items()
                if intent == OUT_OF_SCOPE or intent in policy.intents
            ]
            if state.filled is not None:
                filled = state.filled
                target = filled.to if filled.to in known else None
                edges.append(
                    _Edge(
                        name,
                        "filled",
                        "filled",
                        filled,
                        ("states", name, "filled"),
                        target,
                        guard,
                        0,
                        guard,
                    )
                )
            fallback, at = (
                (state.fallback, ("states", name, "fallback"))
                if state.fallback is not None
                else (policy.global_.fallback, ("global", "fallback"))
            )
            edges.append(
                _Edge(
                    name,
                    "fallback",
                    "fallback",
                    fallback,
                    at,
                    fallback.to if fallback.to in known else None,
                    0,
                    0,
                    guard,
                )
            )
            confidence, where = (
                (state.confidence, ("states", name, "confidence", "below"))
                if state.confidence is not None
                else (policy.global_.confidence, ("global", "confidence", "below"))
            )
            if confidence is not None:
                below = confidence.below
                edges.append(
                    _Edge(
                        name,
                        "unsure",
                        "unsure",
                        below,
                        where,
                        below.to if below.to in known else None,
                        0,
                        0,
                        guard,
                    )
                )
            self.edges[name] = edges

    # --- forward passes --------------------------------------------------------------------

    def forward(self) -> None:
        """Compute ``must`` and ``may`` at the entry of every reachable state."""
        initial = self.policy.initial
        must: dict[str, int] = {initial: 0}
        pending = deque([initial])
        queued = {initial}
        while pending:
            name = pending.popleft()
            queued.discard(name)
            here = must[name]
            for edge in self.edges[name]:
                if edge.target is None:
                    continue
                out = (here & ~edge.clears) | edge.adds
                old = must.get(edge.target)
                if old is None or old & out != old:
                    must[edge.target] = out if old is None else old & out
                    if edge.target not in queued:
                        queued.add(edge.target)
                        pending.append(edge.target)
        self.must = must
        self.reachable = set(must)
        may: dict[str, int] = {initial: self.fact_bits}
        pending = deque([initial])
        queued = {initial}
        while pending:
            name = pending.popleft()
            queued.discard(name)
            here = may[name]
            for edge in self.edges[name]:
                if edge.target is None:
                    continue
                out = (here & ~edge.empties) | edge.may
                old = may.get(edge.target, 0)
                if out | old != old or edge.target not in may:
                    may[edge.target] = old | out
                    if edge.target not in queued:
                        queued.add(edge.target)
                        pending.append(edge.target)
        self.may = may
        self.auto = {
            name
            for name in self.reachable
            if self.kind[name] == "wait"
            and self._filled_target(name) is not None
            and self.guard[name] & ~must[name] == 0
        }

    def _filled_target(self, name: str) -> str | None:
        filled = self.policy.states[name].filled
        if filled is None or filled.to not in self.policy.states:
            return None
        return filled.to

    def filled_edge(self, name: str) -> _Edge | None:
        return next((e for e in self.edges[name] if e.kind == "filled"), None)

    def within_turn(self, name: str) -> list[_Edge]:
        """Edges a turn may follow from entering ``name`` without waiting for the user."""
        kind = self.kind[name]
        if kind == "decide":
            return [e for e in self.edges[name] if e.target is not None]
        if kind == "wait":
            edge = self.filled_edge(name)
            if (
                edge is not None
                and edge.target is not None
                and self.guard[name] & ~self.may[name] == 0
            ):
                return [edge]
        return []

    def stops(self, name: str) -> bool:
        """Whether a turn can stop on entering ``name`` (it waits there or ends)."""
        return self.kind[name] != "decide" and name not in self.auto

    # --- the turn's rest, backwards --------------------------------------------------------

    def backward(self) -> None:
        """Compute, per reachable state, what the rest of a turn entering it does to values."""
        cleared: dict[str, int] = dict.fromkeys(self.reachable, 0)
        untouched: dict[str, int] = {n: self.all if self.stops(n) else 0 for n in self.reachable}
        written: dict[str, int] = dict.fromkeys(self.reachable, 0)
        silent: dict[str, bool] = {
            n: self.stops(n) and self._quiet_state(n) for n in self.reachable
        }
        before: dict[str, list[_Edge]] = {}
        for name in self.reachable:
            for edge in self.within_turn(name):
                if edge.target in cleared:
                    before.setdefault(edge.target, []).append(edge)
        pending = deque(self.reachable)
        queued = set(self.reachable)
        while pending:
            name = pending.popleft()
            queued.discard(name)
            c, u, w, s = cleared[name], untouched[name], written[name], silent[name]
            for edge in self.within_turn(name):
                target = edge.target
                if target not in cleared:
                    continue
                c |= cleared[target] | (untouched[target] & edge.clears)
                u |= untouched[target] & ~(edge.adds | edge.clears)
                w |= written[target] | edge.may
                s = s or (edge.silent and silent[target])
            if (c, u, w, s) != (cleared[name], untouched[name], written[name], silent[name]):
                cleared[name], untouched[name], written[name], silent[name] = c, u, w, s
                for edge in before.get(name, ()):
                    if edge.source not in queued:
                        queued.add(edge.source)
                        pending.append(edge.source)
        self.cleared = cleared
        self.untouched = untouched
        self.written = written
        self.silent = silent

    def _quiet_state(self, name: str) -> bool:
        state = self.policy.states[name]
        return not state.say and not state.vary and not state.choose

    def empty_at_end(self, need: int, must: int, target: str | None) -> int:
        """Values of ``need`` that may be empty when a turn at this point stops."""
        if target is None:
            return need & ~must
        return need & (self.cleared[target] | (self.untouched[target] & ~must))

    def never_at_end(self, need: int, may: int, target: str | None) -> int:
        """Slots of ``need`` that no path can have set when a turn at this point stops."""
        possible = may | (self.written[target] if target is not None else 0)
        return need & ~possible & self.slot_bits


class _Analysis:
    """Runs the rules over a graph whose passes are done, collecting problems."""

    def __init__(self, graph: _Graph, referenced: set[str]) -> None:
        self.graph = graph
        self.referenced = referenced
        self.policy = graph.policy
        self.catalog = graph.catalog
        self.problems: list[Problem] = []
        self.reported_dead: set[str] = set()
        self._into: dict[str, list[_Edge]] | None = None
        self._points_list: list[tuple[str, Path_, str, int, int, str | None]] | None = None

    def add(self, code: str, message: str, location: Location, hint: str = "") -> None:
        severity = RULES[code].severity
        self.problems.append(Problem(code, message, location, hint, severity=severity))

    def at(self, path: Path_) -> Location:
        return self.policy.locate(*path)

    def key(self, *path: str | int) -> Location:
        return self.policy.locate_key(*path)

    def run(self) -> list[Problem]:
        self.structure()
        self.traps()
        self.loops()
        self.intents()
        self.silence()
        self.placeholders()
        self.decision_reads()
        self.promises()
        self.slot_only_routes()
        self.examples()
        self.no_effect()
        self.never_said()
        return self.problems

    # --- graph -----------------------------------------------------------------------------

    def structure(self) -> None:
        graph = self.graph
        for name in self.policy.states:
            if name not in graph.reachable or graph.kind[name] != "wait":
                continue
            state = self.policy.states[name]
            if not state.on and state.filled is None and not state.globals:
                continue  # SOP029 reports it
            if all(e.target in (None, name) for e in graph.edges[name]):
                self.reported_dead.add(name)
                self.add(
                    "SOP040",
                    f"state {name!r} waits for input, but every route it takes stays there",
                    self.key("states", name),
                    hint="give some route a 'to', or mark the state terminal",
                )

    def traps(self) -> None:
        graph = self.graph
        policy = self.policy
        terminals = [n for n, kind in graph.kind.items() if kind == "terminal"]
        if not terminals:
            self.add(
                "SOP041",
                "no state is terminal: no conversation can ever end",
                self.key("states"),
                hint="add a state with 'terminal: true' and route to it",
            )
            return
        into: dict[str, list[str]] = {}
        for name in graph.reachable:
            for edge in graph.edges[name]:
                if edge.target is not None:
                    into.setdefault(edge.target, []).append(name)
        ends = set(terminals)
        pending = deque(terminals)
        while pending:
            name = pending.popleft()
            for source in into.get(name, ()):
                if source not in ends:
                    ends.add(source)
                    pending.append(source)
        trapped = graph.reachable - ends
        for name in policy.states:
            if name not in trapped or name in self.reported_dead:
                continue
            entry = name == policy.initial or any(s not in trapped for s in into.get(name, ()))
            if not entry:
                continue
            group = self._closure(name, trapped)
            others = sorted(group - {name})
            detail = f" (it only leads to {_states_phrase(others)})" if others else ""
            self.add(
                "SOP041",
                f"no terminal state can be reached from state {name!r}{detail}",
                self.key("states", name),
                hint="route some state of the group to a terminal state",
            )

    def _closure(self, start: str, within: set[str]) -> set[str]:
        seen = {start}
        pending = [start]
        while pending:
            for edge in self.graph.edges[pending.pop()]:
                if edge.target in within and edge.target not in seen:
                    seen.add(edge.target)
                    pending.append(edge.target)
        return seen

    def loops(self) -> None:
        graph = self.graph
        nodes = [n for n in self.policy.states if n in graph.reachable and graph.within_turn(n)]
        members = set(nodes)
        follow = {n: [e.target for e in graph.within_turn(n) if e.target in members] for n in nodes}
        for component in _components(nodes, follow):
            first = component[0]
            if len(component) == 1 and first not in follow[first]:
                continue
            for cycle in self._repeatable(component):
                head = cycle[0]
                if len(cycle) == 1:
                    what = f"state {head!r} can route back to itself"
                else:
                    what = f"{_states_phrase(cycle)} can route among themselves in a circle"
                self.add(
                    "SOP042",
                    f"{what} without waiting for the user",
                    self.key("states", head),
                    hint="let a state of the cycle wait for input, or route an outcome out of it",
                )

    def _repeatable(self, component: list[str]) -> list[list[str]]:
        """The cycles of a turn-internal component that a turn can go round forever.

        A waiting state passes the turn on only when its slots may be filled as the turn
        comes back round, so the values possibly set on re-entering each state are computed
        from the cycle alone (a greatest fixed point: starting from every value, keeping what
        the way round can still carry); states no way round can re-enter drop out.
        """
        graph = self.graph
        alive = set(component)
        values = dict.fromkeys(component, graph.all)
        while True:
            arriving: dict[str, int] = {}
            for name in alive:
                for edge in graph.within_turn(name):
                    if edge.target not in alive:
                        continue
                    if edge.kind == "filled":
                        if graph.guard[name] & ~values[name]:
                            continue
                        out = values[name]
                    else:
                        out = (values[name] & ~edge.empties) | edge.may
                    arriving[edge.target] = arriving.get(edge.target, 0) | out
            if set(arriving) == alive and all(arriving[n] == values[n] for n in alive):
                break
            alive = set(arriving)
            values = {n: arriving[n] & values[n] for n in alive}
        follow = {
            n: [
                e.target
                for e in graph.within_turn(n)
                if e.target in alive and (e.kind != "filled" or not graph.guard[n] & ~values[n])
            ]
            for n in alive
        }
        order = [n for n in component if n in alive]
        return [
            cycle
            for cycle in _components(order, follow)
            if len(cycle) > 1 or cycle[0] in follow[cycle[0]]
        ]

    def intents(self) -> None:
        graph = self.graph
        routed = set(self.policy.global_.on)
        for state in self.policy.states.values():
            routed.update(state.on)
        accepted: set[str] = set()
        for name in graph.reachable:
            if graph.kind[name] == "wait":
                accepted.update(graph.intent_routes(name))
        for intent in self.policy.intents:
            if intent in routed and intent not in accepted:
                self.add(
                    "SOP043",
                    f"intent {intent!r} is routed only where no conversation gets to",
                    self.key("intents", intent),
                    hint="route it in a reachable waiting state, or remove it",
                )

    # --- silence ---------------------------------------------------------------------------

    def silence(self) -> None:
        graph = self.graph
        policy = self.policy
        if graph.silent.get(policy.initial, False):
            self.add(
                "SOP044",
                f"the conversation can open with silence: nothing is said on entering"
                f" {policy.initial!r} or on the way on from it",
                self.key("initial"),
                hint="say a greeting in the initial state",
            )
        if not policy.global_.error.say:
            self.add(
                "SOP044",
                "the error route says nothing: a failed turn answers with silence",
                self.at(("global", "error")),
                hint="say a line such as 'Sorry, something went wrong'",
            )
        found: dict[Path_, tuple[_Edge, set[str]]] = {}
        for name in graph.reachable:
            if graph.kind[name] != "wait":
                continue
            for edge in graph.edges[name]:
                if not edge.silent:
                    continue
                if edge.target is not None and not graph.silent.get(edge.target, False):
                    continue
                found.setdefault(edge.at, (edge, set()))[1].add(name)
        for at, (edge, states) in found.items():
            if edge.target is None:
                what = "says no line and stays"
            elif edge.target in policy.states and graph.stops(edge.target):
                what = f"says no line, and neither does {edge.target!r} on entering it"
            else:
                what = f"says no line, and nothing is said on the way on from {edge.target!r}"
            self.add(
                "SOP044",
                f"the route of {edge.describe()} {what} (in {_states_phrase(states)})",
                self.at(at),
                hint="say a line on the route or on entering the state it leads to",
            )

    # --- placeholders ----------------------------------------------------------------------

    def points(self) -> list[tuple[str, Path_, str, int, int, str | None]]:
        """`_points`, computed once."""
        if self._points_list is None:
            self._points_list = list(self._points())
        return self._points_list

    def _points(self) -> Iterator[tuple[str, Path_, str, int, int, str | None]]:
        """Every place a line may be said: (response, path, state, must, may, target).

        ``must`` and ``may`` are the values at the moment the line is said, ``target`` the
        state the turn goes on to (``None``: the turn stops there).
        """
        graph = self.graph
        policy = self.policy
        for name in self.policy.states:
            if name not in graph.reachable:
                continue
            state = policy.states[name]
            must, may = graph.must[name], graph.may[name]
            kind = graph.kind[name]
            if kind != "decide" and name not in graph.auto:
                for field in ("say", "vary", "choose"):
                    for index, response in enumerate(getattr(state, field)):
                        yield response, ("states", name, field, index), name, must, may, None
            if kind == "decide":
                for edge in graph.edges[name]:
                    after = (must & ~edge.clears) | edge.adds
                    for path, response in _route_lines(edge):
                        yield response, path, name, after, may | edge.may, edge.target
            elif kind == "wait":
                waiting = may | graph.guard[name]
                for edge in graph.edges[name]:
                    for path, response in _route_lines(edge):
                        yield response, path, name, must | edge.adds, waiting, edge.target
                for slot in graph.unmask(graph.guard[name] & graph.slot_bits):
                    spec = policy.slots[slot]
                    for field in ("ask", "invalid"):
                        response = getattr(spec, field)
                        if response is not None:
                            yield response, ("slots", slot, field), name, must, waiting, None

    def placeholders(self) -> None:
        graph = self.graph
        grouped: dict[tuple[Path_, str, str, str], set[str]] = {}
        why: dict[tuple[Path_, str, str, str], str] = {}
        for response, path, state, must, may, target in self.points():
            entry = self.catalog.responses.get(response)
            if entry is None or not entry.placeholders:
                continue
            need = graph.mask(entry.placeholders)
            never = graph.never_at_end(need, may, target)
            empty = graph.empty_at_end(need, must, target) & ~never
            for code, bits in (("SOP048", never), ("SOP047", empty)):
                for name in graph.unmask(bits):
                    key = (path, response, name, code)
                    grouped.setdefault(key, set()).add(state)
                    if key not in why:
                        why[key] = self._why(name, state, must, target)
        for (path, response, name, code), states in grouped.items():
            where = _states_phrase(states)
            if code == "SOP048":
                message = (
                    f"response {response!r} needs {{{name}}}, but no path can have given the"
                    f" slot a value when it is said (in {where})"
                )
                hint = "collect or require the slot before this point"
            else:
                message = (
                    f"response {response!r} needs {{{name}}}, which may have no value when it"
                    f" is said (in {where}): {why[(path, response, name, code)]}"
                )
                hint = (
                    "require the slot on the route, collect it before, or declare it in"
                    " @decision(sets=...) of a decision that runs before"
                )
            self.add(code, message, self.at(path), hint=hint)

    def _why(self, name: str, state: str, must: int, target: str | None) -> str:
        """A short reason why ``name`` may be empty at the end of a turn at this point."""
        graph = self.graph
        bit = graph.bit[name]
        if target is not None and graph.cleared[target] & bit:
            clearing = self._clearing_edge(target, bit)
            if clearing is not None:
                function = self.policy.states[clearing.source].decide
                return (
                    f"{function} may clear it later in the turn ({clearing.describe()} of"
                    f" {clearing.source!r})"
                )
        if must & bit:
            return "a later step of the turn may leave it empty"
        cleared, example = self._losing_edge(state, bit)
        if cleared is not None:
            function = self.policy.states[cleared.source].decide
            reason = (
                f"{function} may clear it on the way there ({cleared.describe()} of"
                f" {cleared.source!r})"
            )
        elif example is not None:
            reason = (
                f"some path into {state!r} never sets it for certain, e.g. through"
                f" {example.source!r} ({example.describe()})"
            )
        else:
            reason = "conversations start without it"
        if name in self.policy.facts:
            reason += "; facts the host passes in are never certain"
        return reason

    def _clearing_edge(self, start: str, bit: int) -> _Edge | None:
        graph = self.graph
        seen = {start}
        pending = deque([start])
        while pending:
            for edge in graph.within_turn(pending.popleft()):
                if edge.clears & bit:
                    return edge
                if edge.target is not None and edge.target not in seen:
                    seen.add(edge.target)
                    pending.append(edge.target)
        return None

    def _losing_edge(self, state: str, bit: int) -> tuple[_Edge | None, _Edge | None]:
        """Where a value is lost on some path into ``state``.

        Returns the edge that may clear it (its source had it), or else an edge along a path
        into ``state`` on which nothing sets it: the nearest outcome of a decision (where
        ``sets`` could promise it), or the nearest edge when no decision is on the way.
        """
        graph = self.graph
        if self._into is None:
            self._into = {}
            for source in self.policy.states:
                if source in graph.reachable:
                    for edge in graph.edges[source]:
                        if edge.target is not None:
                            self._into.setdefault(edge.target, []).append(edge)
        nearest: _Edge | None = None
        decided: _Edge | None = None
        seen = {state}
        pending = deque([state])
        while pending:
            for edge in self._into.get(pending.popleft(), ()):
                out = (graph.must[edge.source] & ~edge.clears) | edge.adds
                if out & bit:
                    continue
                if graph.must[edge.source] & bit:
                    return edge, None
                nearest = nearest or edge
                if edge.kind == "outcome":
                    decided = decided or edge
                if edge.source not in seen:
                    seen.add(edge.source)
                    pending.append(edge.source)
        return None, decided or nearest

    def decision_reads(self) -> None:
        graph = self.graph
        for name in self.policy.states:
            if name not in graph.reachable or graph.kind[name] != "decide":
                continue
            function = self.policy.states[name].decide
            summary = graph.summaries.get(function or "")
            if summary is None:
                continue
            for read in summary.reads:
                bit = graph.bit.get(read.name)
                if bit is None:
                    continue
                where = f"ctx.{read.kind}[{read.name!r}] ({shown_path(read.file)}:{read.line})"
                if not graph.may[name] & bit & graph.slot_bits and read.name in self.policy.slots:
                    self.add(
                        "SOP048",
                        f"{function} reads {where}, but no path into {name!r} can have given"
                        " the slot a value",
                        self.at(("states", name, "decide")),
                        hint="collect or require the slot before the decision",
                    )
                elif not graph.must[name] & bit:
                    reason = self._why(read.name, name, graph.must[name], None)
                    self.add(
                        "SOP049",
                        f"{function} reads {where}, which may be empty in {name!r}: {reason}",
                        self.at(("states", name, "decide")),
                        hint="require or collect it before the decision, or read it with .get",
                    )

    def promises(self) -> None:
        values = set(self.policy.slots) | set(self.policy.facts)
        seen: set[str] = set()
        for name, state in self.policy.states.items():
            summary = self.graph.summaries.get(state.decide or "")
            if summary is None or summary.name in seen:
                continue
            seen.add(summary.name)
            for outcome, promised in summary.declared.items():
                for value in promised:
                    if value not in values:
                        self.add(
                            "SOP050",
                            f"{summary.name} declares it sets {value!r} on {outcome!r}, but"
                            " the policy declares no such slot or fact",
                            self.at(("states", name, "decide")),
                            hint="declare the slot or fact, or correct the name in sets",
                        )

    # --- routing ---------------------------------------------------------------------------

    def slot_only_routes(self) -> None:
        graph = self.graph
        grouped: dict[tuple[Path_, str], set[str]] = {}
        for name in graph.reachable:
            if graph.kind[name] != "wait":
                continue
            routes = [
                (intent, route, at)
                for intent, (route, at) in graph.intent_routes(name).items()
                if route.require
            ]
            for index, (intent, route, at) in enumerate(routes):
                for earlier, first, _ in routes[:index]:
                    shared = sorted(set(route.require) & set(first.require))
                    if shared and _effect(route) != _effect(first):
                        message = (
                            f"a message that only gives {{{shared[0]}}} takes the route of"
                            f" {earlier!r}, declared first, never this route of {intent!r}"
                        )
                        grouped.setdefault((at, message), set()).add(name)
                        break
            filled = self.policy.states[name].filled
            if filled is None:
                continue
            winners: dict[str, tuple[str, Route]] = {}
            for intent, route, _ in routes:
                for slot in route.require:
                    winners.setdefault(slot, (intent, route))
            for slot, (intent, route) in winners.items():
                if _effect(route) != _effect(filled):
                    message = (
                        f"a message that only gives {{{slot}}} takes the route of {intent!r},"
                        " which requires it, instead of 'filled', and they lead to different"
                        " places or say different lines"
                    )
                    grouped.setdefault((("states", name, "filled"), message), set()).add(name)
                    break
        for (at, message), states in grouped.items():
            self.add(
                "SOP051",
                f"{message} (in {_states_phrase(states)})",
                self.at(at),
                hint="make the competing routes lead to the same place, or require other slots",
            )

    def examples(self) -> None:
        from sopagent._compile import OUT_OF_SCOPE_LABEL, _normalize  # noqa: PLC0415

        graph = self.graph
        policy = self.policy
        owners: dict[str, list[tuple[str, int]]] = {}
        for intent, spec in policy.intents.items():
            for index, example in enumerate(spec.examples):
                owners.setdefault(_normalize(example), []).append((intent, index))
        custom = policy.out_of_scope
        outside = custom.examples if custom is not None and custom.examples else None
        for index, example in enumerate(outside or OUT_OF_SCOPE_LABEL.examples):
            owners.setdefault(_normalize(example), []).append((OUT_OF_SCOPE, index))
        clashes = {text: found for text, found in owners.items() if len({i for i, _ in found}) > 1}
        if not clashes:
            return
        order = {intent: rank for rank, intent in enumerate(policy.intents)}
        grouped: dict[tuple[Location, str], set[str]] = {}
        for name in graph.reachable:
            if graph.kind[name] != "wait":
                continue
            accepted = set(graph.intent_routes(name))
            for text, found in clashes.items():
                live = [(i, n) for i, n in found if i in accepted and i != OUT_OF_SCOPE]
                winner = max((i for i, _ in live), key=order.__getitem__, default=None)
                if winner is None:
                    continue
                mine = next(n for i, n in found if i == winner)
                for intent, index in found:
                    if intent == winner:
                        continue
                    if intent == OUT_OF_SCOPE:
                        if outside is None:
                            location = self.at(("intents", winner, "examples", mine))
                            owner = "the built-in out_of_scope examples"
                        else:
                            location = self.at(("out_of_scope", "examples", index))
                            owner = "out_of_scope"
                    elif intent in accepted:
                        location = self.at(("intents", intent, "examples", index))
                        owner = f"intent {intent!r}"
                    else:
                        continue
                    message = (
                        f"example {text!r} of {owner} is also an example of {winner!r};"
                        f" where both are accepted it always means {winner!r}"
                    )
                    grouped.setdefault((location, message), set()).add(name)
        for (location, message), states in grouped.items():
            self.add(
                "SOP052",
                f"{message} (in {_states_phrase(states)})",
                location,
                hint="keep the example under one intent only",
            )

    # --- keys without effect, lines never said ---------------------------------------------

    def no_effect(self) -> None:
        graph = self.graph
        for name, state in self.policy.states.items():
            kind = graph.kind[name]
            written = state.model_fields_set
            if kind == "decide":
                for field in ("say", "vary", "choose"):
                    if getattr(state, field):
                        self.add(
                            "SOP053",
                            f"{field!r} of deciding state {name!r} is never said: only the"
                            " outcome routes speak there",
                            self.key("states", name, field),
                            hint="say the line on the outcome routes",
                        )
            if kind in ("decide", "terminal"):
                role = "a deciding" if kind == "decide" else "a terminal"
                for field in ("fallback", "confidence", "globals"):
                    if field in written:
                        self.add(
                            "SOP053",
                            f"{field!r} has no effect on {role} state ({name!r} never waits"
                            " for input)",
                            self.key("states", name, field),
                            hint="remove it",
                        )
            if state.filled is not None and state.filled.require:
                self.add(
                    "SOP053",
                    f"'require' of the 'filled' route of {name!r} is never checked: 'filled'"
                    " is taken when the state's own slots are filled",
                    self.key("states", name, "filled", "require"),
                    hint="collect the slot in the state instead",
                )
            if name in graph.auto and (state.say or state.vary or state.choose):
                field = "say" if state.say else "vary" if state.vary else "choose"
                self.add(
                    "SOP053",
                    f"the lines of {name!r} are never said: its slots are filled on every path"
                    " into it, so it moves on at once",
                    self.key("states", name, field),
                    hint="say them on the routes into the state, or remove them",
                )

    def never_said(self) -> None:
        live: set[str] = set(self.policy.global_.error.say)
        if self.policy.limits.too_long is not None:
            live.add(self.policy.limits.too_long)
        # Filler lines are said whenever a turn misses its time budget, in any waiting state.
        for filler in (
            self.policy.global_.filler,
            *(s.filler for s in self.policy.states.values()),
        ):
            if filler is not None:
                live.update((*filler.say, *filler.vary))
        for response, *_ in self.points():
            live.add(response)
        for response in sorted(self.referenced - live):
            if response not in self.catalog.responses:
                continue
            self.problems.append(
                Problem(
                    "SOP046",
                    f"response {response!r} is only named where it is never said"
                    " (unreachable states, deciding states' own lines, or states that always"
                    " move on at once)",
                    self.catalog.locate_key("responses", response),
                    "say it where conversations go, or remove it",
                    severity=RULES["SOP046"].severity,
                )
            )


def _route_lines(edge: _Edge) -> Iterator[tuple[Path_, str]]:
    for field in ("say", "vary", "choose"):
        for index, response in enumerate(getattr(edge.route, field)):
            yield (*edge.at, field, index), response


def _effect(route: Route) -> tuple[object, ...]:
    """What taking a route does, to tell routes that differ from routes that only repeat."""
    return (
        route.to,
        tuple(route.say),
        tuple(route.vary),
        tuple(route.choose),
        tuple(repr(effect) for effect in route.effects),
    )


def _components(nodes: list[str], follow: Mapping[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    order = {n: i for i, n in enumerate(nodes)}
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, position = work[-1]
            successors = follow.get(node, [])
            if position < len(successors):
                work[-1] = (node, position + 1)
                child = successors[position]
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component, key=order.__getitem__))
    return found


def analyze(
    policy: Policy,
    catalog: Catalog,
    functions: Mapping[str, DecisionFunction],
    referenced: set[str] | None = None,
) -> list[Problem]:
    """Run the graph, data and routing rules on a policy without reference errors.

    Args:
        policy: a loaded policy whose `check_policy` found no errors.
        catalog: its catalog.
        functions: its decision functions, from `resolve_decisions`.
        referenced: `references` of the policy, when already known.

    Returns:
        The problems found, unsorted.
    """
    graph = _Graph(policy, catalog, functions)
    graph.forward()
    graph.backward()
    named = referenced if referenced is not None else references(policy)
    return _Analysis(graph, named).run()
