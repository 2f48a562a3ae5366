"""Typed slot values: find them in text with a grammar, validate them with pydantic, render them.

Patterned types (strings with a regex, numbers, money, dates, booleans) are found by regular
expressions, which is the grammar the value must obey; enums are found by their names and
synonyms, and the model is asked only when none is written out.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from sopagent.policy import (
    _ID,
    BooleanSlot,
    CountsFact,
    DateSlot,
    DecimalSlot,
    EnumSlot,
    IntegerSlot,
    MoneySlot,
    SetFact,
    StringSlot,
)

__all__ = ["SlotType", "clean_text", "compile_slot"]

SlotSpec = (
    StringSlot
    | EnumSlot
    | IntegerSlot
    | DecimalSlot
    | MoneySlot
    | BooleanSlot
    | DateSlot
    | SetFact
    | CountsFact
)

_NUMBER = re.compile(
    r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])-?\d+(?:\.\d+)?(?![\w])"
)
_CURRENCY_WORDS = {
    "USD": (r"\$", r"dollars?|usd|bucks"),
    "EUR": ("€", r"euros?|eur"),
    "GBP": ("£", r"pounds?|gbp|quid"),
}
_ANY_SIGN = re.compile(r"[$€£¥₹]\s?$|^\s?(?:dollars?|usd|bucks|euros?|eur|pounds?|gbp|quid|yen)\b")


def _money_pattern(currency: str) -> re.Pattern[str]:
    sign, words = _CURRENCY_WORDS.get(currency, ("(?!)", re.escape(currency.lower())))
    amount = r"\d[\d,]*(?:\.\d+)?"
    return re.compile(
        rf"(?:{sign}\s?(?P<a>{amount}))|(?:(?P<b>{amount})\s?(?:{words}|{currency})\b)",
        re.IGNORECASE,
    )


# "one" is left out: "do you have one?" is not a number.
_WORD_NUMBERS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}  # fmt: skip
_WORD_NUMBER = re.compile(rf"\b(?:{'|'.join(_WORD_NUMBERS)})\b", re.IGNORECASE)
_YES = re.compile(
    r"\b(?:yes|yeah|yep|yup|sure|correct|right|ok(?:ay)?|confirm(?:ed)?|affirmative|please do)\b",
    re.IGNORECASE,
)
_NO = re.compile(r"\b(?:no|nope|nah|not|don't|do not|negative|cancel|never)\b", re.IGNORECASE)
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_US_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
_RELATIVE = {"today": 0, "yesterday": -1, "tomorrow": 1}
_RELATIVE_DATE = re.compile(r"\b(today|yesterday|tomorrow)\b", re.IGNORECASE)
_CURRENCY_SIGNS = {"USD": "$", "EUR": "€", "GBP": "£"}

# Characters that can change how text displays (bidi overrides, zero-width, controls).
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn"}


def clean_text(text: str, limit: int) -> str:
    """Remove control, format and bidi characters and cap the length of text shown to users."""
    kept = "".join(
        ch if unicodedata.category(ch) not in _UNSAFE_CATEGORIES else " "
        for ch in text[: limit * 2]
    )
    return " ".join(kept.split())[:limit]


@dataclass(frozen=True, slots=True)
class Found:
    """A value found in text: the typed value or why it is invalid, and where it was."""

    value: Any
    error: str | None
    span: tuple[int, int]


class SlotType:
    """A compiled slot or fact type."""

    def __init__(self, name: str, spec: SlotSpec) -> None:
        self.name = name
        self.spec = spec
        self.kind = spec.type
        self.adapter: TypeAdapter[Any] = TypeAdapter(
            _annotation(spec), config=ConfigDict(regex_engine="python-re")
        )
        self.needs_model = isinstance(spec, EnumSlot)
        source = spec.pattern if isinstance(spec, StringSlot) else None
        self._pattern = re.compile(source) if source else None
        self._probe = _probe(source) if source else None
        self._enum_words: list[tuple[re.Pattern[str], str]] = []
        if isinstance(spec, EnumSlot):
            for value in spec.values:
                words = [value, value.replace("_", " "), *spec.synonyms.get(value, [])]
                for word in words:
                    self._enum_words.append(
                        (re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE), value)
                    )

    # -- validation and storage --------------------------------------------------------------

    def validate(self, raw: Any) -> Any:
        """Return the typed value of ``raw``.

        Raises:
            ValueError: the value breaks the slot's type or bounds.
        """
        if self.kind == "string" and isinstance(raw, str) and isinstance(self.spec, StringSlot):
            raw = _normalize(raw, self.spec.normalize)
        try:
            return self.adapter.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise ValueError(first["msg"].removeprefix("Value error, ")) from None

    def to_json(self, value: Any) -> Any:
        """Return the JSON form stored in sessions."""
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, dt.date):
            return value.isoformat()
        if self.kind == "set":
            return sorted(value)
        if self.kind == "counts":
            return {key: value[key] for key in sorted(value)}
        return value

    def from_json(self, value: Any) -> Any:
        """Return the typed value of a stored JSON value."""
        if self.kind in ("money", "decimal"):
            return Decimal(value)
        if self.kind == "date":
            return dt.date.fromisoformat(value)
        if self.kind == "set":
            return frozenset(value)
        if self.kind == "counts":
            return MappingProxyType(dict(value))
        return value

    def render(self, value: Any) -> str:
        """Return the text shown to users for a typed value."""
        spec = self.spec
        if isinstance(spec, MoneySlot):
            sign = _CURRENCY_SIGNS.get(spec.currency)
            amount = f"{Decimal(value):,.2f}"
            return f"{sign}{amount}" if sign else f"{amount} {spec.currency}"
        if isinstance(spec, DecimalSlot):
            return f"{Decimal(value):,.{spec.places}f}"
        if isinstance(spec, BooleanSlot):
            return "yes" if value else "no"
        if isinstance(spec, EnumSlot):
            return str(value).replace("_", " ")
        if isinstance(spec, StringSlot):
            return clean_text(str(value), spec.max_length)
        if isinstance(spec, SetFact):
            return ", ".join(member.replace("_", " ") for member in sorted(value)) or "none"
        if isinstance(spec, CountsFact):
            counted = (f"{value[key]} {key.replace('_', ' ')}" for key in sorted(value))
            return ", ".join(counted) or "none"
        return str(value)

    # -- extraction ----------------------------------------------------------------------------

    def find(self, text: str, taken: list[tuple[int, int]]) -> Found | None:
        """Find a value of this type in ``text`` outside the ``taken`` spans."""
        for raw, span in self._candidates(text):
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            try:
                return Found(self.validate(raw), None, span)
            except ValueError as exc:
                return Found(raw, str(exc), span)
        return None

    def _candidates(self, text: str) -> list[tuple[Any, tuple[int, int]]]:
        spec = self.spec
        kind = self.kind  # the spec's discriminator: one string comparison, not isinstance
        if kind in ("set", "counts"):
            return []  # facts only: the host or a decision function sets them
        if kind == "string":
            pattern = self._pattern
            if pattern is None:
                return []
            # Most messages hold no value: one search says so for less than a finditer, and
            # the probe (the pattern without its leading lookbehind) says it sooner still.
            hit = (self._probe or pattern).search(text)
            if hit is None:
                return []
            group = 1 if pattern.groups else 0
            # From the first match on (lookbehinds still see what precedes it).
            return [(m.group(group), m.span(group)) for m in pattern.finditer(text, hit.start())]
        if isinstance(spec, EnumSlot):
            spans: list[tuple[tuple[int, int], str]] = []
            for pattern, value in self._enum_words:
                spans += [(m.span(), value) for m in pattern.finditer(text)]
            # A mention inside a longer one ("large" in "extra large") is not a mention.
            kept = {
                value
                for span, value in spans
                if not any(o[0] <= span[0] and span[1] <= o[1] and o != span for o, _ in spans)
            }
            if len(kept) == 1:
                value = kept.pop()
                first = min(span for span, v in spans if v == value)
                return [(value, first)]
            return []
        if isinstance(spec, MoneySlot | DecimalSlot):
            money = []
            if isinstance(spec, MoneySlot):
                money = [
                    ((m.group("a") or m.group("b")).replace(",", ""), m.span())
                    for m in _money_pattern(spec.currency).finditer(text)
                ]
            numbers = [
                (m.group().replace(",", ""), m.span())
                for m in _NUMBER.finditer(text)
                if not _foreign_currency(text, m.span())
            ]
            return [(_decimal(raw), span) for raw, span in money + numbers]
        if isinstance(spec, IntegerSlot):
            found = [(m.group().replace(",", ""), m.span()) for m in _NUMBER.finditer(text)]
            out = [(int(raw), span) for raw, span in found if "." not in raw]
            for word in _WORD_NUMBER.finditer(text):
                out.append((_WORD_NUMBERS[word.group().lower()], word.span()))
            return sorted(out, key=lambda item: item[1])
        if isinstance(spec, BooleanSlot):
            yes, no = _YES.search(text), _NO.search(text)
            if yes and not no:
                return [(True, yes.span())]
            if no and not yes:
                return [(False, no.span())]
            return []
        assert isinstance(spec, DateSlot)
        return _dates(text)


def _foreign_currency(text: str, span: tuple[int, int]) -> bool:
    """Whether a bare number is written with a currency sign or word next to it."""
    return bool(_ANY_SIGN.search(text[max(0, span[0] - 2) : span[0]])) or bool(
        _ANY_SIGN.search(text[span[1] : span[1] + 9])
    )


def _decimal(raw: str) -> Decimal | str:
    try:
        return Decimal(raw)
    except InvalidOperation:
        return raw


def _dates(text: str) -> list[tuple[Any, tuple[int, int]]]:
    out: list[tuple[Any, tuple[int, int]]] = []
    for match in _ISO_DATE.finditer(text):
        out.append((match.group(), match.span()))
    for match in _US_DATE.finditer(text):
        month, day, year = (int(g) for g in match.groups())
        try:
            out.append((dt.date(year, month, day), match.span()))
        except ValueError:
            out.append((match.group(), match.span()))
    for match in _RELATIVE_DATE.finditer(text):
        offset = _RELATIVE[match.group(1).lower()]
        out.append((dt.date.today() + dt.timedelta(days=offset), match.span()))
    return sorted(out, key=lambda item: item[1])


def _normalize(value: str, how: str) -> str:
    if how == "upper":
        return value.upper()
    if how == "lower":
        return value.lower()
    if how == "digits":
        return "".join(ch for ch in value if ch.isdigit())
    return value


def _annotation(spec: SlotSpec) -> Any:
    if isinstance(spec, StringSlot):
        constraints = StringConstraints(
            min_length=spec.min_length, max_length=spec.max_length, strict=True
        )
        if spec.pattern is None:
            return Annotated[str, constraints]
        return Annotated[str, constraints, AfterValidator(_pattern_check(spec.pattern))]
    if isinstance(spec, EnumSlot):
        return Literal[tuple(spec.values)]
    if isinstance(spec, IntegerSlot):
        return Annotated[int, Field(strict=True, ge=spec.min, le=spec.max)]
    if isinstance(spec, MoneySlot):
        return Annotated[
            Decimal,
            Field(
                ge=None if spec.min is None else Decimal(str(spec.min)),
                le=None if spec.max is None else Decimal(str(spec.max)),
                decimal_places=2,
                allow_inf_nan=False,
            ),
        ]
    if isinstance(spec, DecimalSlot):
        return Annotated[
            Decimal,
            Field(
                ge=None if spec.min is None else Decimal(str(spec.min)),
                le=None if spec.max is None else Decimal(str(spec.max)),
                decimal_places=spec.places,
                allow_inf_nan=False,
            ),
        ]
    if isinstance(spec, BooleanSlot):
        return Annotated[bool, Field(strict=True)]
    if isinstance(spec, SetFact):
        member: Any = Literal[tuple(spec.values)] if spec.values else _ID_STRING
        return Annotated[frozenset[member], Field(max_length=spec.max_items)]
    if isinstance(spec, CountsFact):
        key: Any = Literal[tuple(spec.keys)] if spec.keys else _ID_STRING
        count = Annotated[int, Field(strict=True, ge=spec.min, le=spec.max)]
        return Annotated[
            dict[key, count],
            Field(max_length=spec.max_items),
            AfterValidator(_counted),
        ]
    return dt.date


_ID_STRING = Annotated[str, StringConstraints(pattern=_ID, max_length=64, strict=True)]


def _counted(counts: dict[str, int]) -> MappingProxyType[str, int]:
    # A zero count is the same inventory as no entry: keep one spelling of each.
    return MappingProxyType({key: counts[key] for key in sorted(counts) if counts[key]})


def _parens(pattern: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """Each ``(`` and ``)`` of ``pattern`` from ``start`` on, outside escapes and classes."""
    in_class, index = False, start
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            if pattern.startswith(("[]", "[^]"), index):  # a leading ] is a member
                index += 2 if pattern[index + 1] == "]" else 3
                continue
        elif char in "()":
            yield index, char
        index += 1


def _group_source(pattern: str) -> str:
    """Return the source of the first capture group of ``pattern``, or the whole pattern."""
    depth, start = 0, -1
    for index, char in _parens(pattern):
        if char == "(":
            if start < 0 and not pattern.startswith("(?", index):
                start, depth = index + 1, 0
            elif start >= 0:
                depth += 1
        elif start >= 0:
            if depth == 0:
                return pattern[start:index]
            depth -= 1
    return pattern


def _probe(pattern: str) -> re.Pattern[str] | None:
    """``pattern`` without the lookbehind it starts with, or None if it starts with none.

    A match of ``pattern`` is a match of the probe at the same place, so where the probe finds
    nothing the pattern finds nothing, and it finds it sooner: a pattern that starts with a
    lookbehind is tried at every position of the text, the probe only where its first
    character can match.
    """
    if not pattern.startswith(("(?<=", "(?<!")):
        return None
    depth = 0
    for index, char in _parens(pattern, 4):
        if char == "(":
            depth += 1
            continue
        if depth:
            depth -= 1
            continue
        rest = pattern[index + 1 :]
        # A quantified lookbehind ("(?<=a){2}b") leaves a rest that means something else.
        if not rest or rest[0] in "*+?{":
            return None
        try:
            # A group inside the lookbehind would renumber the rest's backreferences.
            if re.compile(pattern[: index + 1]).groups:
                return None
            return re.compile(rest)
        except re.error:
            return None
    return None


def _pattern_check(pattern: str) -> Any:
    # A value is what the pattern captures, so it must match the captured part in full.
    value_pattern = re.compile(_group_source(pattern))

    def check(value: str) -> str:
        if value_pattern.fullmatch(value) is None:
            raise ValueError(f"does not match the pattern {value_pattern.pattern!r}")
        return value

    return check


def compile_slot(name: str, spec: SlotSpec) -> SlotType:
    """Compile a slot or fact declaration."""
    return SlotType(name, spec)
