"""Properties of a policy: checked against the policy, then compiled into event matchers.

A policy's ``properties`` name events (a state entered, a response said, an intent classified,
a decision outcome, a slot or fact filled, an effect emitted, the end) by id or glob, optionally
with a ``where`` condition on slot and fact values (and, for an effect, on its arguments).
`check_properties` reports every unknown name and every condition that cannot be read or
compares values of different kinds (SOP070-SOP079);
`compile_properties` resolves globs and conditions once, for `sopagent verify`.

Conditions are a small expression language::

    order_total > 100 and not verified
    trade == "bought" or offer < key_price
    refund_reference is set
    inventory.moonstone >= 1 and not "crypt_quest" in flags

Names are slots or facts (and an effect's parameters, in an effect event); a bare name is true
when it has a true value; a comparison with a name that has no value is false. ``counts.key``
is the count of one key of a counts fact (0 when the key is absent); ``"id" in name`` tests a
member of a set fact (or a key with a count above 0 of a counts fact).
"""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sopagent._slots import SlotType, compile_slot
from sopagent.decisions import DecisionFunction
from sopagent.errors import Location, Problem
from sopagent.policy import (
    OUT_OF_SCOPE,
    AtMostOnceProperty,
    Catalog,
    DecisionEvent,
    EffectEvent,
    EndedEvent,
    Event,
    FilledEvent,
    IntegerSlot,
    IntentEvent,
    LeadsToProperty,
    NeverBothProperty,
    NeverProperty,
    Policy,
    Property,
    ReachableProperty,
    SayEvent,
    StateEvent,
)

__all__ = [
    "Condition",
    "Matcher",
    "PropertySpec",
    "check_properties",
    "compile_properties",
    "parse_condition",
    "property_kind",
]

Kind = Literal["never", "before", "after", "at_most_once", "never_both", "reachable", "leads_to"]
Values = Mapping[str, Any]
"""Slot and fact values in their JSON form, as sessions store them."""


# --- conditions -------------------------------------------------------------------------------


class ConditionError(ValueError):
    """A condition that cannot be read; ``offset`` is where in the text it goes wrong."""

    def __init__(self, message: str, offset: int, *, code: str = "SOP076") -> None:
        super().__init__(message)
        self.offset = offset
        self.code = code


_TOKEN = re.compile(
    r"\s*(?:(?P<number>-?\d+(?:\.\d+)?)|(?P<string>\"[^\"]*\"|'[^']*')"
    r"|(?P<op>==|!=|<=|>=|<|>|\(|\))|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?))"
)
_WORDS = frozenset({"and", "or", "not", "is", "in", "set", "true", "false"})
_COUNT = compile_slot("count", IntegerSlot(type="integer"))
"""The type of ``counts.key``: an integer."""
_ORDERED = frozenset({"integer", "decimal", "money", "date"})
_NUMERIC = frozenset({"integer", "decimal", "money"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    offset: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            start = position + len(text[position:]) - len(text[position:].lstrip())
            raise ConditionError(f"unexpected character {text[start]!r}", start)
        kind = match.lastgroup or "name"
        value = match.group(kind)
        out.append(_Token(kind, value, match.start(kind)))
        position = match.end()
    return out


@dataclass(frozen=True, slots=True)
class _Operand:
    """A name (slot or fact) or a literal."""

    name: str | None
    literal: Any
    kind: str  # slot kind for names; "number", "string" or "boolean" for literals
    offset: int


Evaluate = Callable[[Values], bool]


class Condition:
    """A parsed ``where`` condition: evaluate it on slot and fact values in their JSON form."""

    def __init__(self, text: str, evaluate: Evaluate, names: frozenset[str]) -> None:
        self.text = text
        self.names = names
        self._evaluate = evaluate

    def __call__(self, values: Values) -> bool:
        """Whether the condition holds for ``values``."""
        return self._evaluate(values)

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


class _Parser:
    def __init__(self, text: str, types: Mapping[str, SlotType]) -> None:
        self.text = text
        self.types = types
        self.tokens = _tokens(text)
        self.index = 0
        self.names: set[str] = set()
        self.counts: dict[str, tuple[str, str]] = {}
        """``counts.key`` operands: the fact and the key they read."""

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text in words:
            self.index += 1
            return True
        return False

    def fail(self, message: str) -> ConditionError:
        token = self.peek()
        return ConditionError(message, token.offset if token else len(self.text))

    def parse(self) -> Evaluate:
        if not self.tokens:
            raise ConditionError("the condition is empty", 0)
        result = self.disjunction()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        return result

    def disjunction(self) -> Evaluate:
        parts = [self.conjunction()]
        while self.word("or"):
            parts.append(self.conjunction())
        if len(parts) == 1:
            return parts[0]
        return lambda values: any(part(values) for part in parts)

    def conjunction(self) -> Evaluate:
        parts = [self.negation()]
        while self.word("and"):
            parts.append(self.negation())
        if len(parts) == 1:
            return parts[0]
        return lambda values: all(part(values) for part in parts)

    def negation(self) -> Evaluate:
        if self.word("not"):
            inner = self.negation()
            return lambda values: not inner(values)
        return self.primary()

    def primary(self) -> Evaluate:
        token = self.peek()
        if token is None:
            raise self.fail("the condition ends too early")
        if token.kind == "op" and token.text == "(":
            self.index += 1
            inner = self.disjunction()
            closing = self.peek()
            if closing is None or closing.text != ")":
                raise self.fail("a '(' is not closed")
            self.index += 1
            return inner
        left = self.operand()
        if self.word("in"):
            return self.member(left)
        if self.word("is"):
            negated = self.word("not")
            if not self.word("set"):
                raise self.fail("expected 'set' after 'is'")
            if left.name is None:
                raise ConditionError("'is set' needs a slot or fact name", left.offset)
            name = left.name
            if negated:
                return lambda values: values.get(name) is None
            return lambda values: values.get(name) is not None
        following = self.peek()
        if following is not None and following.kind == "op" and following.text not in "()":
            self.index += 1
            right = self.operand()
            return self.comparison(left, following.text, right)
        if left.name is None:
            raise ConditionError("a value alone is not a condition; compare it", left.offset)
        name = left.name
        if name in self.counts:
            read = self.count_of(name)
            return lambda values: bool(read(values))
        kind = self.types[name]
        return lambda values: values.get(name) is not None and bool(kind.from_json(values[name]))

    def type_of(self, name: str) -> SlotType:
        return _COUNT if name in self.counts else self.types[name]

    def count_of(self, name: str) -> Callable[[Values], Any]:
        """Read ``counts.key``: ``None`` without the fact, else the count (0 if absent)."""
        base, key = self.counts[name]

        def read(values: Values) -> Any:
            raw = values.get(base)
            return None if raw is None else Decimal(raw.get(key, 0))

        return read

    def member(self, left: _Operand) -> Evaluate:
        """``"id" in name``: a member of a set fact, or a key counted above 0."""
        token = self.peek()
        if left.name is not None or left.kind != "string":
            raise ConditionError("'in' takes a quoted id on its left", left.offset, code="SOP077")
        if token is None or token.kind != "name" or token.text in _WORDS:
            raise self.fail("expected a set or counts fact after 'in'")
        self.index += 1
        kind = self.types.get(token.text)
        if kind is None:
            close = difflib.get_close_matches(token.text, sorted(self.types), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConditionError(
                f"{token.text!r} is neither a slot nor a fact{hint}", token.offset, code="SOP075"
            )
        if kind.kind not in ("set", "counts"):
            raise ConditionError(
                f"{token.text} is {_a(kind.kind)}; 'in' tests a set or counts fact",
                token.offset,
                code="SOP077",
            )
        allowed = getattr(kind.spec, "values" if kind.kind == "set" else "keys", None)
        member = str(left.literal)
        if allowed is not None and member not in allowed:
            raise ConditionError(
                f"{member!r} is not a possible member of {token.text} ({', '.join(allowed)})",
                left.offset,
                code="SOP077",
            )
        name = token.text
        self.names.add(name)
        if kind.kind == "set":
            return lambda values: values.get(name) is not None and member in values[name]
        return lambda values: bool((values.get(name) or {}).get(member, 0))

    def counted(self, token: _Token) -> _Operand:
        """``counts.key``: the count of one key of a counts fact."""
        base, _, key = token.text.partition(".")
        kind = self.types.get(base)
        if kind is None:
            close = difflib.get_close_matches(base, sorted(self.types), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConditionError(
                f"{base!r} is neither a slot nor a fact{hint}", token.offset, code="SOP075"
            )
        if kind.kind != "counts":
            raise ConditionError(
                f"{base} is {_a(kind.kind)}; only a counts fact has keys (name.key)",
                token.offset,
                code="SOP077",
            )
        keys = getattr(kind.spec, "keys", None)
        if keys is not None and key not in keys:
            raise ConditionError(
                f"{key!r} is not a key of {base} ({', '.join(keys)})", token.offset, code="SOP077"
            )
        self.names.add(base)
        self.counts[token.text] = (base, key)
        return _Operand(token.text, None, "integer", token.offset)

    def operand(self) -> _Operand:
        token = self.peek()
        if token is None:
            raise self.fail("expected a slot or fact name or a value")
        self.index += 1
        if token.kind == "number":
            return _Operand(None, token.text, "number", token.offset)
        if token.kind == "string":
            return _Operand(None, token.text[1:-1], "string", token.offset)
        if token.kind == "name" and "." in token.text:
            return self.counted(token)
        if token.kind == "name":
            if token.text in ("true", "false"):
                return _Operand(None, token.text == "true", "boolean", token.offset)
            if token.text in _WORDS:
                raise ConditionError(f"unexpected {token.text!r}", token.offset)
            kind = self.types.get(token.text)
            if kind is None:
                close = difflib.get_close_matches(token.text, sorted(self.types), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConditionError(
                    f"{token.text!r} is neither a slot nor a fact{hint}",
                    token.offset,
                    code="SOP075",
                )
            self.names.add(token.text)
            return _Operand(token.text, None, kind.kind, token.offset)
        raise ConditionError(f"unexpected {token.text!r}", token.offset)

    def comparison(self, left: _Operand, op: str, right: _Operand) -> Evaluate:
        if left.name is None and right.name is None:
            raise ConditionError("compare a slot or fact with a value", left.offset)
        named = left if left.name is not None else right
        other = right if named is left else left
        kind = named.kind
        if other.name is not None and not (kind == other.kind or {kind, other.kind} <= _NUMERIC):
            raise ConditionError(
                f"{named.name} ({kind}) and {other.name} ({other.kind}) cannot be compared",
                other.offset,
                code="SOP077",
            )
        if op not in ("==", "!=") and kind not in _ORDERED:
            raise ConditionError(
                f"{named.name} is {_a(kind)}; only == and != compare it", left.offset, code="SOP077"
            )
        named_type = self.type_of(named.name)  # type: ignore[arg-type]
        left_value = self.value_of(left, named_type)
        right_value = self.value_of(right, named_type)
        compare = _COMPARE[op]

        def evaluate(values: Values) -> bool:
            a = left_value(values)
            b = right_value(values)
            if a is None or b is None:
                return False
            try:
                return compare(a, b)
            except TypeError:
                return False

        return evaluate

    def value_of(self, operand: _Operand, named: SlotType) -> Callable[[Values], Any]:
        if operand.name is not None and operand.name in self.counts:
            return self.count_of(operand.name)
        if operand.name is not None:
            name = operand.name
            slot_type = self.types[name]
            numeric = slot_type.kind in _NUMERIC

            def read(values: Values) -> Any:
                raw = values.get(name)
                if raw is None:
                    return None
                value = slot_type.from_json(raw)
                return Decimal(value) if numeric else value

            return read
        literal = _literal(operand, named)
        return lambda _values: literal


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _literal(operand: _Operand, named: SlotType) -> Any:
    value = operand.literal
    kind = named.kind
    if kind in _NUMERIC:
        if operand.kind != "number":
            raise ConditionError(
                f"{_a(kind)} is compared with a number", operand.offset, code="SOP077"
            )
        try:
            return Decimal(value)
        except InvalidOperation:  # pragma: no cover - the tokenizer only lets numbers through
            raise ConditionError(f"{value!r} is not a number", operand.offset) from None
    if kind == "boolean":
        if operand.kind != "boolean":
            raise ConditionError(
                "a boolean is compared with true or false", operand.offset, code="SOP077"
            )
        return value
    if kind == "date":
        if operand.kind != "string":
            raise ConditionError(
                'a date is compared with a "YYYY-MM-DD" string', operand.offset, code="SOP077"
            )
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ConditionError(
                f"{value!r} is not a date (YYYY-MM-DD)", operand.offset, code="SOP077"
            ) from None
    if operand.kind != "string":
        raise ConditionError(
            f'{_a(kind)} is compared with a quoted "string"', operand.offset, code="SOP077"
        )
    if kind == "enum":
        allowed = list(getattr(named.spec, "values", ()))
        if value not in allowed:
            raise ConditionError(
                f"{value!r} is not a value of {named.name} ({', '.join(allowed)})",
                operand.offset,
                code="SOP077",
            )
    return value


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: bool(a == b),
    "!=": lambda a, b: bool(a != b),
    "<": lambda a, b: bool(a < b),
    "<=": lambda a, b: bool(a <= b),
    ">": lambda a, b: bool(a > b),
    ">=": lambda a, b: bool(a >= b),
}


def parse_condition(text: str, types: Mapping[str, SlotType]) -> Condition:
    """Parse a ``where`` condition over the slots and facts in ``types``.

    Raises:
        ConditionError: the condition cannot be read, names an unknown value or compares
            values of different kinds.
    """
    parser = _Parser(text, types)
    evaluate = parser.parse()
    return Condition(text, evaluate, frozenset(parser.names))


# --- matchers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Matcher:
    """One event pattern of a property, with its globs resolved to names."""

    kind: str
    names: frozenset[str]
    states: frozenset[str] | None = None
    outcome: str | None = None
    where: Condition | None = None
    text: str = ""
    args: tuple[tuple[str, Any], ...] = ()
    """For an effect: the arguments it must have, in JSON form."""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """A compiled property: its kind and the matchers of each of its roles."""

    id: str
    kind: Kind
    description: str
    target: tuple[Matcher, ...]
    guard: tuple[Matcher, ...] = ()
    other: tuple[Matcher, ...] = ()
    reset: tuple[Matcher, ...] = ()
    within: int = 0
    saying: frozenset[str] | None = None
    location: Location = field(default_factory=lambda: Location("<memory>"))

    @property
    def uses_values(self) -> bool:
        """Whether any of its events has a ``where`` condition or is an effect.

        An effect's arguments taken from values or returned by code are unknown to the
        abstract machine, and an effect a decision function returns may or may not come.
        """
        return any(
            m.where is not None or m.kind == "effect"
            for m in (*self.target, *self.guard, *self.other, *self.reset)
        )

    def summary(self) -> str:
        """The property in one line, as written."""
        target = _alternatives(self.target)
        if self.kind == "never":
            return f"never {target}"
        if self.kind == "before":
            return f"never {target} before {_alternatives(self.guard)}"
        if self.kind == "after":
            return f"never {target} after {_alternatives(self.guard)}"
        if self.kind == "at_most_once":
            return f"at most once {target}"
        if self.kind == "never_both":
            return f"never both {target} and {_alternatives(self.other)}"
        if self.kind == "reachable":
            return f"from every state, {target} reachable"
        saying = ", ".join(sorted(self.saying)) if self.saying is not None else "anything"
        turns = "1 turn" if self.within == 1 else f"{self.within} turns"
        return f"{target} within {turns} while the user says {saying}"


def _alternatives(matchers: Sequence[Matcher]) -> str:
    return " or ".join(str(m) for m in matchers)


def property_kind(prop: Property) -> Kind:
    """The kind of a property as written (``never`` with ``before`` is ``before``)."""
    if isinstance(prop, NeverProperty):
        if prop.before is not None:
            return "before"
        return "after" if prop.after is not None else "never"
    if isinstance(prop, AtMostOnceProperty):
        return "at_most_once"
    if isinstance(prop, NeverBothProperty):
        return "never_both"
    if isinstance(prop, ReachableProperty):
        return "reachable"
    return "leads_to"


# --- checking ---------------------------------------------------------------------------------


class _Names:
    """The ids a policy's events may name."""

    def __init__(
        self, policy: Policy, catalog: Catalog, functions: Mapping[str, DecisionFunction]
    ) -> None:
        self.states = list(policy.states)
        self.responses = list(catalog.responses)
        self.intents = [*policy.intents, OUT_OF_SCOPE]
        self.values = [*policy.slots, *policy.facts]
        self.effects: dict[str, list[str]] = {
            name: list(effect.params) for name, effect in policy.effects.items()
        }
        self.decisions: dict[str, list[str]] = {}
        for state in policy.states.values():
            if state.decide is None:
                continue
            function = functions.get(state.decide)
            declared = list(function.__sopagent_outcomes__) if function is not None else []
            outcomes = self.decisions.setdefault(state.decide, [])
            for outcome in [*declared, *state.outcomes]:
                if outcome not in outcomes:
                    outcomes.append(outcome)


def _resolve(pattern: str, names: Sequence[str]) -> list[str]:
    if any(ch in pattern for ch in "*?"):
        return [name for name in names if fnmatch.fnmatchcase(name, pattern)]
    return [pattern] if pattern in names else []


def _types(policy: Policy) -> dict[str, SlotType]:
    types = {name: compile_slot(name, spec) for name, spec in policy.facts.items()}
    types.update({name: compile_slot(name, spec) for name, spec in policy.slots.items()})
    return types


def _effect_types(
    policy: Policy, effects: Iterable[str], types: Mapping[str, SlotType]
) -> dict[str, SlotType]:
    """Slot and fact types with the parameters of ``effects`` over them (the first wins)."""
    params: dict[str, SlotType] = {}
    for name in effects:
        for param, spec in policy.effects[name].params.items():
            params.setdefault(param, compile_slot(param, spec))
    return {**types, **params}


def _effect_arg(kind: SlotType, value: Any) -> Any:
    """An argument value of a property in the JSON form effects carry.

    Raises:
        ValueError: the value is not valid for the parameter.
    """
    return kind.to_json(kind.validate(value))


class _PropertyChecker:
    def __init__(
        self, policy: Policy, catalog: Catalog, functions: Mapping[str, DecisionFunction]
    ) -> None:
        self.policy = policy
        self.names = _Names(policy, catalog, functions)
        self.types = _types(policy)
        self.problems: list[Problem] = []
        raw = getattr(policy, "_document", None)
        self.raw: Any = raw.data if raw is not None else None

    def locate(self, *path: str | int) -> Location:
        return self.policy.locate(*path)

    def problem(self, code: str, message: str, at: Location, hint: str = "") -> None:
        self.problems.append(Problem(code, message, at, hint))

    def unknown(
        self, code: str, what: str, pattern: str, known: Sequence[str], at: Location
    ) -> None:
        if any(ch in pattern for ch in "*?"):
            self.problem(code, f"{what} glob {pattern!r} matches no {what}", at)
            return
        close = difflib.get_close_matches(pattern, list(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else ""
        self.problem(code, f"unknown {what} {pattern!r}", at, hint)

    def event_paths(self, *path: str | int) -> list[tuple[str | int, ...]]:
        """Paths of the events under ``path``: one mapping, or each item of a list."""
        node = self.raw
        for element in path:
            found = (isinstance(node, dict) and element in node) or (
                isinstance(node, list) and isinstance(element, int) and element < len(node)
            )
            if found:
                node = node[element]
            else:
                node = None
                break
        if isinstance(node, list):
            return [(*path, index) for index in range(len(node))]
        return [path]

    def run(self) -> list[Problem]:
        for name in ("slots", "facts"):
            for slot, spec in getattr(self.policy, name).items():
                kind = self.types[slot]
                for index, example in enumerate(spec.examples):
                    try:
                        kind.validate(example)
                    except ValueError as exc:
                        self.problem(
                            "SOP078",
                            f"example {example!r} of {slot!r} is not a valid {kind.kind}: {exc}",
                            self.locate(name, slot, "examples", index),
                        )
        for pid, prop in self.policy.properties.items():
            at = ("properties", pid)
            for role, events in _roles(prop):
                if isinstance(role, tuple):
                    paths = [p for i in role[1:] for p in self.event_paths(*at, role[0], i)]
                else:
                    paths = self.event_paths(*at, role)
                for event, path in zip(events, paths, strict=False):
                    self.event(event, path)
            if isinstance(prop, LeadsToProperty):
                raw = self.raw_value(*at, "saying")
                for index, pattern in enumerate(prop.saying):
                    where = (*at, "saying", index) if isinstance(raw, list) else (*at, "saying")
                    if not _resolve(pattern, self.names.intents):
                        self.unknown(
                            "SOP072", "intent", pattern, self.names.intents, self.locate(*where)
                        )
        return self.problems

    def raw_value(self, *path: str | int) -> Any:
        node = self.raw
        for element in path:
            if not isinstance(node, dict) or element not in node:
                return None
            node = node[element]
        return node

    def event(self, event: Event, path: tuple[str | int, ...]) -> None:
        names = self.names
        if isinstance(event, StateEvent):
            if not _resolve(event.state, names.states):
                self.unknown(
                    "SOP070", "state", event.state, names.states, self.locate(*path, "state")
                )
        elif isinstance(event, SayEvent):
            if not _resolve(event.say, names.responses):
                self.unknown(
                    "SOP071", "response", event.say, names.responses, self.locate(*path, "say")
                )
        elif isinstance(event, IntentEvent):
            if not _resolve(event.intent, names.intents):
                self.unknown(
                    "SOP072", "intent", event.intent, names.intents, self.locate(*path, "intent")
                )
            if event.in_ is not None and not _resolve(event.in_, names.states):
                self.unknown("SOP070", "state", event.in_, names.states, self.locate(*path, "in"))
        elif isinstance(event, DecisionEvent):
            outcomes = names.decisions.get(event.decision)
            if outcomes is None:
                self.unknown(
                    "SOP073",
                    "decision function",
                    event.decision,
                    list(names.decisions),
                    self.locate(*path, "decision"),
                )
                self.problems[-1] = Problem(
                    "SOP073",
                    f"no state decides with {event.decision!r}",
                    self.problems[-1].location,
                    self.problems[-1].hint,
                )
            elif event.outcome is not None and event.outcome not in outcomes:
                self.problem(
                    "SOP074",
                    f"{event.decision!r} has no outcome {event.outcome!r}"
                    f" (it declares {', '.join(outcomes)})",
                    self.locate(*path, "outcome"),
                )
        elif isinstance(event, FilledEvent) and event.filled not in names.values:
            self.unknown(
                "SOP075", "slot or fact", event.filled, names.values, self.locate(*path, "filled")
            )
        types: Mapping[str, SlotType] = self.types
        if isinstance(event, EffectEvent):
            effects = _resolve(event.effect, list(names.effects))
            if not effects:
                self.unknown(
                    "SOP079",
                    "effect",
                    event.effect,
                    list(names.effects),
                    self.locate(*path, "effect"),
                )
                if event.where is not None or event.args:
                    return
            types = _effect_types(self.policy, effects, self.types)
            for param, value in (event.args or {}).items():
                self.effect_arg(effects, param, value, self.locate(*path, "args", param))
        if event.where is not None:
            try:
                parse_condition(event.where, types)
            except ConditionError as exc:
                self.problem(
                    exc.code,
                    f"condition {event.where!r}: {exc} (at character {exc.offset + 1})",
                    self.locate(*path, "where"),
                )

    def effect_arg(self, effects: Sequence[str], param: str, value: Any, at: Location) -> None:
        """Report a parameter none of ``effects`` has, or a value one of them cannot take."""
        having = [e for e in effects if param in self.names.effects[e]]
        if not having:
            known = sorted({p for e in effects for p in self.names.effects[e]})
            close = difflib.get_close_matches(param, known, n=1)
            self.problem(
                "SOP079",
                f"effect {' or '.join(effects)} has no parameter {param!r}"
                f" (it has {', '.join(known) or 'none'})",
                at,
                f"did you mean {close[0]!r}?" if close else "",
            )
            return
        for effect in having:
            kind = compile_slot(param, self.policy.effects[effect].params[param])
            try:
                _effect_arg(kind, value)
            except ValueError as exc:
                self.problem(
                    "SOP079",
                    f"{value!r} is not a valid {param} of effect {effect!r}: {exc}",
                    at,
                )
                return


def _roles(prop: Property) -> Iterable[tuple[str | tuple[str | int, ...], list[Event]]]:
    if isinstance(prop, NeverProperty):
        yield "never", prop.never
        for role in ("before", "after", "reset"):
            events = getattr(prop, role)
            if events is not None:
                yield role, events
    elif isinstance(prop, AtMostOnceProperty):
        yield "at_most_once", prop.at_most_once
        if prop.reset is not None:
            yield "reset", prop.reset
    elif isinstance(prop, NeverBothProperty):
        first, second = prop.never_both
        yield ("never_both", 0), first
        yield ("never_both", 1), second
        if prop.reset is not None:
            yield "reset", prop.reset
    elif isinstance(prop, ReachableProperty):
        yield "reachable", prop.reachable
    else:
        yield "leads_to", prop.leads_to


def check_properties(
    policy: Policy, catalog: Catalog, functions: Mapping[str, DecisionFunction]
) -> list[Problem]:
    """Return every problem of the policy's properties and of its slot and fact examples."""
    return _PropertyChecker(policy, catalog, functions).run()


# --- compiling --------------------------------------------------------------------------------


def _event_text(event: Event) -> str:
    if isinstance(event, StateEvent):
        text = f"state {event.state}"
    elif isinstance(event, SayEvent):
        text = f"say {event.say}"
    elif isinstance(event, IntentEvent):
        text = f"intent {event.intent}" + (f" in {event.in_}" if event.in_ else "")
    elif isinstance(event, DecisionEvent):
        text = f"{event.decision}={event.outcome}" if event.outcome else f"{event.decision}"
        text = f"decision {text}"
    elif isinstance(event, FilledEvent):
        text = f"filled {event.filled}"
    elif isinstance(event, EffectEvent):
        args = ", ".join(f"{k}={v}" for k, v in (event.args or {}).items())
        text = f"effect {event.effect}" + (f"({args})" if args else "")
    else:
        text = "end"
    if event.where is not None:
        text += f" where {event.where}"
    return text


def _matcher(event: Event, names: _Names, types: Mapping[str, SlotType], policy: Policy) -> Matcher:
    text = _event_text(event)
    if isinstance(event, EffectEvent):
        effects = _resolve(event.effect, list(names.effects))
        params = _effect_types(policy, effects, {})
        args = tuple(
            (param, _effect_arg(params[param], value))
            for param, value in (event.args or {}).items()
        )
        where_types = {**types, **params}
        return Matcher(
            "effect",
            frozenset(effects),
            where=parse_condition(event.where, where_types) if event.where is not None else None,
            text=text,
            args=args,
        )
    where = parse_condition(event.where, types) if event.where is not None else None
    if isinstance(event, StateEvent):
        return Matcher(
            "enter", frozenset(_resolve(event.state, names.states)), where=where, text=text
        )
    if isinstance(event, SayEvent):
        return Matcher(
            "say", frozenset(_resolve(event.say, names.responses)), where=where, text=text
        )
    if isinstance(event, IntentEvent):
        states = frozenset(_resolve(event.in_, names.states)) if event.in_ else None
        return Matcher(
            "intent",
            frozenset(_resolve(event.intent, names.intents)),
            states,
            where=where,
            text=text,
        )
    if isinstance(event, DecisionEvent):
        return Matcher(
            "decision", frozenset({event.decision}), outcome=event.outcome, where=where, text=text
        )
    if isinstance(event, FilledEvent):
        return Matcher("filled", frozenset({event.filled}), where=where, text=text)
    assert isinstance(event, EndedEvent)
    return Matcher("ended", frozenset({"ended"}), where=where, text=text)


def compile_properties(
    policy: Policy, catalog: Catalog, functions: Mapping[str, DecisionFunction]
) -> list[PropertySpec]:
    """Resolve the globs and conditions of a checked policy's properties."""
    names = _Names(policy, catalog, functions)
    types = _types(policy)

    def matchers(events: Sequence[Event] | None) -> tuple[Matcher, ...]:
        return tuple(_matcher(e, names, types, policy) for e in events or ())

    specs: list[PropertySpec] = []
    for pid, prop in policy.properties.items():
        kind = property_kind(prop)
        common: dict[str, Any] = {
            "id": pid,
            "kind": kind,
            "description": prop.description,
            "location": policy.locate_key("properties", pid),
        }
        if isinstance(prop, NeverProperty):
            spec = PropertySpec(
                target=matchers(prop.never),
                guard=matchers(prop.before if prop.before is not None else prop.after),
                reset=matchers(prop.reset),
                **common,
            )
        elif isinstance(prop, AtMostOnceProperty):
            spec = PropertySpec(
                target=matchers(prop.at_most_once), reset=matchers(prop.reset), **common
            )
        elif isinstance(prop, NeverBothProperty):
            spec = PropertySpec(
                target=matchers(prop.never_both[0]),
                other=matchers(prop.never_both[1]),
                reset=matchers(prop.reset),
                **common,
            )
        elif isinstance(prop, ReachableProperty):
            spec = PropertySpec(target=matchers(prop.reachable), **common)
        else:
            saying = (
                frozenset(n for p in prop.saying for n in _resolve(p, names.intents))
                if prop.saying
                else None
            )
            spec = PropertySpec(
                target=matchers(prop.leads_to), within=prop.within, saying=saying, **common
            )
        specs.append(spec)
    return specs
