"""Slot types: finding values in text, validating them, and rendering them for users."""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from sopagent._slots import Found, SlotType, _probe, clean_text, compile_slot
from sopagent.policy import Slot

_SLOT = TypeAdapter(Slot)


def slot(**spec: Any) -> SlotType:
    return compile_slot("x", _SLOT.validate_python(spec))


def find(kind: SlotType, text: str) -> Found | None:
    return kind.find(text, [])


def value_of(kind: SlotType, text: str) -> Any:
    found = find(kind, text)
    assert found is not None, f"nothing found in {text!r}"
    assert found.error is None, found.error
    return found.value


# --- string ---------------------------------------------------------------------------------


def test_string_pattern_with_lookarounds_finds_exact_digits() -> None:
    """A patterned string takes the match and leaves longer digit runs alone."""
    order = slot(type="string", pattern=r"(?<!\d)(\d{5})(?!\d)")
    assert value_of(order, "my order is 10001, thanks") == "10001"
    assert find(order, "123456") is None
    assert find(order, "1234") is None


def test_string_pattern_group_is_the_value() -> None:
    """With a capture group, the group is the value and it validates."""
    order = slot(type="string", pattern=r"order #?(\d{5})")
    found = find(order, "it's order #10001 I think")
    assert found is not None
    assert found.value == "10001"
    assert found.error is None
    assert found.span == (12, 17)


def test_string_span_is_where_the_value_was() -> None:
    """The span of a found value lets later slots skip it."""
    code = slot(type="string", pattern=r"(?<!\d)(\d{6})(?!\d)")
    found = find(code, "code 482913 please")
    assert found is not None
    assert found.span == (5, 11)
    assert code.find("code 482913 please", [(5, 11)]) is None


def test_string_later_match_is_found_when_the_first_is_taken() -> None:
    """Every match counts, from the first on; a lookbehind sees the text before it."""
    code = slot(type="string", pattern=r"(?<!\d)(\d{6})(?!\d)")
    found = code.find("code 482913 or 112233", [(5, 11)])
    assert found is not None
    assert (found.value, found.span) == ("112233", (15, 21))
    assert code.find("1482913 or 112233", []) == Found("112233", None, (11, 17))


@pytest.mark.parametrize(
    "pattern",
    [
        r"(?<!\d)(\d{5})(?!\d)",
        r"(?<![A-Z])([A-Z]{2}-\d{3})",
        r"(?<=#)(\w+)",
        r"(?<!\()(\d)|x\d",
        r"(?<![]a])(b+)",
    ],
)
@given(text=st.text(alphabet="0123456789 #()]abAB-xZ", max_size=24))
def test_string_probe_finds_what_the_pattern_finds(pattern: str, text: str) -> None:
    """The probe (the pattern without its leading lookbehind) never hides a match."""
    kind = slot(type="string", pattern=pattern)
    assert kind._probe is not None
    plain = compile_slot("y", _SLOT.validate_python({"type": "string", "pattern": pattern}))
    plain._probe = None
    for taken in ([], [(0, 3)]):
        assert kind.find(text, list(taken)) == plain.find(text, list(taken))


def test_string_probe_only_for_a_leading_lookbehind_without_groups() -> None:
    """No probe where dropping the lookbehind could change what the rest means."""
    assert slot(type="string", pattern=r"\d{5}")._probe is None
    assert _probe(r"(?<=(a))(b)(c)\2") is None
    assert _probe(r"(?<!a){1,3}(b)") is None  # the rest alone would match "{1,3}b"
    assert _probe(r"(?<=a)*(b)") is None
    probe = slot(type="string", pattern=r"(?<!\d)(\d{5})")._probe
    assert probe is not None
    assert probe.pattern == r"(\d{5})"


def test_string_normalize_before_validation() -> None:
    """`normalize: upper` turns the text into the form the pattern validates."""
    ref = slot(type="string", pattern=r"[A-Za-z]{2}-\d{3}", normalize="upper")
    assert value_of(ref, "ref ab-123") == "AB-123"
    digits = slot(type="string", normalize="digits", min_length=3)
    assert digits.validate("1-2-3") == "123"


def test_string_length_bounds() -> None:
    """Strings shorter or longer than the bounds are invalid."""
    name = slot(type="string", min_length=2, max_length=4)
    assert name.validate("abc") == "abc"
    for bad in ("a", "abcde"):
        with pytest.raises(ValueError, match="at"):
            name.validate(bad)


def test_string_without_pattern_is_never_extracted() -> None:
    """A string slot without a pattern is never found in free text."""
    assert find(slot(type="string"), "anything at all") is None


# --- enum -----------------------------------------------------------------------------------


SIZES = {"type": "enum", "values": ["small", "large"], "synonyms": {"large": ["big", "huge"]}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("small please", "small"), ("a BIG one", "large"), ("huge", "large"), ("Large", "large")],
)
def test_enum_values_and_synonyms(text: str, expected: str) -> None:
    """An enum is found by its value or a synonym, case-insensitively."""
    assert value_of(slot(**SIZES), text) == expected


def test_enum_underscore_value_matches_spaced_words() -> None:
    """A value with an underscore is also found written with a space."""
    color = slot(type="enum", values=["dark_blue", "red"])
    assert value_of(color, "the dark blue one") == "dark_blue"


@pytest.mark.parametrize("text", ["small or big", "medium", "smaller"])
def test_enum_ambiguous_or_absent_is_left_to_the_model(text: str) -> None:
    """Two different values, or none as a whole word, give nothing: the model decides."""
    sizes = slot(**SIZES)
    assert find(sizes, text) is None
    assert sizes.needs_model


def test_enum_rejects_unknown_value() -> None:
    """Validation of an enum accepts only its values."""
    with pytest.raises(ValueError, match="small"):
        slot(**SIZES).validate("medium")


# --- integer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("I need 3", 3), ("three of them", 3), ("Twelve", 12), ("1,200 units", 1200), ("-4", -4)],
)
def test_integer_digits_words_and_thousands(text: str, expected: int) -> None:
    """Integers are found as digits, with thousands separators, or as small number words."""
    assert value_of(slot(type="integer"), text) == expected


def test_integer_first_number_wins() -> None:
    """The first number in the text, digits or word, is the candidate."""
    assert value_of(slot(type="integer"), "two or 5") == 2
    assert value_of(slot(type="integer"), "5 or two") == 5


@pytest.mark.parametrize(("text", "error"), [("42", "less than or equal to 10"), ("0", "greater")])
def test_integer_bounds(text: str, error: str) -> None:
    """A number outside min/max is found but invalid, with the reason."""
    found = find(slot(type="integer", min=1, max=10), text)
    assert found is not None
    assert found.error is not None
    assert error in found.error


def test_integer_ignores_decimals() -> None:
    """A decimal number is not an integer."""
    assert find(slot(type="integer"), "2.5") is None


def test_integer_is_strict() -> None:
    """Integers validate strictly: text and floats are not coerced."""
    kind = slot(type="integer")
    for bad in ("3", 3.0, True):
        with pytest.raises(ValueError):  # noqa: PT011 (pydantic's message varies by type)
            kind.validate(bad)


# --- money and decimal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$12.50", "12.50"),
        ("refund $ 7", "7"),
        ("12 dollars", "12"),
        ("about 30 bucks", "30"),
        ("1,200", "1200"),
        ("$1,200.50 please", "1200.50"),
        ("it was 99.99", "99.99"),
    ],
)
def test_money_forms(text: str, expected: str) -> None:
    """Money is found with a sign, with a currency word, or as a bare number with commas."""
    assert value_of(slot(type="money"), text) == Decimal(expected)


def test_money_more_than_two_places_is_invalid() -> None:
    """An amount with more than two decimal places is invalid."""
    found = find(slot(type="money"), "$12.505")
    assert found is not None
    assert found.error is not None
    assert "decimal places" in found.error


def test_money_bounds() -> None:
    """Amounts outside min/max are invalid."""
    capped = slot(type="money", min=0, max=100)
    assert value_of(capped, "$100") == Decimal(100)
    found = find(capped, "$150")
    assert found is not None
    assert found.error is not None


@pytest.mark.parametrize("text", ["€20", "20 euros"])
def test_money_in_another_currency_is_not_taken(text: str) -> None:
    """An amount written in another currency is not read as the slot's currency."""
    found = find(slot(type="money", currency="USD"), text)
    assert found is None or found.error is not None


def test_money_render_with_currency_sign() -> None:
    """Money renders with its currency sign and two places, or the code when it has no sign."""
    usd = slot(type="money")
    assert usd.render(Decimal("1200")) == "$1,200.00"
    assert usd.render(Decimal("45.5")) == "$45.50"
    assert slot(type="money", currency="EUR").render(Decimal(3)) == "€3.00"
    assert slot(type="money", currency="GBP").render(Decimal("0.5")) == "£0.50"
    assert slot(type="money", currency="CHF").render(Decimal(3)) == "3.00 CHF"


def test_money_json_round_trip() -> None:
    """Money is stored as a string and restored as the same Decimal."""
    usd = slot(type="money")
    stored = usd.to_json(usd.validate("249.99"))
    assert stored == "249.99"
    assert usd.from_json(stored) == Decimal("249.99")


def test_decimal_places_bounds_and_render() -> None:
    """Decimals obey their places and bounds and render with exactly that many places."""
    ratio = slot(type="decimal", places=1, min=0, max=5000)
    assert value_of(ratio, "about 2.5") == Decimal("2.5")
    assert value_of(ratio, "1,234.5") == Decimal("1234.5")
    too_precise = find(ratio, "2.55")
    assert too_precise is not None
    assert too_precise.error is not None
    assert ratio.render(Decimal("1234.5")) == "1,234.5"
    assert ratio.render(Decimal(2)) == "2.0"


# --- boolean --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", True), ("Yeah, sure", True), ("ok", True), ("no", False), ("nope", False)],
)
def test_boolean_yes_and_no(text: str, expected: bool) -> None:
    """Yes-words give True and no-words give False."""
    assert value_of(slot(type="boolean"), text) is expected


@pytest.mark.parametrize("text", ["yes and no", "maybe", ""])
def test_boolean_mixed_or_absent_is_nothing(text: str) -> None:
    """Text with both yes and no, or neither, gives no value."""
    assert find(slot(type="boolean"), text) is None


def test_boolean_render() -> None:
    """Booleans render as yes and no."""
    flag = slot(type="boolean")
    assert (flag.render(True), flag.render(False)) == ("yes", "no")


# --- date -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on 2024-05-01", dt.date(2024, 5, 1)),
        ("05/01/2024", dt.date(2024, 5, 1)),
        ("12/31/2023 it was", dt.date(2023, 12, 31)),
    ],
)
def test_dates_iso_and_us(text: str, expected: dt.date) -> None:
    """ISO and US month/day/year dates are found."""
    assert value_of(slot(type="date"), text) == expected


def test_relative_dates() -> None:
    """`today` and `yesterday` are resolved against the current date."""
    dates = slot(type="date")
    before = dt.date.today()
    today = value_of(dates, "it arrived today")
    yesterday = value_of(dates, "Yesterday")
    after = dt.date.today()
    assert today in {before, after}
    assert yesterday in {before - dt.timedelta(days=1), after - dt.timedelta(days=1)}


@pytest.mark.parametrize("text", ["2024-13-01", "2023-02-30", "13/45/2024"])
def test_impossible_dates_are_invalid(text: str) -> None:
    """A date-shaped text that is no real date is found but invalid."""
    found = find(slot(type="date"), text)
    assert found is not None
    assert found.error is not None


def test_date_json_and_render() -> None:
    """Dates are stored and shown in ISO form."""
    dates = slot(type="date")
    day = dates.validate("2024-05-01")
    assert dates.to_json(day) == "2024-05-01"
    assert dates.from_json("2024-05-01") == day
    assert dates.render(day) == "2024-05-01"


# --- rendering of text ----------------------------------------------------------------------


_UNSAFE = {"Cc", "Cf", "Co", "Cs", "Cn"}


@pytest.mark.parametrize(
    "value",
    [
        "Ann\u202eeb",  # right-to-left override
        "Ann\u2066x\u2069",  # isolates
        "An\u200bn",  # zero-width space
        "Ann\x00\x07\x1b[31m",  # NUL, bell, ANSI escape
        "Ann\r\nBcc: x",  # line breaks
    ],
)
def test_string_render_strips_control_and_bidi(value: str) -> None:
    """Rendered strings carry no control, format or bidi characters, and keep the visible text."""
    rendered = slot(type="string").render(value)
    assert not any(unicodedata.category(ch) in _UNSAFE for ch in rendered)
    visible = "".join(ch for ch in value if unicodedata.category(ch) not in _UNSAFE)
    assert "".join(rendered.split()) == "".join(visible.split())


def test_string_render_caps_length() -> None:
    """A rendered string is at most the slot's max_length characters."""
    short = slot(type="string", max_length=5)
    assert short.render("abcdefghij") == "abcde"
    assert clean_text("x" * 50, 10) == "x" * 10


def test_enum_and_integer_render() -> None:
    """Enums render with spaces for underscores; integers as digits."""
    assert slot(type="enum", values=["dark_blue"]).render("dark_blue") == "dark blue"
    assert slot(type="integer").render(1200) == "1200"
