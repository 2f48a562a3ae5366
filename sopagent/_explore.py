"""The abstract machine of a compiled policy, built by driving the real turn logic.

`sopagent verify` and `sopagent diff` reason about every conversation a policy allows, whatever
the model says and whatever its decision functions return. They do so on a finite graph whose
nodes are what matters of a session between steps (the state, which slots have a value, whether
the turn is waiting on a decision) and whose edges are found by running `Agent`'s own turn code
with an adversary in place of the model and of the decision functions:

* in a waiting state the adversary may answer any label the state allows, be unsure (the
  confidence rule's route), give slot values alone (valid or invalid), or fail (the error route);
* a decision function may return any outcome it declares, with the slot updates its code can
  make (read from its ``return`` statements; any update when the code cannot be read).

A turn that enters a deciding state is cut there, so the graph has one node per deciding state
and slot filling instead of one path per sequence of outcomes: its size is states x inputs, not
conversations. Every step records its events in order (intent, slots filled, states entered,
decisions, responses said, the end), the alphabet of the policy's properties.

`Recorder` is the same instrumentation on a real agent, used to check properties on concrete
conversations with the real decision functions.
"""

from __future__ import annotations

import ast
import gc
import inspect
import itertools
import textwrap
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from typing_extensions import override

from sopagent._agent import Agent, _Classified, _RouteFault, _Work
from sopagent._compile import CompiledPolicy, CompiledState
from sopagent._effects import CompiledEffect
from sopagent._slots import Found
from sopagent.audit import NullSink
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Usage
from sopagent.decisions import DecisionFunction, declared_effects
from sopagent.errors import BackendError
from sopagent.policy import OUT_OF_SCOPE
from sopagent.session import DecisionRecord, Session, SessionUsage, Turn

__all__ = [
    "AbstractMachine",
    "Branch",
    "Event",
    "Input",
    "Move",
    "Node",
    "Recorder",
    "TurnPath",
    "Update",
    "decision_updates",
    "effect_text",
]

EventKind = Literal["intent", "filled", "enter", "say", "choose", "decision", "effect", "ended"]


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened during a turn, in the order it happened.

    Attributes:
        kind: ``intent`` (the turn's label), ``filled`` (a slot or fact given a value),
            ``enter`` (a state entered), ``say`` (a response), ``choose`` (the model picks one
            of ``options``; only before the choice is known), ``decision``, ``effect`` (an
            effect emitted), ``ended``.
        name: the label, slot or fact, state, response, decision function or effect.
        state: the state it happened in (for ``intent``: the state that waited).
        outcome: a decision's outcome.
        options: the responses of a ``choose``.
        maybe: the event may or may not happen (a fact an unreadable decision may set).
        values: slot and fact values (JSON form) when it happened; ``None`` in the abstract
            machine, where values are unknown. For a decision: the values it was given.
        index: for ``say`` and ``choose``, the position among the turn's responses.
        args: for ``effect``: the arguments known (JSON form), in declaration order.
        unknown: for ``effect``: the parameters whose value the abstract machine does not
            know (taken from a slot or fact, or returned by a decision function).
    """

    kind: EventKind
    name: str
    state: str = ""
    outcome: str = ""
    options: tuple[str, ...] = ()
    maybe: bool = False
    values: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    index: int = field(default=-1, compare=False, hash=False)
    args: tuple[tuple[str, Any], ...] = field(default=(), hash=False)
    unknown: frozenset[str] = field(default=frozenset(), hash=False)

    def __str__(self) -> str:
        if self.kind == "decision":
            return f"decision {self.name}={self.outcome}"
        if self.kind == "effect":
            return f"effect {effect_text(self)}"
        if self.kind == "enter":
            return f"state {self.name}"
        if self.kind == "choose":
            return f"choose {'|'.join(self.options)}"
        if self.kind == "ended":
            return "end"
        return f"{self.kind} {self.name}"


def effect_text(event: Event) -> str:
    """An effect event as a call, e.g. ``give_item(item=silver_key)``; ``?`` for unknowns."""
    known = dict(event.args)
    parts = [f"{k}={v}" for k, v in known.items()]
    parts += [f"{k}=?" for k in sorted(event.unknown - set(known))]
    return f"{event.name}({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Input:
    """What the adversary answers in a waiting state.

    Attributes:
        label: the intent (``out_of_scope`` included), or ``None`` for slot values alone.
        slots: ``(slot, valid)`` for each slot value found in the message.
        unsure: the model names ``label`` with a score below the confidence threshold.
        error: the backend fails (or a decision function does): the error route.
    """

    label: str | None = None
    slots: tuple[tuple[str, bool], ...] = ()
    unsure: bool = False
    error: bool = False

    def __str__(self) -> str:
        if self.error:
            return "(the backend or a decision fails)"
        parts = []
        if self.label is not None:
            parts.append(self.label + (" (unsure)" if self.unsure else ""))
        for slot, valid in self.slots:
            parts.append(f"{slot}={'<valid>' if valid else '<invalid>'}")
        return " + ".join(parts) or "(nothing)"


NodeKind = Literal["start", "rest", "pending", "ended"]


@dataclass(frozen=True, slots=True)
class Node:
    """What matters of a session between two steps.

    ``start``: not started; ``rest``: waiting for the user in ``state``; ``pending``: a turn
    is about to run ``state``'s decision function; ``ended``: in terminal ``state``.
    """

    kind: NodeKind
    state: str
    filled: frozenset[str] = frozenset()

    def __str__(self) -> str:
        slots = ",".join(sorted(self.filled))
        return f"{self.kind}:{self.state}" + (f"[{slots}]" if slots else "")


@dataclass(frozen=True, slots=True)
class Branch:
    """One possible result of a move: what happened and where the session is then.

    Attributes:
        events: in order.
        target: the next node; ``None`` when the turn fails while deciding (the session goes
            back to where the turn started, which the failing input of that node covers).
        failed: the turn took the error route; only the error lines were said.
        decision: ``(state, function, outcome)`` chosen for a pending node's decision.
        choices: the response the model chose for each ``choose``, in order.
        other_choice: some ``choose`` picked another response than its first.
        slots: slots the decision gave a value (``sets``) and cleared.
        routes: the machine's transitions fired, as ``(trigger, source, dest)``.
    """

    events: tuple[Event, ...]
    target: Node | None
    failed: bool = False
    decision: tuple[str, str, str] | None = None
    choices: tuple[str, ...] = ()
    other_choice: bool = False
    sets: frozenset[str] = frozenset()
    clears: frozenset[str] = frozenset()
    routes: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class Move:
    """A choice of the user (an input, at a rest node) or of the environment (a decision)."""

    input: Input | None
    branches: tuple[Branch, ...]


@dataclass(frozen=True, slots=True)
class TurnPath:
    """A whole turn from a rest node: its events, decisions and the node it ends in."""

    events: tuple[Event, ...]
    target: Node
    failed: bool = False
    decisions: tuple[tuple[str, str, str], ...] = ()
    branches: tuple[Branch, ...] = ()


# --- what a decision function can change --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """Slot and fact changes one ``return`` of a decision function can make.

    ``slots_unknown``: the slot updates could not be read; any slot may be set or cleared.
    ``facts_unknown``: likewise for facts; any fact may be set.
    ``effects``: the effects returned, in order, as ``(name, constant arguments, parameters
    given by expressions)``; ``effects_unknown``: they could not be read, so any effect the
    function declares for the outcome may come, with any arguments.
    """

    sets: frozenset[str] = frozenset()
    clears: frozenset[str] = frozenset()
    facts: frozenset[str] = frozenset()
    slots_unknown: bool = False
    facts_unknown: bool = False
    effects: tuple[tuple[str, tuple[tuple[str, Any], ...], frozenset[str]], ...] = ()
    effects_unknown: bool = False


_NO_UPDATE = Update()
_UNKNOWN = Update(slots_unknown=True, facts_unknown=True, effects_unknown=True)

ReadEffect = tuple[str, tuple[tuple[str, Any], ...], frozenset[str]]


def _effect_list(node: ast.expr | None) -> tuple[ReadEffect, ...] | None:
    """The effects of a literal list of ``Effect(name=..., args={...})``; ``None``: unreadable.

    Constant argument values are kept; any other expression makes its parameter unknown.
    """
    if node is None or (isinstance(node, ast.Constant) and node.value is None):
        return ()
    if not isinstance(node, ast.List | ast.Tuple):
        return None
    out: list[ReadEffect] = []
    for item in node.elts:
        if not isinstance(item, ast.Call):
            return None
        func = item.func
        if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) != "Effect":
            return None
        given: dict[str, ast.expr] = dict(zip(("name", "args"), item.args, strict=False))
        for keyword in item.keywords:
            if keyword.arg is None:
                return None
            given[keyword.arg] = keyword.value
        name = given.get("name")
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            return None
        args = given.get("args")
        known: list[tuple[str, Any]] = []
        unknown: set[str] = set()
        if args is not None:
            if not isinstance(args, ast.Dict):
                return None
            for key, value in zip(args.keys, args.values, strict=True):
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    return None
                if isinstance(value, ast.Constant) and isinstance(value.value, str | int | bool):
                    known.append((key.value, value.value))
                else:
                    unknown.add(key.value)
        out.append((name.value, tuple(known), frozenset(unknown)))
    return tuple(out)


class _Unreadable(Exception):  # noqa: N818 (internal signal, never raised to callers)
    pass


def _keys(node: ast.expr | None) -> tuple[frozenset[str], frozenset[str]] | None:
    """Keys given a value and keys cleared (``None``) by a literal dict; ``None``: unreadable."""
    if node is None or (isinstance(node, ast.Constant) and node.value is None):
        return frozenset(), frozenset()
    if not isinstance(node, ast.Dict):
        return None
    sets: set[str] = set()
    clears: set[str] = set()
    for key, value in zip(node.keys, node.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            return None
        if isinstance(value, ast.Constant) and value.value is None:
            clears.add(key.value)
        else:
            sets.add(key.value)
    return frozenset(sets), frozenset(clears)


class _Reader:
    """Reads the outcomes a function's ``return`` statements give, and their updates."""

    def __init__(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function = function
        # Local names bound only to outcome names ("locked" if n > 2 else "wrong_code").
        self.names: dict[str, list[str]] = {}
        unreadable: set[str] = set()
        for node in _statements(function):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            for target in targets:
                if not isinstance(target, ast.Name):
                    continue
                value = getattr(node, "value", None)
                literal = (
                    self.literals(value) if isinstance(node, ast.Assign | ast.AnnAssign) else None
                )
                if literal is None:
                    unreadable.add(target.id)
                else:
                    self.names.setdefault(target.id, []).extend(literal)
        for name in unreadable:
            self.names.pop(name, None)

    def literals(self, node: ast.expr | None) -> list[str] | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.IfExp):
            body, orelse = self.literals(node.body), self.literals(node.orelse)
            return None if body is None or orelse is None else body + orelse
        return None

    def outcomes(self, node: ast.expr | None) -> list[str]:
        found = self.literals(node)
        if found is not None:
            return found
        if isinstance(node, ast.Name) and node.id in self.names:
            return self.names[node.id]
        raise _Unreadable

    def returned(self, node: ast.expr) -> list[tuple[str, Update]]:
        if isinstance(node, ast.IfExp):
            return self.returned(node.body) + self.returned(node.orelse)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name != "Outcome":
                raise _Unreadable
            arguments: dict[str, ast.expr] = dict(
                zip(("name", "slots", "facts", "effects"), node.args, strict=False)
            )
            for keyword in node.keywords:
                if keyword.arg is None:
                    raise _Unreadable
                arguments[keyword.arg] = keyword.value
            slots = _keys(arguments.get("slots"))
            facts = _keys(arguments.get("facts"))
            effects = _effect_list(arguments.get("effects"))
            update = Update(
                sets=slots[0] if slots else frozenset(),
                clears=slots[1] if slots else frozenset(),
                facts=facts[0] if facts else frozenset(),
                slots_unknown=slots is None,
                facts_unknown=facts is None,
                effects=effects or (),
                effects_unknown=effects is None,
            )
            return [(o, update) for o in self.outcomes(arguments.get("name"))]
        return [(o, _NO_UPDATE) for o in self.outcomes(node)]


def _statements(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes of a function's body, not those of functions or classes defined in it."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def decision_updates(function: DecisionFunction) -> dict[str, tuple[Update, ...]] | None:
    """Read the slot and fact updates each outcome of a decision function can make.

    Every ``return`` must give its outcome's name as a literal (``"eligible"``, or
    ``Outcome("found", slots={...}, facts={...})``, possibly inside ``a if c else b``, or through
    a local variable only ever bound to such literals). In a literal ``slots`` dict, ``None``
    clears a slot and any other value gives it one; a ``slots`` or ``facts`` argument that is
    not a literal dict may change any slot or fact.

    Returns:
        The updates of each declared outcome, or ``None`` when the outcomes cannot be read
        (then any outcome may set or clear anything).
    """
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    definition = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)), None
    )
    if definition is None:
        return None
    reader = _Reader(definition)
    found: dict[str, list[Update]] = {o: [] for o in function.__sopagent_outcomes__}
    try:
        for node in _statements(definition):
            if not isinstance(node, ast.Return) or node.value is None:
                continue  # returning None is refused by the agent: the error route
            for outcome, update in reader.returned(node.value):
                if outcome in found and update not in found[outcome]:
                    found[outcome].append(update)
    except _Unreadable:
        return None
    return {o: tuple(updates) or (_NO_UPDATE,) for o, updates in found.items()}


# --- instrumented agents --------------------------------------------------------------------


class _Suspend(Exception):  # noqa: N818 (control flow: the turn reached a decision)
    """The turn reached a decision the adversary has not chosen yet."""


class _NoModel:
    """A backend for agents whose classification is supplied: it is never asked."""

    name = "verify"

    def classify(self, request: ClassifyRequest) -> Classification:  # noqa: ARG002 (Protocol)
        """Answer out_of_scope (used only when a concrete message needs the model)."""
        return Classification(OUT_OF_SCOPE, 1.0, {OUT_OF_SCOPE: 1.0}, {}, Usage())

    def choose(self, request: ChooseRequest) -> Choice:
        """Pick the first option, as the scripted backend does."""
        return Choice(request.options[0].name, 1.0, Usage())


class Recorder(Agent):
    """An agent that records the events of each turn, in order, with the values at the time.

    The turn logic is `Agent`'s; only hooks around saying, re-asking, routing and deciding
    are added. After a turn, ``events`` holds what happened (``choose`` events are replaced
    by what was chosen). A failed turn's events are only its error lines.
    """

    concrete = True

    def __init__(self, compiled: CompiledPolicy, backend: Any | None = None) -> None:
        super().__init__(compiled, backend or _NoModel(), audit=NullSink(), audit_text=False)
        self.events: list[Event] = []
        self._work: _Work | None = None
        self._paths = 0
        self._said = 0
        self.fired: list[tuple[str, str, str]] = []

    # -- the record ------------------------------------------------------------------------

    def begin(self, work: _Work | None = None, *, paths: int = 0) -> None:
        """Start recording a new step (``paths``: states of ``work.path`` already recorded)."""
        self.events = []
        self._work = work
        self._paths = paths
        self._said = 0
        self.fired = []

    def _values(self, work: _Work) -> Mapping[str, Any] | None:
        return {**work.facts, **work.slots} if self.concrete else None

    def sync(self, work: _Work) -> None:
        """Record states entered and lines said since the last record."""
        if work is not self._work:
            self._work, self._paths, self._said = work, 0, 0
        states = self.compiled.states
        if len(work.path) > self._paths:
            values = self._values(work)
            for name in work.path[self._paths :]:
                self.events.append(Event("enter", name, name, values=values))
                if states[name].kind == "terminal":
                    self.events.append(Event("ended", "", name, values=values))
            self._paths = len(work.path)
        if len(work.said) > self._said:
            values = self._values(work)
            for index in range(self._said, len(work.said)):
                group = work.said[index]
                if len(group) == 1:
                    event = Event("say", group[0], work.state, values=values, index=index)
                else:
                    event = Event(
                        "choose", "", work.state, options=group, values=values, index=index
                    )
                self.events.append(event)
            self._said = len(work.said)

    def finish(self, turn: Turn) -> list[Event]:
        """The events of a finished turn: choices resolved, or only the error lines."""
        if turn.error is not None:
            return [
                Event("say", r, turn.state_before, index=i)
                for i, r in enumerate(self.compiled.policy.global_.error.say)
            ]
        said = turn.response_ids
        return [
            Event("say", said[e.index], e.state, values=e.values, index=e.index)
            if e.kind == "choose" and 0 <= e.index < len(said)
            else e
            for e in self.events
        ]

    # -- hooks into the turn ---------------------------------------------------------------

    @override
    def _fire(self, trigger: str, source: str, dest: str) -> None:
        super()._fire(trigger, source, dest)
        self.fired.append((trigger, source, dest))

    @override
    def _classify(
        self,
        state: CompiledState,
        text: str,
        forced: str | None,
        found: dict[str, Any],
        taken: list[tuple[int, int]],
        locale: str | None = None,
    ) -> _Classified:
        classified = self._classify_input(state, text, forced, found, taken)
        if classified.intent is not None:
            self.events.append(Event("intent", classified.intent, state.name))
        return classified

    def _classify_input(
        self,
        state: CompiledState,
        text: str,
        forced: str | None,
        found: dict[str, Any],
        taken: list[tuple[int, int]],
    ) -> _Classified:
        return super()._classify(state, text, forced, found, taken)

    @override
    def _route(
        self,
        work: _Work,
        state: CompiledState,
        intent: str | None,
        found: dict[str, Any],
        invalid: dict[str, str],
        unsure: bool = False,
    ) -> bool:
        self.sync(work)
        values = self._values(work)
        for name in found:
            self.events.append(Event("filled", name, state.name, values=values))
        return super()._route(work, state, intent, found, invalid, unsure)

    @override
    def _say(
        self,
        work: _Work,
        say: tuple[str, ...],
        choose: tuple[str, ...],
        vary: tuple[str, ...] = (),
    ) -> None:
        self.sync(work)
        if self.concrete:
            super()._say(work, say, choose, vary)
        else:
            # The session's seed picks one `vary` line: every seed is possible, so each line
            # is explored as a choice, in its place between `say` and `choose`.
            super()._say(work, say, vary)
            if choose:
                super()._say(work, (), choose)
        self.sync(work)

    @override
    def _reask(self, work: _Work, slot: str, invalid: dict[str, str], state: CompiledState) -> None:
        self.sync(work)
        super()._reask(work, slot, invalid, state)
        self.sync(work)

    @override
    def _effects(
        self, work: _Work, effects: tuple[CompiledEffect, ...], state: str, origin: str
    ) -> None:
        self.sync(work)
        emitted = len(work.effects)
        super()._effects(work, effects, state, origin)
        self._emitted(work, emitted)

    def _emitted(self, work: _Work, since: int, values: Mapping[str, Any] | None = None) -> None:
        """Record the effects of ``work`` from index ``since`` on (``values``: when emitted)."""
        values = self._values(work) if values is None else values
        for effect in work.effects[since:]:
            self.events.append(
                Event(
                    "effect",
                    effect.name,
                    effect.state or work.state,
                    values=values,
                    args=tuple(effect.args.items()),
                )
            )

    @override
    def _decide(self, work: _Work, state: CompiledState, intent: str | None) -> str:
        self.sync(work)
        before = dict(work.slots), dict(work.facts)
        emitted = len(work.effects)
        outcome = super()._decide(work, state, intent)
        self._decided(work, state, outcome, before, emitted)
        return outcome

    def _decided(
        self,
        work: _Work,
        state: CompiledState,
        outcome: str,
        before: tuple[dict[str, Any], dict[str, Any]],
        emitted: int,
    ) -> None:
        values = {**before[1], **before[0]} if self.concrete else None
        name = state.decide_name or "?"
        self.events.append(Event("decision", name, state.name, outcome, values=values))
        # A decision's effects see the values the decision was given, not those it set.
        self._emitted(work, emitted, values)
        after = self._values(work)
        for old, new in ((before[0], work.slots), (before[1], work.facts)):
            for key, value in new.items():
                if old.get(key, _MISSING) != value:
                    self.events.append(Event("filled", key, state.name, values=after))


_MISSING = object()
_DUMMY = "\u00b7"  # the abstract machine knows whether a slot has a value, not which


class _Slate:
    """A session as the turn reads and writes it, without pydantic's cost per assignment.

    The abstract machine runs one turn per step on a fresh session: thousands per policy.
    """

    __slots__ = (
        "ended", "facts", "history", "id", "locale", "policy", "policy_hash", "seed", "slots",
        "started", "state", "turns", "usage",
    )  # fmt: skip

    def __init__(self, compiled: CompiledPolicy, node: Node) -> None:
        self.id = "verify"
        self.policy = compiled.name
        self.policy_hash = compiled.hash
        self.state = node.state
        self.started = node.kind != "start"
        self.ended = False
        self.turns = 1
        self.slots: dict[str, Any] = dict.fromkeys(node.filled, _DUMMY)
        self.facts: dict[str, Any] = {}
        self.history: list[Any] = []
        self.usage = SessionUsage()
        self.locale: str | None = None
        self.seed = 0  # every `vary` line is explored as a choice, whatever the seed


class _Adversary(Recorder):
    """A recorder whose model answers and decision outcomes are chosen from outside."""

    concrete = False

    def __init__(self, compiled: CompiledPolicy) -> None:
        super().__init__(compiled)
        self.input = Input(OUT_OF_SCOPE)
        self.forced: tuple[str, Update] | None = None
        self.forced_sets: frozenset[str] = frozenset()
        self.forced_clears: frozenset[str] = frozenset()

    @override
    def _extract(
        self, state: CompiledState, text: str
    ) -> tuple[dict[str, Found], list[tuple[int, int]]]:
        found = {
            name: Found(_DUMMY, None, (0, 0)) if valid else Found(None, "invalid", (0, 0))
            for name, valid in self.input.slots
            if name in state.collect
        }
        return found, []

    @override
    def _classify_input(
        self,
        state: CompiledState,
        text: str,
        forced: str | None,
        found: dict[str, Any],
        taken: list[tuple[int, int]],
    ) -> _Classified:
        given = self.input
        if given.error:
            raise BackendError("the adversary fails", provider="verify")
        if given.label is None:
            return _Classified(None, 1.0, "slots", Usage(), {})
        if given.unsure:
            return _Classified(given.label, 0.0, "model", Usage(), {})
        return _Classified(given.label, 1.0, "forced", Usage(), {})

    @override
    def _decide(self, work: _Work, state: CompiledState, intent: str | None) -> str:
        self.sync(work)
        if self.forced is None:
            raise _Suspend
        outcome, update = self.forced
        self.forced = None
        had = set(work.slots)
        for slot in self.forced_clears:
            work.slots.pop(slot, None)
        for slot in self.forced_sets:
            work.slots[slot] = _DUMMY
        name = state.decide_name or "?"
        work.decisions.append(DecisionRecord(state=state.name, function=name, outcome=outcome))
        self.events.append(Event("decision", name, state.name, outcome))
        for slot in sorted(self.forced_sets):
            # Code that cannot be read may also have left a value as it was.
            maybe = update.slots_unknown and slot in had
            self.events.append(Event("filled", slot, state.name, maybe=maybe))
        facts = self.compiled.policy.facts
        if update.facts_unknown:
            self.events.extend(Event("filled", f, state.name, maybe=True) for f in facts)
        else:
            self.events.extend(Event("filled", f, state.name) for f in sorted(update.facts))
        declared = self.compiled.policy.effects
        allowed = declared_effects(state.decide).get(outcome, ()) if state.decide else ()
        if update.effects_unknown:
            # The code may return each effect it declares for the outcome, with any arguments.
            for effect in allowed:
                every = frozenset(declared[effect].params)
                self.events.append(Event("effect", effect, state.name, maybe=True, unknown=every))
        else:
            types = self.compiled.effect_types
            for effect, known, unknown in update.effects:
                if effect not in allowed:
                    raise _RouteFault(
                        f"{name} returns effect {effect!r}, which it does not declare"
                    )
                params = types[effect]
                args: list[tuple[str, Any]] = []
                vague = set(unknown)
                for param, value in known:
                    try:
                        args.append((param, params[param].to_json(params[param].validate(value))))
                    except (KeyError, ValueError):
                        vague.add(param)
                self.events.append(
                    Event("effect", effect, state.name, args=tuple(args), unknown=frozenset(vague))
                )
        return outcome

    @override
    def _effects(
        self, work: _Work, effects: tuple[CompiledEffect, ...], state: str, origin: str
    ) -> None:
        """Effects with their constant arguments; those read from values are unknown."""
        self.sync(work)
        slots = self.compiled.slot_types
        for effect in effects:
            for param, source in effect.refs:
                if source in slots and source not in work.slots:
                    raise _RouteFault(f"effect {effect.name!r} in {state!r}: {param} has no value")
            self.events.append(
                Event(
                    "effect",
                    effect.name,
                    state,
                    args=effect.constants,
                    unknown=frozenset(param for param, _ in effect.refs),
                )
            )

    @override
    def _render(self, work: _Work, text: str) -> tuple[Any, ...]:
        return ()

    @override
    def _emit(
        self, session: Session, turn: Turn, allowed: tuple[str, ...], ids: tuple[str, ...]
    ) -> None:
        """Abstract turns are not audited."""


# --- the machine ----------------------------------------------------------------------------


def _variants(slots: Sequence[str]) -> Iterator[tuple[tuple[str, bool], ...]]:
    """Every combination of absent, valid and invalid values of ``slots``."""
    for choice in itertools.product((None, True, False), repeat=len(slots)):
        yield tuple((s, v) for s, v in zip(slots, choice, strict=True) if v is not None)


class AbstractMachine:
    """The finite abstract machine of a compiled policy, explored on demand.

    Args:
        compiled: the compiled policy.
    """

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        self.start = Node("start", compiled.policy.initial)
        self._agent = _Adversary(compiled)
        self._moves: dict[Node, tuple[Move, ...]] = {}
        self._error_lines = tuple(compiled.policy.global_.error.say)
        self.updates: dict[str, dict[str, tuple[Update, ...]] | None] = {
            name: decision_updates(function) for name, function in compiled.functions.items()
        }
        self.calls = 0
        self.analyses: dict[str, Any] = {}
        """Results computed once over the explored machine (shortest paths), by name."""

    # -- exploration -----------------------------------------------------------------------

    def moves(self, node: Node) -> tuple[Move, ...]:
        """The moves from ``node``, computed once."""
        moves = self._moves.get(node)
        if moves is None:
            moves = self._moves[node] = tuple(self._expand(node))
        return moves

    def explore(self, progress: Callable[[int], None] | None = None) -> int:
        """Explore every node reachable from the start; return how many there are.

        The cyclic garbage collector is paused meanwhile: the machine only grows, and on large
        policies collections would scan it over and over (a third of the time at 10,000
        states).
        """
        seen = {self.start}
        queue = deque([self.start])
        paused = gc.isenabled()
        gc.disable()
        try:
            while queue:
                node = queue.popleft()
                for move in self.moves(node):
                    for branch in move.branches:
                        target = branch.target
                        if target is not None and target not in seen:
                            seen.add(target)
                            queue.append(target)
                if progress is not None:
                    progress(len(seen))
        finally:
            if paused:
                gc.enable()
        return len(seen)

    @property
    def nodes(self) -> list[Node]:
        """The nodes explored so far."""
        return list(self._moves)

    def inputs(self, state: CompiledState) -> list[Input]:
        """Everything the adversary may answer in a waiting state."""
        out: list[Input] = []
        explicit = set(state.explicit)
        for label in state.labels:
            route = state.routes.get(label.name)
            wanted = explicit | set(route.require if route else ())
            slots = [s for s in state.collect if s in wanted]
            for variant in _variants(slots):
                out.append(Input(label.name, variant))
                if route is not None and state.unsure is not None:
                    out.append(Input(label.name, variant, unsure=True))
        for variant in _variants(state.collect):
            if variant:
                out.append(Input(None, variant))
        out.append(Input(error=True))
        return out

    def _session(self, node: Node) -> Session:
        return _Slate(self.compiled, node)  # type: ignore[return-value]  # reads like one

    def _node(self, state: str, slots: Mapping[str, Any], *, suspended: bool) -> Node:
        filled = frozenset(slots)
        if suspended:
            return Node("pending", state, filled)
        if self.compiled.states[state].kind == "terminal":
            return Node("ended", state, filled)
        return Node("rest", state, filled)

    def _expand(self, node: Node) -> Iterator[Move]:
        if node.kind == "ended":
            return
        if node.kind == "pending":
            yield Move(None, tuple(self._decisions(node)))
            return
        state = self.compiled.states[node.state]
        if node.kind == "start":
            yield Move(None, tuple(self._step(node, None)))
            # An opening that fails leaves the session unstarted; the host starts it again.
            error = tuple(Event("say", r, node.state) for r in self._error_lines)
            yield Move(Input(error=True), (Branch(error, node, failed=True),))
            return
        for given in self.inputs(state):
            yield Move(given, tuple(self._step(node, given)))

    def _step(self, node: Node, given: Input | None) -> list[Branch]:
        agent = self._agent
        session = self._session(node)
        agent.input = given or Input(OUT_OF_SCOPE)
        agent.forced = None
        agent.begin()
        self.calls += 1
        try:
            turn = agent._turn(session, None if given is None else "", None)
        except _Suspend:
            work = agent._work
            assert work is not None
            agent.sync(work)
            target = self._node(work.state, work.slots, suspended=True)
            return self._expand_choices(tuple(agent.events), target, tuple(agent.fired))
        if turn.error is not None:
            events = tuple(Event("say", r, node.state) for r in self._error_lines)
            return [Branch(events, node, failed=True)]
        target = self._node(session.state, session.slots, suspended=False)
        return self._expand_choices(tuple(agent.events), target, tuple(agent.fired))

    def _alternatives(self, function: str, outcome: str) -> tuple[Update, ...]:
        updates = self.updates.get(function)
        if updates is None:
            return (_UNKNOWN,)
        return updates.get(outcome, (_NO_UPDATE,))

    def _decisions(self, node: Node) -> Iterator[Branch]:
        state = self.compiled.states[node.state]
        function = state.decide_name or ""
        slots = list(self.compiled.policy.slots)
        seen: set[tuple[Any, ...]] = set()
        for outcome in state.outcomes:
            for update in self._alternatives(function, outcome):
                if update.slots_unknown:
                    choices = [
                        (frozenset(c), frozenset(slots) - frozenset(c))
                        for r in range(len(slots) + 1)
                        for c in itertools.combinations(slots, r)
                    ]
                else:
                    choices = [(update.sets, update.clears)]
                for sets, clears in choices:
                    for branch in self._decide(node, state, outcome, update, sets, clears):
                        key = (branch.events, branch.target, branch.failed)
                        if key not in seen:
                            seen.add(key)
                            yield branch

    def _decide(
        self,
        node: Node,
        state: CompiledState,
        outcome: str,
        update: Update,
        sets: frozenset[str],
        clears: frozenset[str],
    ) -> list[Branch]:
        agent = self._agent
        work = _Work(node.state, dict.fromkeys(node.filled, _DUMMY), {})
        agent.forced = (outcome, update)
        agent.forced_sets = sets
        agent.forced_clears = clears
        agent.begin(work, paths=1)
        self.calls += 1
        decision = (state.name, state.decide_name or "", outcome)
        try:
            agent._enter(work, node.state, None)
        except _Suspend:
            suspended = True
        except _RouteFault:
            agent.sync(work)
            return [
                Branch(
                    tuple(agent.events),
                    None,
                    failed=True,
                    decision=decision,
                    sets=sets,
                    clears=clears,
                )
            ]
        else:
            suspended = False
        agent.sync(work)
        target = self._node(work.state, work.slots, suspended=suspended)
        return [
            Branch(
                b.events,
                b.target,
                decision=decision,
                choices=b.choices,
                other_choice=b.other_choice,
                sets=sets,
                clears=clears,
                routes=b.routes,
            )
            for b in self._expand_choices(tuple(agent.events), target, tuple(agent.fired))
        ]

    def _expand_choices(
        self, events: tuple[Event, ...], target: Node, routes: tuple[tuple[str, str, str], ...]
    ) -> list[Branch]:
        """One branch per response the model may pick in each ``choose``."""
        groups = [e.options for e in events if e.kind == "choose"]
        if not groups:
            return [Branch(events, target, routes=routes)]
        branches = []
        for picked in itertools.product(*groups):
            chosen = iter(picked)
            resolved = tuple(
                Event("say", next(chosen), e.state) if e.kind == "choose" else e for e in events
            )
            other = any(p != g[0] for p, g in zip(picked, groups, strict=True))
            branches.append(
                Branch(resolved, target, choices=picked, other_choice=other, routes=routes)
            )
        return branches

    # -- whole turns -----------------------------------------------------------------------

    def turns(self, node: Node, given: Input | None, limit: int = 10_000) -> list[TurnPath]:
        """Every whole turn from ``node`` on ``given`` (``None``: the opening), through its
        decisions.

        A turn that can come back to a decision it already took in the same turn is also
        listed as failing: the agent stops routing loops with the error route.
        """
        move = next((m for m in self.moves(node) if m.input == given), None)
        if move is None:
            return []
        out: list[TurnPath] = []
        error = tuple(Event("say", r, node.state) for r in self._error_lines)

        def walk(
            branch: Branch,
            events: tuple[Event, ...],
            decisions: tuple[Any, ...],
            taken: tuple[Branch, ...],
            visited: frozenset[Node],
        ) -> None:
            if len(out) >= limit:
                return
            events = events + branch.events
            taken = (*taken, branch)
            if branch.decision is not None:
                decisions = (*decisions, branch.decision)
            target = branch.target
            if branch.failed or target is None:
                out.append(TurnPath(error, node, True, decisions, taken))
                return
            if target.kind != "pending":
                out.append(TurnPath(events, target, False, decisions, taken))
                return
            if target in visited:
                out.append(TurnPath(error, node, True, decisions, taken))
                return
            for move in self.moves(target):
                for inner in move.branches:
                    walk(inner, events, decisions, taken, visited | {target})

        for branch in move.branches:
            walk(branch, (), (), (), frozenset())
        return out
