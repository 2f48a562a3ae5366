"""Check step: decision modules read as source, never run for it.

Two things are read from a decision module's syntax tree:

* what each outcome of a decision function does to slot and fact values (`summarize`): the
  values it certainly sets and the ones it may write, from its ``return`` statements and its
  ``@decision(sets=...)`` declaration, and the values it reads with ``ctx.slots[...]`` or
  ``ctx.facts[...]``;
* what the module reaches outside itself (`scan_module`): its imports and its calls of
  builtins that run code by name or touch the console and files.

Anything the source does not show plainly counts as unknown: an outcome whose writes are
unknown may clear any value.
"""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sopagent._yaml import read_source
from sopagent.decisions import DecisionFunction
from sopagent.errors import PolicyError

__all__ = [
    "ALLOWED_IMPORTS",
    "Effects",
    "FunctionSummary",
    "ModuleScan",
    "Read",
    "Use",
    "allowed",
    "scan_module",
    "shown_path",
    "summarize",
]

ALLOWED_IMPORTS = frozenset(
    {
        "__future__", "abc", "bisect", "calendar", "collections", "contextlib", "copy",
        "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib",
        "heapq", "hmac", "itertools", "json", "logging", "math", "numbers", "operator",
        "random", "re", "secrets", "statistics", "string", "textwrap", "time", "types",
        "typing", "typing_extensions", "unicodedata", "uuid", "zoneinfo", "sopagent",
    }
)  # fmt: skip
"""Modules every decision module may import: sopagent and in-process standard library."""

DYNAMIC_CALLS = frozenset({"exec", "eval", "compile", "__import__"})
CONSOLE_OR_FILE_CALLS = frozenset({"open", "input", "breakpoint"})


@dataclass(frozen=True, slots=True)
class Effects:
    """What returning one outcome does to values, as far as the source shows.

    Attributes:
        sets: values that certainly have a value afterwards.
        writes: values the function may set or clear; ``None`` when it may write anything.
        empties: values it certainly clears (``None`` on every way it returns the outcome).
    """

    sets: frozenset[str] = frozenset()
    writes: frozenset[str] | None = frozenset()
    empties: frozenset[str] = frozenset()

    @property
    def clears(self) -> frozenset[str] | None:
        """Values that may be empty afterwards because of the function; ``None``: any."""
        return None if self.writes is None else self.writes - self.sets

    @property
    def may_set(self) -> frozenset[str] | None:
        """Values that may have a value afterwards because of the function; ``None``: any."""
        return None if self.writes is None else (self.writes - self.empties) | self.sets


UNKNOWN = Effects(frozenset(), None)


@dataclass(frozen=True, slots=True)
class Read:
    """A ``ctx.slots["name"]`` or ``ctx.facts["name"]`` read, which fails when it is empty."""

    name: str
    kind: str
    file: str
    line: int
    column: int


@dataclass(frozen=True)
class FunctionSummary:
    """A decision function's effect on values, per outcome, and the values it reads."""

    name: str
    outcomes: Mapping[str, Effects]
    reads: tuple[Read, ...] = ()
    declared: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def effects(self, outcome: str) -> Effects:
        """The effects of ``outcome`` (unknown for an outcome the function does not declare)."""
        return self.outcomes.get(outcome, UNKNOWN)


@dataclass(frozen=True, slots=True)
class Use:
    """An import or a call found in a module's source.

    Attributes:
        name: the module imported (absolute when it can be resolved) or the function called.
        members: for ``from X import a, b``, the names imported from ``X``.
    """

    name: str
    line: int
    column: int
    members: tuple[str, ...] = ()

    def refused(self, permitted: frozenset[str] | set[str]) -> str | None:
        """The first module this import reaches outside ``permitted``, or ``None``."""
        if self.name.startswith("."):
            return self.name
        if allowed(self.name, permitted):
            return None
        # `from pkg import mod` may name allowed submodules of a package not itself listed.
        inside = [f"{self.name}.{m}" for m in self.members if m != "*"]
        if inside and len(inside) == len(self.members):
            return next((m for m in inside if not allowed(m, permitted)), None)
        return self.name


@dataclass(frozen=True)
class ModuleScan:
    """A decision module's syntax tree and what it reaches outside itself."""

    path: Path
    tree: ast.Module
    imports: tuple[Use, ...]
    calls: tuple[Use, ...]
    functions: Mapping[str, ast.FunctionDef]
    package: str | None = None


def shown_path(path: str | Path) -> str:
    """A file's path as reports show it: relative to the working directory when inside it."""
    normal = os.path.normpath(path)
    if not os.path.isabs(normal):
        return normal
    try:
        relative = os.path.relpath(normal)
    except ValueError:  # another drive on Windows
        return normal
    return normal if relative.startswith(os.pardir) else relative


# --- modules ---------------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _executed(tree: ast.AST) -> Iterator[ast.AST]:
    """Walk the tree, leaving out ``if TYPE_CHECKING:`` blocks (they never run)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _bound_at_top(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _absolute(node: ast.ImportFrom, package: str | None) -> str:
    if not node.level:
        return node.module or ""
    if package is None:
        return "." * node.level + (node.module or "")
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1] if node.level > 1 else parts
    return ".".join([*base, node.module] if node.module else base)


@lru_cache(maxsize=256)
def _scan(
    path: Path,
    stamp: tuple[int, int],  # noqa: ARG001 (part of the cache key: a changed file is read again)
    package: str | None,
) -> ModuleScan | None:
    try:
        source = read_source(path, "decision module").decode("utf-8")
        tree = ast.parse(source, filename=str(path))
    except (PolicyError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError):
        return None
    imports: list[Use] = []
    calls: list[Use] = []
    bound = _bound_at_top(tree)
    for node in _executed(tree):
        if isinstance(node, ast.Import):
            imports += [Use(a.name, node.lineno, node.col_offset + 1) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            members = tuple(a.name for a in node.names)
            where = _absolute(node, package)
            imports.append(Use(where, node.lineno, node.col_offset + 1, members))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in DYNAMIC_CALLS | CONSOLE_OR_FILE_CALLS
            and node.func.id not in bound
        ):
            calls.append(Use(node.func.id, node.lineno, node.col_offset + 1))
    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}

    def position(use: Use) -> tuple[int, int]:
        return use.line, use.column

    imports.sort(key=position)
    calls.sort(key=position)
    return ModuleScan(path, tree, tuple(imports), tuple(calls), functions, package)


def scan_module(path: Path, package: str | None = None) -> ModuleScan | None:
    """Read and parse a decision module; ``None`` when it cannot be read or parsed.

    Args:
        path: the module's ``.py`` file.
        package: the package the module belongs to, to resolve relative imports.
    """
    try:
        info = path.stat()
    except OSError:
        return None
    return _scan(path.resolve(), (info.st_mtime_ns, info.st_size), package)


def allowed(module: str, permitted: frozenset[str] | set[str]) -> bool:
    """Whether ``module`` is one of ``permitted`` or inside one of them."""
    parts = module.split(".")
    return any(".".join(parts[:n]) in permitted for n in range(1, len(parts) + 1))


# --- decision functions ----------------------------------------------------------------------


def _own_nodes(function: ast.FunctionDef) -> Iterator[ast.AST]:
    """Nodes of the function's body, leaving out nested functions, lambdas and classes."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
            ):
                stack.append(child)


class _Locals:
    """Assignments of the function's local names, to follow ``x = {...}; Outcome(..., x)``."""

    def __init__(self, function: ast.FunctionDef) -> None:
        self.values: dict[str, list[ast.expr]] = {}
        self.opaque: set[str] = set()
        for node in _own_nodes(function):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.values.setdefault(target.id, []).append(node.value)
                    else:
                        self._mark(target)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.value is None:
                    continue
                self.values.setdefault(node.target.id, []).append(node.value)
            elif isinstance(node, ast.NamedExpr):
                self.values.setdefault(node.target.id, []).append(node.value)
            elif isinstance(node, ast.AugAssign | ast.For | ast.With | ast.comprehension):
                targets = [node.target] if not isinstance(node, ast.With) else []
                if isinstance(node, ast.With):
                    targets = [i.optional_vars for i in node.items if i.optional_vars]
                for target in targets:
                    self._mark(target)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                self._mark(node.func.value)  # x.update(...), x.pop(...)
            elif isinstance(node, ast.Delete):
                for target in node.targets:
                    self._mark(target)
        for arg in function.args.args + function.args.kwonlyargs:
            self.opaque.add(arg.arg)

    def _mark(self, target: ast.AST) -> None:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                self.opaque.add(node.id)

    def resolve(self, name: str) -> list[ast.expr] | None:
        if name in self.opaque or name not in self.values:
            return None
        return self.values[name]


def _outcome_names(expr: ast.expr, names: _Locals, depth: int = 0) -> set[str] | None:
    """The outcome names an expression can have; ``None`` when it is not plain."""
    if depth > 8:
        return None
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        first = _outcome_names(expr.body, names, depth + 1)
        second = _outcome_names(expr.orelse, names, depth + 1)
        return None if first is None or second is None else first | second
    if isinstance(expr, ast.Name):
        values = names.resolve(expr.id)
        if values is None:
            return None
        found: set[str] = set()
        for value in values:
            part = _outcome_names(value, names, depth + 1)
            if part is None:
                return None
            found |= part
        return found
    return None


def _certain(value: ast.expr) -> bool:
    """Whether an expression can never be ``None`` (so it sets, never clears)."""
    if isinstance(value, ast.Constant):
        return value.value is not None
    return isinstance(
        value,
        ast.JoinedStr
        | ast.BinOp
        | ast.UnaryOp
        | ast.Compare
        | ast.List
        | ast.Tuple
        | ast.Set
        | ast.Dict
        | ast.ListComp
        | ast.SetComp
        | ast.DictComp,
    )


def _updates(expr: ast.expr | None, names: _Locals) -> tuple[set[str], set[str], set[str]] | None:
    """(certainly set, may write, cleared) of one ``slots=``/``facts=`` argument.

    ``None`` when the argument is not a dictionary the source shows.
    """
    if expr is None or (isinstance(expr, ast.Constant) and expr.value is None):
        return set(), set(), set()
    if isinstance(expr, ast.Name):
        values = names.resolve(expr.id)
        if values is None or len(values) != 1:
            return None
        expr = values[0]
    if not isinstance(expr, ast.Dict):
        return None
    sets: set[str] = set()
    writes: set[str] = set()
    empties: set[str] = set()
    for key, value in zip(expr.keys, expr.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            return None  # ** unpacking or a computed key
        writes.add(key.value)
        if _certain(value):
            sets.add(key.value)
        elif isinstance(value, ast.Constant) and value.value is None:
            empties.add(key.value)
    return sets, writes, empties


@dataclass(frozen=True, slots=True)
class _Shape:
    """One way a function returns: which outcomes, and what it does to values then."""

    outcomes: frozenset[str] | None
    effects: Effects


_UNKNOWN_SHAPE = _Shape(None, UNKNOWN)


def _is_outcome_call(expr: ast.expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    func = expr.func
    return (isinstance(func, ast.Name) and func.id == "Outcome") or (
        isinstance(func, ast.Attribute) and func.attr == "Outcome"
    )


def _argument(call: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for item in call.keywords:
        if item.arg == keyword:
            return item.value
    if len(call.args) > position and not isinstance(call.args[position], ast.Starred):
        return call.args[position]
    return None


def _shapes(expr: ast.expr, names: _Locals) -> list[_Shape]:
    if isinstance(expr, ast.Constant) and expr.value is None:
        return []  # returning None is a DecisionError: nothing is rendered after it
    if isinstance(expr, ast.IfExp):
        return _shapes(expr.body, names) + _shapes(expr.orelse, names)
    plain = _outcome_names(expr, names)
    if plain is not None:
        return [_Shape(frozenset(plain), Effects())]
    if not isinstance(expr, ast.Call) or not _is_outcome_call(expr):
        return [_UNKNOWN_SHAPE]
    if any(item.arg is None for item in expr.keywords) or any(
        isinstance(arg, ast.Starred) for arg in expr.args
    ):
        return [_UNKNOWN_SHAPE]
    name = _argument(expr, 0, "name")
    outcomes = _outcome_names(name, names) if name is not None else None
    sets: set[str] = set()
    writes: set[str] | None = set()
    empties: set[str] = set()
    for position, keyword in ((1, "slots"), (2, "facts")):
        found = _updates(_argument(expr, position, keyword), names)
        if found is None:
            writes = None
            continue
        sets |= found[0]
        empties |= found[2]
        if writes is not None:
            writes |= found[1]
    if writes is None:
        effects = Effects(frozenset(sets), None)
    else:
        effects = Effects(frozenset(sets), frozenset(writes), frozenset(empties))
    return [_Shape(None if outcomes is None else frozenset(outcomes), effects)]


def _context_name(function: ast.FunctionDef) -> str | None:
    args = function.args.posonlyargs + function.args.args
    return args[0].arg if args else None


def _reads(
    function: ast.FunctionDef,
    ctx: str,
    scan: ModuleScan,
    seen: set[tuple[str, str]],
) -> list[Read]:
    """Subscript reads of ``ctx.slots``/``ctx.facts``, following module-level helpers."""
    found: list[Read] = []
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("slots", "facts")
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == ctx
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.append(
                Read(
                    node.slice.value,
                    node.value.attr,
                    str(scan.path),
                    node.lineno,
                    node.col_offset + 1,
                )
            )
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            helper = scan.functions.get(node.func.id)
            if helper is None or helper is function:
                continue
            params = [a.arg for a in helper.args.posonlyargs + helper.args.args]
            for index, arg in enumerate(node.args[: len(params)]):
                key = (helper.name, params[index])
                if isinstance(arg, ast.Name) and arg.id == ctx and key not in seen:
                    seen.add(key)
                    found += _reads(helper, params[index], scan, seen)
    return found


def _definition(function: DecisionFunction) -> tuple[ModuleScan, ast.FunctionDef] | None:
    try:
        source = inspect.getsourcefile(function)
    except TypeError:
        return None
    if source is None:
        return None
    scan = scan_module(Path(source))
    if scan is None:
        return None
    first = getattr(getattr(function, "__code__", None), "co_firstlineno", None)
    for node in ast.walk(scan.tree):
        if isinstance(node, ast.FunctionDef) and node.name == function.__name__:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if first is None or first in (start, node.lineno):
                return scan, node
    return None


def summarize(function: DecisionFunction) -> FunctionSummary:
    """Read what each outcome of a decision function does to values, and what it reads."""
    outcomes: tuple[str, ...] = function.__sopagent_outcomes__
    declared: Mapping[str, tuple[str, ...]] = getattr(function, "__sopagent_sets__", {})
    found = _definition(function)
    if found is None:
        effects = {o: Effects(frozenset(declared.get(o, ())), None) for o in outcomes}
        return FunctionSummary(function.__name__, effects, (), declared)
    scan, node = found
    names = _Locals(node)
    shapes: list[_Shape] = []
    for item in _own_nodes(node):
        if isinstance(item, ast.Return) and item.value is not None:
            shapes += _shapes(item.value, names)
    summary: dict[str, Effects] = {}
    for outcome in outcomes:
        mine = [s for s in shapes if s.outcomes is None or outcome in s.outcomes]
        promised = frozenset(declared.get(outcome, ()))
        certain = frozenset.intersection(*(s.effects.sets for s in mine)) if mine else frozenset()
        known = [shape.effects.writes for shape in mine]
        if None in known:
            summary[outcome] = Effects(promised, None)
            continue
        writes = frozenset().union(*(w for w in known if w))
        empties = (
            frozenset.intersection(*(s.effects.empties for s in mine)) if mine else frozenset()
        )
        summary[outcome] = Effects(certain | promised, writes, empties - promised)
    ctx = _context_name(node)
    reads = tuple(_reads(node, ctx, scan, set())) if ctx is not None else ()
    return FunctionSummary(function.__name__, summary, reads, declared)
