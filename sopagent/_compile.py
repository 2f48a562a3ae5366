"""Compile step: a checked `Policy` -> a `CompiledPolicy` whose machine is built on transitions.

The machine config is plain data (``states`` and ``transitions`` lists in the form transitions
takes), built by a pure function so it can be compared against golden files. Everything a turn
needs at run time (routes, allowed labels, slot types, templates) is resolved here once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transitions import Machine

from sopagent._check import check_policy, resolve_decisions
from sopagent._effects import CompiledEffect, EffectTypes, compile_effect, effect_map, effect_types
from sopagent._load import collection_paused, load_catalog
from sopagent._locales import LocaleTable, check_translations, compile_locale, load_translations
from sopagent._slots import SlotType, compile_slot
from sopagent.backends import Label
from sopagent.decisions import DecisionFunction
from sopagent.errors import PolicyError, Problem
from sopagent.policy import OUT_OF_SCOPE, Catalog, EffectCall, Policy, Response, Route

__all__ = ["CompiledPolicy", "CompiledRoute", "CompiledState", "compile_policy"]

OUT_OF_SCOPE_LABEL = Label(
    OUT_OF_SCOPE,
    "The message matches none of the other intents: off-topic, unclear, or something this"
    " assistant cannot help with.",
    (
        "what's the weather like tomorrow",
        "tell me a joke",
        "who won the game last night",
        "how do I cook pasta",
    ),
)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with the trigger that names it in the machine."""

    trigger: str
    to: str | None
    say: tuple[str, ...]
    choose: tuple[str, ...]
    require: tuple[str, ...]
    vary: tuple[str, ...] = ()
    effects: tuple[CompiledEffect, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledState:
    """A state with everything a turn needs resolved."""

    name: str
    kind: Literal["wait", "decide", "terminal"]
    say: tuple[str, ...]
    choose: tuple[str, ...]
    collect: tuple[str, ...]
    explicit: tuple[str, ...]
    routes: dict[str, CompiledRoute]
    filled: CompiledRoute | None
    fallback: CompiledRoute
    threshold: float
    unsure: CompiledRoute | None
    decide: DecisionFunction | None
    decide_name: str | None
    outcomes: dict[str, CompiledRoute]
    labels: tuple[Label, ...]
    allowed: frozenset[str]
    examples: dict[str, str]
    key: str
    vary: tuple[str, ...] = ()
    effects: tuple[CompiledEffect, ...] = ()
    filler: CompiledRoute | None = None


@dataclass(frozen=True)
class Template:
    """A catalog response ready to render."""

    id: str
    text: str
    hash: str
    placeholders: tuple[str, ...]


@dataclass
class CompiledPolicy:
    """A policy ready to run: its states, slot types, templates and transitions machine."""

    policy: Policy
    catalog: Catalog
    hash: str
    states: dict[str, CompiledState]
    slot_types: dict[str, SlotType]
    fact_types: dict[str, SlotType]
    templates: dict[str, Template]
    functions: dict[str, DecisionFunction]
    vocabulary: tuple[Label, ...] = ()
    warnings: tuple[Problem, ...] = ()
    effect_types: EffectTypes = field(default_factory=dict)
    locales: dict[str, LocaleTable] = field(default_factory=dict)
    machine: Machine = field(init=False, repr=False)

    def __post_init__(self) -> None:
        config = self.machine_config()
        self.machine = Machine(
            model=None,
            states=config["states"],
            transitions=config["transitions"],
            initial=config["initial"],
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )

    @property
    def name(self) -> str:
        """The policy's name."""
        return self.policy.name

    def effects_config(self) -> dict[str, Any]:
        """Return every effect the machine can emit, and where, as plain data (`effect_map`)."""
        return effect_map(self)

    def machine_config(self) -> dict[str, Any]:
        """Return the machine as plain data: ``initial``, ``states`` and ``transitions``."""
        transitions: list[dict[str, str]] = []
        for state in self.states.values():
            routes = [*state.routes.values(), *state.outcomes.values()]
            if state.kind == "wait":
                routes += [r for r in (state.filled, state.fallback, state.unsure) if r is not None]
            seen: set[str] = set()
            for route in routes:
                if route.to is None or route.trigger in seen:
                    continue
                seen.add(route.trigger)
                transitions.append(
                    {"trigger": route.trigger, "source": state.name, "dest": route.to}
                )
        return {
            "initial": self.policy.initial,
            "states": list(self.states),
            "transitions": transitions,
        }


def _route(trigger: str, route: Route, types: EffectTypes | None = None) -> CompiledRoute:
    return CompiledRoute(
        trigger,
        route.to,
        tuple(route.say),
        tuple(route.choose),
        tuple(route.require),
        tuple(route.vary),
        _effects(route.effects, types or {}),
    )


def _effects(calls: list[EffectCall], types: EffectTypes) -> tuple[CompiledEffect, ...]:
    return tuple(compile_effect(call, types) for call in calls)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _policy_hash(
    policy: Policy,
    catalog: Catalog,
    functions: dict[str, DecisionFunction],
    translations: Sequence[Catalog] = (),
) -> str:
    digest = hashlib.sha256()
    digest.update(policy.model_dump_json(by_alias=True).encode())
    digest.update(catalog.model_dump_json().encode())
    for translation in translations:
        digest.update(translation.model_dump_json().encode())
    # The whole source of every decision module, so that a changed constant pins new sessions.
    modules = sorted({inspect.getmodule(f) for f in functions.values()} - {None}, key=str)
    for module in modules:
        try:
            source = inspect.getsource(module)  # type: ignore[arg-type]
        except (OSError, TypeError):
            source = str(module)
        digest.update(source.encode())
    return "sha256:" + digest.hexdigest()[:16]


@collection_paused()
def compile_policy(
    policy: Policy, catalog: Catalog | None = None, *, require_approved: bool = False
) -> CompiledPolicy:
    """Check ``policy`` and compile it into a runnable machine.

    Args:
        policy: a policy from `load_policy`.
        catalog: its catalog; by default the file named by ``policy.catalog``.
        require_approved: refuse a catalog with any response that is not approved, as it is
            now, in the catalog's lock file (also when the policy sets ``require_approved``).

    Returns:
        The compiled policy. Warnings found by the check are kept in ``warnings``.

    Raises:
        PolicyError: the policy has errors, or approval is required and some response is not
            approved; every one is reported with its location.
    """
    if catalog is None:
        base = policy.source.parent if policy.source else Path.cwd()
        catalog = load_catalog(base / policy.catalog)
    functions, problems = resolve_decisions(policy)
    problems += check_policy(policy, catalog, functions)
    translations, found = load_translations(policy)
    problems += found + check_translations(policy, catalog, translations)
    if require_approved or policy.require_approved:
        from sopagent._approval import unapproved  # noqa: PLC0415 (only when approval is required)

        problems += unapproved(catalog)
    if any(p.severity == "error" for p in problems):
        raise PolicyError(problems)
    policy_hash = _policy_hash(policy, catalog, functions, translations)
    types = effect_types(policy)

    global_routes = {
        intent: _route(f"intent:{intent}", route, types)
        for intent, route in policy.global_.on.items()
    }
    fallback = _route("fallback", policy.global_.fallback, types)
    filler = _route("filler", policy.global_.filler) if policy.global_.filler else None
    out_of_scope = OUT_OF_SCOPE_LABEL
    if policy.out_of_scope is not None:
        out_of_scope = Label(
            OUT_OF_SCOPE,
            policy.out_of_scope.description,
            tuple(policy.out_of_scope.examples) or OUT_OF_SCOPE_LABEL.examples,
        )
    # Worked out once per intent, shared by every state that allows it.
    intent_labels = {
        i: Label(i, intent.description, tuple(intent.examples))
        for i, intent in policy.intents.items()
    }
    normalized = {
        i: [_normalize(e) for e in intent.examples] for i, intent in policy.intents.items()
    }
    off_topic = [_normalize(e) for e in out_of_scope.examples]
    states: dict[str, CompiledState] = {}
    for name, state in policy.states.items():
        confidence = state.confidence or policy.global_.confidence
        if state.terminal:
            kind: Literal["wait", "decide", "terminal"] = "terminal"
        elif state.decide is not None:
            kind = "decide"
        else:
            kind = "wait"
        routes: dict[str, CompiledRoute] = {}
        if kind == "wait" and state.globals:
            routes.update(global_routes)
        routes.update({i: _route(f"intent:{i}", r, types) for i, r in state.on.items()})
        collect = list(state.collect)
        for route in routes.values():
            collect.extend(s for s in route.require if s not in collect)
        intents = [i for i in policy.intents if i in routes]
        labels = (*(intent_labels[i] for i in intents), out_of_scope)
        examples = {example: intent for intent in intents for example in normalized[intent]}
        for example in off_topic:
            examples.setdefault(example, OUT_OF_SCOPE)
        states[name] = CompiledState(
            name=name,
            kind=kind,
            say=tuple(state.say),
            choose=tuple(state.choose),
            collect=tuple(collect),
            explicit=tuple(state.collect),
            routes=routes,
            filled=_route("filled", state.filled, types) if state.filled else None,
            fallback=_route("fallback", state.fallback, types) if state.fallback else fallback,
            threshold=confidence.threshold if confidence and kind == "wait" else 0.0,
            unsure=(
                _route("unsure", confidence.below, types) if confidence and kind == "wait" else None
            ),
            decide=functions.get(state.decide) if state.decide else None,
            decide_name=state.decide,
            outcomes={o: _route(f"outcome:{o}", r, types) for o, r in state.outcomes.items()},
            labels=labels if kind == "wait" else (),
            allowed=frozenset(label.name for label in labels) if kind == "wait" else frozenset(),
            examples=examples,
            key=policy_hash,
            vary=tuple(state.vary),
            effects=_effects(state.effects, types),
            filler=(
                (_route("filler", state.filler) if state.filler else filler)
                if kind == "wait"
                else None
            ),
        )
    templates = {rid: _template(rid, response) for rid, response in catalog.responses.items()}
    vocabulary = (*intent_labels.values(), out_of_scope)
    return CompiledPolicy(
        policy=policy,
        catalog=catalog,
        hash=policy_hash,
        states=states,
        slot_types={n: compile_slot(n, s) for n, s in policy.slots.items()},
        fact_types={n: compile_slot(n, s) for n, s in policy.facts.items()},
        templates=templates,
        functions=functions,
        vocabulary=vocabulary,
        warnings=tuple(p for p in problems if p.severity != "error"),
        effect_types=types,
        locales={
            t.locale: compile_locale(t, catalog, states, vocabulary, policy_hash)
            for t in translations
        },
    )


def _template(rid: str, response: Response) -> Template:
    return Template(rid, response.text, response.hash, response.placeholders)


def machine_config_json(compiled: CompiledPolicy) -> str:
    """Return the machine config as stable, indented JSON (for golden files)."""
    return json.dumps(compiled.machine_config(), indent=2, sort_keys=True) + "\n"
