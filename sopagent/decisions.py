"""Decision functions: the business logic of a procedure, written in Python.

A decision function reads a read-only `Context` and returns one of the outcomes it declared,
either as a string or as an `Outcome` carrying slot and fact updates::

    from sopagent import Context, Outcome, decision

    @decision(outcomes=["approve", "needs_verification", "deny"])
    def check_amount(ctx: Context) -> Outcome | str:
        if ctx.facts["order_total"] > 100 and not ctx.facts.get("verified"):
            return "needs_verification"
        return Outcome("approve", facts={"refund_amount": ctx.facts["order_total"]})

A policy names the modules it takes decision functions from; only functions marked with
`@decision` in those modules can be referenced. A function may also declare the slots and
facts it reads (``reads=[...]``) and the effects it may return (``effects=...``)::

    from sopagent import Effect

    @decision(outcomes=["sold", "too_low"], reads=["offer"], effects={"sold": ["take_gold"]})
    def weigh_offer(ctx: Context) -> Outcome | str:
        offer = ctx.slots["offer"]
        if offer < 50:
            return "too_low"
        return Outcome("sold", effects=[Effect(name="take_gold", args={"amount": offer})])

``sets`` declares, per outcome, the slots and facts the function always gives a value when
it returns that outcome; the run time holds it to that, and `sopagent check` relies on it to
prove that a response's placeholders are filled.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Protocol, overload

from sopagent.session import Effect

__all__ = ["Context", "DecisionFunction", "Outcome", "decision"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a decision function decided, with the slot and fact values it sets.

    ``effects`` are emitted after the updates, before the outcome's route is taken; each must
    be declared by the policy and, for this outcome, by ``@decision(effects=...)``.
    """

    name: str
    slots: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    effects: Sequence[Effect] = ()


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One earlier turn as a decision function sees it."""

    intent: str | None
    state: str
    responses: tuple[str, ...]


class _Past(Sequence[HistoryItem]):
    """Earlier turns as a decision function sees them, built when first read.

    Holds a snapshot of the session's remembered turns; most decision functions never read
    them, and a session may remember hundreds. Compares equal to a sequence of the same items.
    """

    __slots__ = ("_items", "_turns")

    def __init__(self, turns: Sequence[Any]) -> None:
        self._turns = tuple(turns)
        self._items: tuple[HistoryItem, ...] | None = None

    def _built(self) -> tuple[HistoryItem, ...]:
        if self._items is None:
            self._items = tuple(HistoryItem(t.intent, t.state, t.responses) for t in self._turns)
        return self._items

    def __len__(self) -> int:
        return len(self._turns)

    @overload
    def __getitem__(self, index: int) -> HistoryItem: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[HistoryItem, ...]: ...
    def __getitem__(self, index: int | slice) -> HistoryItem | tuple[HistoryItem, ...]:
        return self._built()[index]

    def __iter__(self) -> Iterator[HistoryItem]:
        return iter(self._built())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._built() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._built())


@dataclass(frozen=True, slots=True)
class Context:
    """What a decision function may read. Every mapping is read-only.

    Attributes:
        state: the state whose decision runs.
        intent: the intent of the current turn, if the model or a rule classified one.
        slots: validated slot values, typed (``Decimal`` for money, ``date`` for dates).
        facts: validated facts, typed the same way.
        history: earlier turns, oldest first (a read-only sequence, built when read).
        session_id: the session's id.
        turn: index of the current turn, from 0.
    """

    state: str
    intent: str | None
    slots: Mapping[str, Any]
    facts: Mapping[str, Any]
    history: Sequence[HistoryItem]
    session_id: str
    turn: int

    @classmethod
    def build(
        cls,
        *,
        state: str,
        intent: str | None,
        slots: dict[str, Any],
        facts: dict[str, Any],
        history: Sequence[HistoryItem],
        session_id: str,
        turn: int,
    ) -> Context:
        """Build a context whose mappings are read-only views of copies."""
        return cls._over(state, intent, dict(slots), dict(facts), history, session_id, turn)

    @classmethod
    def _over(
        cls,
        state: str,
        intent: str | None,
        slots: dict[str, Any],
        facts: dict[str, Any],
        history: Sequence[HistoryItem],
        session_id: str,
        turn: int,
    ) -> Context:
        """A context over ``slots`` and ``facts`` themselves: dicts nothing else holds."""
        return cls(
            state,
            intent,
            MappingProxyType(slots),
            MappingProxyType(facts),
            history,
            session_id,
            turn,
        )


class DecisionFunction(Protocol):
    """A function marked with `@decision`."""

    __sopagent_outcomes__: tuple[str, ...]
    __sopagent_sets__: Mapping[str, tuple[str, ...]]
    __name__: str

    def __call__(self, ctx: Context, /) -> Outcome | str: ...


_MARK = "__sopagent_outcomes__"
_READS = "__sopagent_reads__"
_EFFECTS = "__sopagent_effects__"
_SETS = "__sopagent_sets__"


def decision(
    *,
    outcomes: list[str] | tuple[str, ...],
    reads: Sequence[str] | None = None,
    effects: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    sets: Mapping[str, list[str] | tuple[str, ...]] | None = None,
) -> Callable[[Callable[[Context], Outcome | str]], DecisionFunction]:
    """Mark a function as a decision function with the outcomes it may return.

    Args:
        outcomes: every outcome the function may return; a policy must route each.
        reads: the slots and facts it reads; the checker checks that the policy declares
            them, and the function's context holds only these. By default it sees them all.
        effects: the declared effects it may return in `Outcome.effects`: names allowed with
            every outcome, or outcome -> names. By default it returns none.
        sets: outcome -> slots and facts that always have a value after the function returns
            that outcome. Returning the outcome with one of them empty is a `DecisionError`.

    Returns:
        A decorator that records the declaration on the function and returns it unchanged.

    Raises:
        ValueError: no outcomes, duplicates, or ``effects`` or ``sets`` names an outcome not
            declared.
        TypeError: ``reads``, ``effects`` or a ``sets`` entry is one string instead of a list
            of names.
    """
    declared = tuple(outcomes)
    if not declared:
        raise ValueError("a decision function declares at least one outcome")
    if len(set(declared)) != len(declared):
        raise ValueError(f"duplicate outcomes in {declared}")
    if isinstance(reads, str) or isinstance(effects, str):
        raise TypeError("reads and effects are lists of names, not one string")
    emits: dict[str, tuple[str, ...]] = {}
    if isinstance(effects, Mapping):
        unknown = sorted(set(effects) - set(declared))
        if unknown:
            raise ValueError(f"effects for undeclared outcomes: {', '.join(unknown)}")
        emits = {outcome: tuple(effects.get(outcome, ())) for outcome in declared}
    elif effects is not None:
        emits = dict.fromkeys(declared, tuple(effects))
    read = None if reads is None else tuple(reads)

    promised: dict[str, tuple[str, ...]] = {}
    for outcome, names in (sets or {}).items():
        if outcome not in declared:
            raise ValueError(f"sets names {outcome!r}, which is not one of the outcomes")
        if isinstance(names, str):
            raise TypeError(f"sets[{outcome!r}] is a list of names, not one string")
        promised[outcome] = tuple(dict.fromkeys(names))

    def mark(function: Callable[[Context], Outcome | str]) -> DecisionFunction:
        setattr(function, _MARK, declared)
        setattr(function, _READS, read)
        setattr(function, _EFFECTS, emits)
        setattr(function, _SETS, MappingProxyType(promised))
        return function  # type: ignore[return-value]

    return mark


def declared_reads(function: DecisionFunction) -> tuple[str, ...] | None:
    """The slots and facts a decision function declared it reads, or None for all."""
    reads: tuple[str, ...] | None = getattr(function, _READS, None)
    return reads


def declared_effects(function: DecisionFunction) -> dict[str, tuple[str, ...]]:
    """Outcome -> the effects a decision function may return with it."""
    emits: dict[str, tuple[str, ...]] = getattr(function, _EFFECTS, None) or {}
    return emits


def import_decision_module(spec: str, base: Path) -> ModuleType:
    """Import a module a policy declared: a dotted name, or a .py file relative to ``base``.

    A dotted name of the standard library (or a module built into the interpreter) is
    refused before anything is imported: such modules hold no decision functions, and some
    act when they are imported.

    Raises:
        ImportError: the module is the standard library's, cannot be found, or raises while
            it is imported.
    """
    top = spec.partition(".")[0]
    if not spec.endswith(".py") and (
        top in sys.stdlib_module_names or top in sys.builtin_module_names
    ):
        raise ImportError(
            f"{spec!r} is a standard library module: decision modules are the policy's own code"
        )
    if spec.endswith(".py"):
        path = (base / spec).resolve()
        if not path.is_file():
            raise ImportError(f"no such file: {path}")
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        name = f"sopagent_decisions_{path.stem}_{digest}"
        existing = sys.modules.get(name)
        if existing is not None:
            return existing
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(spec)


def decision_functions(module: ModuleType) -> dict[str, DecisionFunction]:
    """Return the functions defined in ``module`` and marked with `@decision`, by name.

    Functions imported into the module from elsewhere are left out, so a policy can only reach
    code that lives in the modules it declares.
    """
    found: dict[str, DecisionFunction] = {}
    for name, value in vars(module).items():
        if (
            callable(value)
            and isinstance(getattr(value, _MARK, None), tuple)
            and getattr(value, "__module__", None) == module.__name__
        ):
            found[name] = value
    return found
