"""Check step: cross references of a loaded policy, its catalog and its decision functions.

Every problem is collected with its location; `check_policy` returns them all, sorted.
Problems of severity ``"error"`` stop compilation; warnings are reported and let it go on.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path

from sopagent._effects import check_effects
from sopagent._properties import check_properties
from sopagent.decisions import DecisionFunction, decision_functions, import_decision_module
from sopagent.errors import Problem
from sopagent.policy import OUT_OF_SCOPE, Catalog, Policy, Route

__all__ = ["check_policy", "resolve_decisions"]


def resolve_decisions(policy: Policy) -> tuple[dict[str, DecisionFunction], list[Problem]]:
    """Import the modules the policy declares and collect their decision functions."""
    base = policy.source.parent if policy.source else Path.cwd()
    functions: dict[str, DecisionFunction] = {}
    problems: list[Problem] = []
    for index, spec in enumerate(policy.decisions):
        try:
            module = import_decision_module(spec, base)
        except Exception as exc:
            problems.append(
                Problem(
                    "SOP028",
                    f"cannot import decision module {spec!r}: {type(exc).__name__}: {exc}",
                    policy.locate("decisions", index),
                )
            )
            continue
        for name, function in decision_functions(module).items():
            if name in functions:
                problems.append(
                    Problem(
                        "SOP028",
                        f"decision function {name!r} is defined in two declared modules",
                        policy.locate("decisions", index),
                    )
                )
            functions[name] = function
    return functions, problems


def check_policy(
    policy: Policy,
    catalog: Catalog,
    functions: Mapping[str, DecisionFunction],
) -> list[Problem]:
    """Return every reference problem of ``policy`` against ``catalog`` and ``functions``.

    Policies and catalogs are frozen, so the problems of the last policy checked are kept for
    as long as that policy and catalog live: `compile_policy` after a full check
    (`check_loaded`) of the same objects checks once.
    """
    last = _last_check
    if (
        last is not None
        and last.policy() is policy
        and last.catalog() is catalog
        and last.functions == functions
    ):
        return list(last.problems)
    problems = _Checker(policy, catalog, functions).run()
    problems += check_properties(policy, catalog, functions)
    problems.sort(key=Problem.sort_key)
    _remember(policy, catalog, functions, problems)
    return list(problems)


class _Checked:
    """The problems of one check; the policy and catalog are held weakly."""

    __slots__ = ("catalog", "functions", "policy", "problems")

    def __init__(
        self,
        policy: Policy,
        catalog: Catalog,
        functions: Mapping[str, DecisionFunction],
        problems: list[Problem],
    ) -> None:
        self.policy = weakref.ref(policy)
        self.catalog = weakref.ref(catalog)
        self.functions = dict(functions)
        self.problems = tuple(problems)


_last_check: _Checked | None = None


def _remember(
    policy: Policy,
    catalog: Catalog,
    functions: Mapping[str, DecisionFunction],
    problems: list[Problem],
) -> None:
    global _last_check  # noqa: PLW0603 (one slot, replaced by each check)
    _last_check = _Checked(policy, catalog, functions, problems)


class _Checker:
    def __init__(
        self, policy: Policy, catalog: Catalog, functions: Mapping[str, DecisionFunction]
    ) -> None:
        self.policy = policy
        self.catalog = catalog
        self.functions = functions
        self.problems: list[Problem] = []
        self.values = set(policy.slots) | set(policy.facts)
        self.checked: set[str] = set()

    def error(self, code: str, message: str, *path: str | int, hint: str = "") -> None:
        self.problems.append(Problem(code, message, self.policy.locate(*path), hint))

    def warn(self, code: str, message: str, *path: str | int, hint: str = "") -> None:
        """A warning about the thing declared at ``path``, located at its key."""
        self.problems.append(
            Problem(code, message, self.policy.locate_key(*path), hint, severity="warning")
        )

    def run(self) -> list[Problem]:
        policy = self.policy
        overlap = set(policy.slots) & set(policy.facts)
        for name in sorted(overlap):
            self.error("SOP023", f"{name!r} is declared both as a slot and a fact", "facts", name)
        if policy.initial not in policy.states:
            self.error("SOP020", f"initial state {policy.initial!r} is not declared", "initial")
        for name, slot in policy.slots.items():
            for field in ("ask", "invalid"):
                response = getattr(slot, field)
                if response is not None:
                    self.response(response, "slots", name, field)
        for intent, route in policy.global_.on.items():
            self.intent(intent, "global", "on", intent)
            self.route(route, "global", "on", intent)
        self.route(policy.global_.fallback, "global", "fallback")
        if policy.global_.confidence is not None:
            self.route(policy.global_.confidence.below, "global", "confidence", "below")
        self.route(policy.global_.error, "global", "error", plain=True)
        if policy.limits.too_long is not None:
            self.response(policy.limits.too_long, "limits", "too_long", plain=True)
        if policy.global_.filler is not None:
            self.route(policy.global_.filler, "global", "filler", plain=True)
        if policy.global_.error.to is not None:
            self.error(
                "SOP029",
                "the error route keeps the session where it was; it cannot have 'to'",
                "global",
                "error",
                "to",
            )
        used_intents = set(policy.global_.on)
        for name in policy.states:
            self.state(name, used_intents)
        for intent in sorted(set(policy.intents) - used_intents):
            self.warn(
                "SOP031",
                f"intent {intent!r} is accepted in no state",
                "intents",
                intent,
                hint="route the intent somewhere, or remove it",
            )
        self.reachability()
        self.catalog_hashes()
        self.problems += check_effects(policy, self.functions)
        return self.problems

    def state(self, name: str, used_intents: set[str]) -> None:
        state = self.policy.states[name]
        at = ("states", name)
        for index, response in enumerate(state.say):
            self.response(response, *at, "say", index)
        for index, response in enumerate(state.choose):
            self.response(response, *at, "choose", index)
        for index, response in enumerate(state.vary):
            self.response(response, *at, "vary", index)
        if state.filler is not None:
            self.route(state.filler, *at, "filler", plain=True)
        for index, slot in enumerate(state.collect):
            if slot not in self.policy.slots:
                self.error("SOP023", f"unknown slot {slot!r}", *at, "collect", index)
        for intent, route in state.on.items():
            used_intents.add(intent)
            self.intent(intent, *at, "on", intent)
            self.route(route, *at, "on", intent)
        if state.filled is not None:
            if not state.collect:
                self.error("SOP029", "'filled' needs slots to collect", *at, "filled")
            self.route(state.filled, *at, "filled")
        if state.handoff and not state.terminal:
            self.error(
                "SOP090",
                "a handoff state ends the conversation for the agent; it must be terminal",
                *at,
                "handoff",
                hint="add terminal: true, or move handoff to the state the route leads to",
            )
        if state.consequential and state.decide is None:
            self.error(
                "SOP091",
                "only a state that decides can act: 'consequential' needs 'decide'",
                *at,
                "consequential",
            )
        if state.fallback is not None:
            self.route(state.fallback, *at, "fallback")
        if state.confidence is not None:
            self.route(state.confidence.below, *at, "confidence", "below")
        if state.decide is not None:
            function = self.functions.get(state.decide)
            if function is None:
                self.error(
                    "SOP024",
                    f"decision function {state.decide!r} is not defined with @decision in the"
                    " policy's decision modules",
                    *at,
                    "decide",
                    hint="declare its module under 'decisions'",
                )
            else:
                declared = function.__sopagent_outcomes__
                for outcome in declared:
                    if outcome not in state.outcomes:
                        self.error(
                            "SOP025",
                            f"outcome {outcome!r} of {state.decide!r} is not routed",
                            *at,
                            "outcomes",
                        )
                for outcome in state.outcomes:
                    if outcome not in declared:
                        self.error(
                            "SOP026",
                            f"{state.decide!r} never returns {outcome!r}"
                            f" (it declares {', '.join(declared)})",
                            *at,
                            "outcomes",
                            outcome,
                        )
            for outcome, route in state.outcomes.items():
                self.route(route, *at, "outcomes", outcome)
                if route.to is None:
                    self.error(
                        "SOP029",
                        "an outcome must lead to a state",
                        *at,
                        "outcomes",
                        outcome,
                    )
        waits = not state.terminal and state.decide is None
        if waits and not state.on and state.filled is None and not state.globals:
            self.error(
                "SOP029",
                f"state {name!r} waits for input but has no way out",
                *at,
                hint="add routes under 'on', mark it terminal, or allow global intents",
            )

    def intent(self, intent: str, *path: str | int) -> None:
        if intent != OUT_OF_SCOPE and intent not in self.policy.intents:
            self.error("SOP021", f"unknown intent {intent!r}", *path)

    def route(self, route: Route, *path: str | int, plain: bool = False) -> None:
        if route.to is not None and route.to not in self.policy.states:
            self.error("SOP020", f"unknown state {route.to!r}", *path, "to")
        for index, response in enumerate(route.say):
            self.response(response, *path, "say", index, plain=plain)
        for index, response in enumerate(route.choose):
            self.response(response, *path, "choose", index, plain=plain)
        for index, response in enumerate(route.vary):
            self.response(response, *path, "vary", index, plain=plain)
        for index, slot in enumerate(route.require):
            if slot not in self.policy.slots:
                self.error("SOP023", f"unknown slot {slot!r}", *path, "require", index)

    def response(self, response: str, *path: str | int, plain: bool = False) -> None:
        entry = self.catalog.responses.get(response)
        if entry is None:
            self.error(
                "SOP022",
                f"response {response!r} is not in catalog {self.catalog.catalog!r}",
                *path,
            )
            return
        first_use = response not in self.checked
        self.checked.add(response)
        for name in entry.placeholders if first_use else ():
            if name not in self.values:
                self.problems.append(
                    Problem(
                        "SOP027",
                        f"placeholder {{{name}}} of response {response!r} is neither a slot"
                        " nor a fact",
                        self.catalog.locate("responses", response),
                    )
                )
        if plain and entry.placeholders:
            said = (
                "as a filler"
                if "filler" in path
                else "for too long a message"
                if "too_long" in path
                else "on errors"
            )
            self.error(
                "SOP027",
                f"response {response!r} is said {said} and may not have placeholders",
                *path,
            )

    def reachability(self) -> None:
        policy = self.policy
        if policy.initial not in policy.states:
            return
        seen = {policy.initial}
        stack = [policy.initial]
        global_targets = [r.to for r in policy.global_.on.values() if r.to]
        while stack:
            state = policy.states.get(stack.pop())
            if state is None:
                continue
            routes = [*state.on.values(), *state.outcomes.values()]
            waits = not state.terminal and state.decide is None
            if waits:
                # The fallback and the confidence rule apply even where `globals: false`.
                confidence = state.confidence or policy.global_.confidence
                routes.append(state.fallback or policy.global_.fallback)
                routes += [r for r in (state.filled,) if r is not None]
                if confidence is not None:
                    routes.append(confidence.below)
            targets = [r.to for r in routes if r.to]
            if state.globals and waits:
                targets += global_targets
            for target in targets:
                if target not in seen and target in policy.states:
                    seen.add(target)
                    stack.append(target)
        for name in policy.states:
            if name not in seen:
                self.warn(
                    "SOP030",
                    f"state {name!r} is unreachable",
                    "states",
                    name,
                    hint="route to the state, or remove it",
                )

    def catalog_hashes(self) -> None:
        for name, entry in self.catalog.responses.items():
            if entry.approved is not None and entry.approved != entry.hash:
                self.problems.append(
                    Problem(
                        "SOP032",
                        f"response {name!r} changed since it was approved"
                        f" (approved {entry.approved}, now {entry.hash})",
                        self.catalog.locate("responses", name),
                        hint="have the new wording reviewed, then update 'approved'",
                        severity="warning",
                    )
                )
