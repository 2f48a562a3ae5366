"""Catalogs per locale: load and check translations, export every line as CSV.

A policy's ``catalog`` is its source locale; ``translations`` names catalogs of the same
responses (the same ids) in other locales. The check reports ids a locale lacks (SOP105, a
warning: the source line is said instead), ids only a translation has (SOP106), placeholders a
translation uses that its source line does not fill (SOP107), translations that clash with the
source (SOP108) and intent examples for intents the policy does not have (SOP109).

`compile_locale` builds a translation's `LocaleTable` for the compiled policy.
`lines_csv` writes one row per line id and locale, the source text beside each translation,
for translators and voice studios; the line id is the key of string tables and voice files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sopagent._load import load_catalog
from sopagent.backends import Label
from sopagent.errors import PolicyError, Problem
from sopagent.policy import Catalog, Policy, Route

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy, CompiledState, Template

__all__ = [
    "CSV_COLUMNS",
    "LocaleTable",
    "check_translations",
    "compile_locale",
    "line_uses",
    "lines_csv",
    "load_translations",
]


def load_translations(policy: Policy) -> tuple[list[Catalog], list[Problem]]:
    """Load the catalogs a policy's ``translations`` name; problems of unreadable ones."""
    base = policy.source.parent if policy.source else Path.cwd()
    catalogs: list[Catalog] = []
    problems: list[Problem] = []
    for index, spec in enumerate(policy.translations):
        path = base / spec
        if not path.is_file():
            problems.append(
                Problem(
                    "SOP108",
                    f"translation catalog {spec!r} does not exist",
                    policy.locate("translations", index),
                )
            )
            continue
        try:
            catalogs.append(load_catalog(path))
        except PolicyError as exc:
            problems.extend(exc.problems)
    return catalogs, problems


def check_translations(
    policy: Policy, source: Catalog, translations: Sequence[Catalog]
) -> list[Problem]:
    """Return every problem of the translations against the source catalog."""
    problems: list[Problem] = []
    if source.examples:
        first = next(iter(source.examples))
        problems.append(
            Problem(
                "SOP109",
                "the source catalog has intent examples; they belong in the policy's intents",
                source.locate_key("examples", first),
            )
        )
    seen = {source.locale: source}
    for catalog in translations:
        if catalog.catalog != source.catalog:
            problems.append(
                Problem(
                    "SOP108",
                    f"translation is catalog {catalog.catalog!r}, not {source.catalog!r}",
                    catalog.locate("catalog"),
                )
            )
        if catalog.locale in seen:
            other = seen[catalog.locale]
            what = "the source catalog" if other is source else f"{other.source}"
            problems.append(
                Problem(
                    "SOP108",
                    f"locale {catalog.locale!r} is already {what}'s",
                    catalog.locate("locale"),
                )
            )
            continue
        seen[catalog.locale] = catalog
        missing = [rid for rid in source.responses if rid not in catalog.responses]
        if missing:
            shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
            problems.append(
                Problem(
                    "SOP105",
                    f"locale {catalog.locale!r} lacks {len(missing)} line(s): {shown}",
                    catalog.locate("responses"),
                    hint="the source line is said instead; `sopagent export-lines` lists them",
                    severity="warning",
                )
            )
        for rid, response in catalog.responses.items():
            original = source.responses.get(rid)
            if original is None:
                problems.append(
                    Problem(
                        "SOP106",
                        f"line {rid!r} is not in the source catalog; it is never said",
                        catalog.locate_key("responses", rid),
                        severity="warning",
                    )
                )
                continue
            extra = [p for p in response.placeholders if p not in original.placeholders]
            if extra:
                problems.append(
                    Problem(
                        "SOP107",
                        f"line {rid!r} uses {{{extra[0]}}}, which the source line does not",
                        catalog.locate("responses", rid),
                        hint="a translation may fill only the source line's placeholders",
                    )
                )
            if response.approved is not None and response.approved != response.hash:
                problems.append(
                    Problem(
                        "SOP032",
                        f"response {rid!r} changed since it was approved"
                        f" (approved {response.approved}, now {response.hash})",
                        catalog.locate("responses", rid),
                        hint="have the new wording reviewed, then update 'approved'",
                        severity="warning",
                    )
                )
        for intent in catalog.examples:
            if intent not in policy.intents:
                problems.append(
                    Problem(
                        "SOP109",
                        f"examples for unknown intent {intent!r}",
                        catalog.locate_key("examples", intent),
                    )
                )
    return problems


# --- compile ---


@dataclass(frozen=True)
class LocaleTable:
    """A translation: its templates and, when it has intent examples, its own labels.

    Attributes:
        code: the locale, e.g. ``de``.
        catalog: the translation catalog.
        templates: the lines it has; lines it lacks are said from the source catalog.
        vocabulary: every intent with this locale's examples, or None when it has none (the
            source labels and prompt serve).
        labels: per waiting state, its labels with this locale's examples.
        examples: per waiting state, exact examples (this locale's, then the source's).
        key: identifies this locale's vocabulary to backends.
    """

    code: str
    catalog: Catalog
    templates: dict[str, Template]
    vocabulary: tuple[Label, ...] | None = None
    labels: dict[str, tuple[Label, ...]] = field(default_factory=dict)
    examples: dict[str, dict[str, str]] = field(default_factory=dict)
    key: str = ""


def compile_locale(
    translation: Catalog,
    source: Catalog,
    states: dict[str, CompiledState],
    vocabulary: tuple[Label, ...],
    policy_hash: str,
) -> LocaleTable:
    """Compile a checked translation: its templates and, with examples, its own labels."""
    # The compile step imports this module: its helpers are imported when first used.
    from sopagent._compile import _normalize, _template  # noqa: PLC0415

    templates = {
        rid: _template(rid, response)
        for rid, response in translation.responses.items()
        if rid in source.responses
    }
    if not translation.examples:
        return LocaleTable(translation.locale, translation, templates)
    local = {
        label.name: Label(
            label.name,
            label.description,
            tuple(translation.examples.get(label.name) or label.examples),
        )
        for label in vocabulary
    }
    labels: dict[str, tuple[Label, ...]] = {}
    examples: dict[str, dict[str, str]] = {}
    for name, state in states.items():
        if state.kind != "wait":
            continue
        labels[name] = tuple(local[label.name] for label in state.labels)
        exact = {
            _normalize(example): intent
            for intent in state.routes
            for example in translation.examples.get(intent, ())
        }
        for example, intent in state.examples.items():
            exact.setdefault(example, intent)
        examples[name] = exact
    return LocaleTable(
        translation.locale,
        translation,
        templates,
        tuple(local[label.name] for label in vocabulary),
        labels,
        examples,
        f"{policy_hash}:{translation.locale}",
    )


# --- export -------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "id",
    "locale",
    "text",
    "source_text",
    "status",
    "placeholders",
    "description",
    "said_in",
    "hash",
)
"""Columns of `lines_csv`, in order."""


def _route_lines(route: Route | None) -> list[str]:
    return [] if route is None else [*route.say, *route.vary, *route.choose]


def line_uses(policy: Policy) -> dict[str, list[str]]:
    """Line id -> where the policy says it, e.g. ``shop: on buy_key``, ``global: error``."""
    uses: dict[str, list[str]] = {}

    def add(lines: list[str], where: str) -> None:
        for line in lines:
            places = uses.setdefault(line, [])
            if where not in places:
                places.append(where)

    g = policy.global_
    for intent, route in g.on.items():
        add(_route_lines(route), f"global: on {intent}")
    add(_route_lines(g.fallback), "global: fallback")
    add(_route_lines(g.error), "global: error")
    add(_route_lines(g.filler), "global: filler")
    add(_route_lines(g.confidence.below if g.confidence else None), "global: unsure")
    for name, slot in policy.slots.items():
        add([r for r in (slot.ask,) if r], f"slot {name}: ask")
        add([r for r in (slot.invalid,) if r], f"slot {name}: invalid")
    for name, state in policy.states.items():
        add([*state.say, *state.vary, *state.choose], f"{name}: enter")
        routes: list[tuple[str, Route | None]] = [
            *((f"on {i}", r) for i, r in state.on.items()),
            *((f"outcome {o}", r) for o, r in state.outcomes.items()),
            ("filled", state.filled),
            ("fallback", state.fallback),
            ("filler", state.filler),
            ("unsure", state.confidence.below if state.confidence else None),
        ]
        for label, taken in routes:
            add(_route_lines(taken), f"{name}: {label}")
    return uses


def _status(catalog: Catalog, rid: str) -> str:
    response = catalog.responses.get(rid)
    if response is None:
        return "missing"
    if response.approved is None:
        return "unapproved"
    return "approved" if response.approved == response.hash else "changed"


def _rows(compiled: CompiledPolicy, locales: Sequence[str] | None) -> Iterator[list[str]]:
    source = compiled.catalog
    catalogs = [source, *(table.catalog for table in compiled.locales.values())]
    wanted = set(locales) if locales else None
    uses = line_uses(compiled.policy)
    for catalog in catalogs:
        if wanted is not None and catalog.locale not in wanted:
            continue
        for rid, original in source.responses.items():
            response = catalog.responses.get(rid)
            yield [
                rid,
                catalog.locale,
                response.text if response is not None else "",
                original.text,
                _status(catalog, rid),
                " ".join(original.placeholders),
                (response.description if response is not None else "") or original.description,
                "; ".join(uses.get(rid, [])),
                response.hash if response is not None else "",
            ]


def lines_csv(compiled: CompiledPolicy, locales: Sequence[str] | None = None) -> str:
    """Every line of every locale (or of ``locales``) as CSV with the `CSV_COLUMNS` header.

    Rows follow the source catalog's order, locale by locale (source first); a line a locale
    lacks has an empty ``text`` and the status ``missing``. Status is also ``approved``,
    ``unapproved`` or ``changed`` (approved, then edited).

    Raises:
        ValueError: a requested locale is not one of the policy's.
    """
    known = [compiled.catalog.locale, *compiled.locales]
    unknown = sorted(set(locales or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown locale {unknown[0]!r}; the policy has {', '.join(known)}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_rows(compiled, locales))
    return out.getvalue()
