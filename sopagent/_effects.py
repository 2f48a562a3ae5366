"""Effects: declared with typed parameters, emitted by routes, states and decision outcomes.

Compile: every ``effects:`` entry of a route or a state becomes a `CompiledEffect` whose
constant arguments are already validated against the declaration and whose ``{from: name}``
arguments name the slot or fact read when the effect is emitted. Check: unknown effects and
parameters, constants of the wrong type, references to values that do not exist or do not fit
(SOP100-SOP104, SOP110, SOP112). Run: `resolve` fills a compiled effect from a turn's values;
`validate_returned` checks an effect a decision function returned.

The compiled effects are plain data on the compiled routes and states, and `effect_map`
lists them all, so that a tool exploring the machine reads every effect (and the effects each
decision outcome may add from code) without running any code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sopagent._slots import SlotType, compile_slot
from sopagent.decisions import DecisionFunction, declared_effects, declared_reads
from sopagent.errors import Problem
from sopagent.policy import EffectCall, FromValue, Policy, Route

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy, CompiledRoute

__all__ = [
    "CompiledEffect",
    "check_effects",
    "compile_effect",
    "effect_map",
    "effect_types",
    "resolve",
    "validate_returned",
]

EffectTypes = dict[str, dict[str, SlotType]]
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class CompiledEffect:
    """An effect as a route or a state emits it.

    Attributes:
        name: the declared effect.
        constants: parameter -> JSON value, validated at compile time.
        refs: parameter -> the slot or fact whose value it takes when emitted.
    """

    name: str
    constants: tuple[tuple[str, Any], ...] = ()
    refs: tuple[tuple[str, str], ...] = ()

    def describe(self) -> dict[str, Any]:
        """Plain data: ``{"name", "args"}``, a reference written as ``{"from": name}``."""
        args: dict[str, Any] = dict(self.constants)
        args.update({param: {"from": source} for param, source in self.refs})
        return {"name": self.name, "args": args}


def effect_types(policy: Policy) -> EffectTypes:
    """The compiled parameter types of every declared effect."""
    return {
        name: {param: compile_slot(param, spec) for param, spec in effect.params.items()}
        for name, effect in policy.effects.items()
    }


def compile_effect(call: EffectCall, types: EffectTypes) -> CompiledEffect:
    """Compile a checked effect call (the checker has validated it)."""
    params = types[call.name]
    constants: list[tuple[str, Any]] = []
    refs: list[tuple[str, str]] = []
    for param in params:
        value = call.args[param]
        if isinstance(value, FromValue):
            refs.append((param, value.from_))
        else:
            kind = params[param]
            constants.append((param, kind.to_json(kind.validate(value))))
    return CompiledEffect(call.name, tuple(constants), tuple(refs))


def resolve(
    effect: CompiledEffect,
    types: EffectTypes,
    values: Mapping[str, tuple[SlotType, Mapping[str, Any]]],
) -> dict[str, Any]:
    """Return the arguments of ``effect`` in JSON form, in declaration order.

    Args:
        effect: the compiled effect.
        types: the policy's effect types.
        values: slot or fact name -> (its type, the mapping holding its JSON value).

    Raises:
        ValueError: a referenced value is missing or does not fit its parameter.
    """
    params = types[effect.name]
    args = dict(effect.constants)
    for param, source in effect.refs:
        kind, where = values[source]
        if source not in where:
            raise ValueError(f"{param}: {{from: {source}}} has no value")
        value = kind.from_json(where[source])
        target = params[param]
        try:
            args[param] = target.to_json(target.validate(value))
        except ValueError as exc:
            raise ValueError(f"{param}: {{from: {source}}} is {value!r}: {exc}") from None
    return {param: args[param] for param in params}


def validate_returned(name: str, args: Mapping[str, Any], types: EffectTypes) -> dict[str, Any]:
    """Validate the arguments of an effect a decision function returned; return them as JSON.

    Raises:
        ValueError: an unknown, missing or invalid argument.
    """
    params = types[name]
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}")
    missing = [param for param in params if param not in args]
    if missing:
        raise ValueError(f"missing argument {missing[0]!r}")
    out: dict[str, Any] = {}
    for param, kind in params.items():
        try:
            out[param] = kind.to_json(kind.validate(args[param]))
        except ValueError as exc:
            raise ValueError(f"{param}: {exc}") from None
    return out


# --- check ------------------------------------------------------------------------------------


def _routes(policy: Policy) -> Iterator[tuple[Route, Path]]:
    """Every route of the policy that may emit effects, with its path in the YAML."""
    g = policy.global_
    for intent, route in g.on.items():
        yield route, ("global", "on", intent)
    yield g.fallback, ("global", "fallback")
    if g.confidence is not None:
        yield g.confidence.below, ("global", "confidence", "below")
    for name, state in policy.states.items():
        at: Path = ("states", name)
        for intent, route in state.on.items():
            yield route, (*at, "on", intent)
        for outcome, route in state.outcomes.items():
            yield route, (*at, "outcomes", outcome)
        if state.filled is not None:
            yield state.filled, (*at, "filled")
        if state.fallback is not None:
            yield state.fallback, (*at, "fallback")
        if state.confidence is not None:
            yield state.confidence.below, (*at, "confidence", "below")


def check_effects(policy: Policy, functions: Mapping[str, DecisionFunction]) -> list[Problem]:
    """Return every problem of the policy's effect declarations and uses."""
    return _EffectChecker(policy, functions).run()


class _EffectChecker:
    def __init__(self, policy: Policy, functions: Mapping[str, DecisionFunction]) -> None:
        self.policy = policy
        self.functions = functions
        self.types = {
            name: {param: compile_slot(param, spec) for param, spec in effect.params.items()}
            for name, effect in policy.effects.items()
        }
        self.values: dict[str, SlotType] = {
            **{n: compile_slot(n, s) for n, s in policy.slots.items()},
            **{n: compile_slot(n, s) for n, s in policy.facts.items()},
        }
        self.problems: list[Problem] = []
        self.used: set[str] = set()

    def error(self, code: str, message: str, path: Path, hint: str = "") -> None:
        self.problems.append(Problem(code, message, self.policy.locate(*path), hint))

    def run(self) -> list[Problem]:
        policy = self.policy
        for name, effect in policy.effects.items():
            for param, spec in effect.params.items():
                for key in ("ask", "invalid"):
                    if getattr(spec, key) is not None:
                        self.error(
                            "SOP104",
                            f"parameter {param!r} of effect {name!r} has {key!r}, which only"
                            " slots use",
                            ("effects", name, "params", param, key),
                        )
        for route, path in _routes(policy):
            self.calls(route.effects, path)
        for name, state in policy.states.items():
            self.calls(state.effects, ("states", name))
            if state.decide is not None and state.decide in self.functions:
                self.decision(name, self.functions[state.decide])
        self.plain(policy.global_.error, ("global", "error"), "the error route")
        if policy.global_.filler is not None:
            self.plain(policy.global_.filler, ("global", "filler"), "a filler")
        for name, state in policy.states.items():
            if state.filler is not None:
                self.plain(state.filler, ("states", name, "filler"), "a filler")
        for name in policy.effects:
            if name not in self.used:
                self.problems.append(
                    Problem(
                        "SOP112",
                        f"effect {name!r} is emitted nowhere",
                        policy.locate_key("effects", name),
                        severity="warning",
                    )
                )
        return self.problems

    def plain(self, route: Route, path: Path, what: str) -> None:
        """The error route and fillers say lines and do nothing else."""
        if route.effects:
            self.error("SOP103", f"{what} cannot emit effects", (*path, "effects"))
        if what == "a filler":
            for key in ("to", "choose", "require"):
                if getattr(route, key):
                    self.error(
                        "SOP103",
                        f"a filler only says lines (say, vary); it cannot have {key!r}",
                        (*path, key),
                        hint="the turn's real answer follows it and takes the route",
                    )

    def calls(self, calls: list[EffectCall], path: Path) -> None:
        for index, call in enumerate(calls):
            self.call(call, (*path, "effects", index))

    def call(self, call: EffectCall, path: Path) -> None:
        self.used.add(call.name)
        params = self.types.get(call.name)
        if params is None:
            close = difflib.get_close_matches(call.name, sorted(self.types), n=1)
            self.error(
                "SOP100",
                f"effect {call.name!r} is not declared under 'effects'",
                path,
                hint=f"did you mean {close[0]!r}?" if close else "declare it with its parameters",
            )
            return
        at = (*path, call.name)
        for param in call.args:
            if param not in params:
                self.error(
                    "SOP101",
                    f"effect {call.name!r} has no parameter {param!r}",
                    (*at, param),
                    hint=f"its parameters: {', '.join(params) or 'none'}",
                )
        for param, kind in params.items():
            if param not in call.args:
                self.error("SOP101", f"effect {call.name!r} needs argument {param!r}", path)
                continue
            value = call.args[param]
            if isinstance(value, FromValue):
                self.reference(call.name, param, kind, value.from_, (*at, param, "from"))
                continue
            try:
                kind.validate(value)
            except ValueError as exc:
                self.error(
                    "SOP101",
                    f"argument {param!r} of effect {call.name!r} is invalid: {exc}",
                    (*at, param),
                )

    def reference(self, effect: str, param: str, kind: SlotType, source: str, path: Path) -> None:
        found = self.values.get(source)
        if found is None:
            self.error(
                "SOP102",
                f"argument {param!r} of effect {effect!r} reads {source!r}, which is neither a"
                " slot nor a fact",
                path,
            )
            return
        if found.kind != kind.kind:
            self.error(
                "SOP102",
                f"argument {param!r} of effect {effect!r} is {kind.kind}, but {source!r} is"
                f" {found.kind}",
                path,
            )
            return
        inner = getattr(found.spec, "values", None)
        outer = getattr(kind.spec, "values", None)
        if inner is not None and outer is not None and not set(inner) <= set(outer):
            extra = sorted(set(inner) - set(outer))
            self.error(
                "SOP102",
                f"{source!r} may be {', '.join(extra)}, which argument {param!r} of effect"
                f" {effect!r} does not accept",
                path,
            )

    def decision(self, state: str, function: DecisionFunction) -> None:
        at: Path = ("states", state, "decide")
        name = function.__name__
        for outcome, effects in declared_effects(function).items():
            for effect in effects:
                self.used.add(effect)
                if effect not in self.types:
                    self.error(
                        "SOP100",
                        f"{name!r} may return effect {effect!r} with {outcome!r}, but the"
                        " policy does not declare it",
                        at,
                    )
        for value in declared_reads(function) or ():
            if value not in self.values:
                self.error(
                    "SOP110",
                    f"{name!r} reads {value!r}, which is neither a slot nor a fact",
                    at,
                    hint="declare it under 'slots' or 'facts', or drop it from reads",
                )


# --- the static view ----------------------------------------------------------------------------


def _route_effects(route: CompiledRoute | None) -> list[dict[str, Any]]:
    return [] if route is None else [effect.describe() for effect in route.effects]


def effect_map(compiled: CompiledPolicy) -> dict[str, Any]:
    """Every effect the machine can emit, where, and with which arguments, as plain data.

    ``effects`` holds the declarations (parameter -> type); ``states`` holds, per state, the
    effects of entering it (``enter``), of each route by trigger (``routes``, global routes
    included where they apply), and per decision outcome the route's effects and the effect
    names the decision function may add from code (``outcomes``).
    """
    declared = {
        name: {
            "description": spec.description,
            "params": {
                param: kind.model_dump(exclude_defaults=True) for param, kind in spec.params.items()
            },
        }
        for name, spec in compiled.policy.effects.items()
    }
    states: dict[str, Any] = {}
    for name, state in compiled.states.items():
        routes: dict[str, list[dict[str, Any]]] = {}
        if state.kind == "wait":
            for route in (*state.routes.values(), state.filled, state.fallback, state.unsure):
                if route is not None and route.effects:
                    routes[route.trigger] = _route_effects(route)
        outcomes: dict[str, Any] = {}
        emits = declared_effects(state.decide) if state.decide is not None else {}
        for outcome, route in state.outcomes.items():
            outcomes[outcome] = {
                "to": route.to,
                "effects": _route_effects(route),
                "code": list(emits.get(outcome, ())),
            }
        entry: dict[str, Any] = {"enter": [effect.describe() for effect in state.effects]}
        if routes:
            entry["routes"] = routes
        if outcomes:
            entry["outcomes"] = outcomes
        states[name] = entry
    return {"effects": declared, "states": states}
