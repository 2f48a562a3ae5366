"""The YAML reader: locations, YAML 1.2 booleans, and hostile or broken files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sopagent._yaml import read_yaml
from sopagent.errors import Location, PolicyLoadError


def load_error(text: str, name: str = "f.yaml") -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as info:
        read_yaml(name, text=text)
    return info.value


def test_value_locations_are_line_and_column_of_the_value() -> None:
    """Every value remembers file:line:col of where it starts, 1-based."""
    doc = read_yaml("p.yaml", text="name: demo\nstates:\n  start:\n    say: [hi, there]\n")
    assert doc.locate(("name",)) == Location("p.yaml", 1, 7)
    assert doc.locate(("states", "start")) == Location("p.yaml", 4, 5)
    assert doc.locate(("states", "start", "say", 1)) == Location("p.yaml", 4, 15)
    assert str(doc.locate(("states", "start", "say", 0))) == "p.yaml:4:11"


def test_key_locations_point_at_the_key() -> None:
    """locate_key gives the position of the mapping key, not of its value."""
    doc = read_yaml("p.yaml", text="name: demo\nstates:\n  start:\n    say: hi\n")
    assert doc.locate_key(("states",)) == Location("p.yaml", 2, 1)
    assert doc.locate_key(("states", "start")) == Location("p.yaml", 3, 3)
    assert doc.locate_key(("states", "start", "say")) == Location("p.yaml", 4, 5)


def test_unknown_paths_fall_back_to_the_nearest_ancestor() -> None:
    """A path that does not exist is located at its deepest existing ancestor."""
    doc = read_yaml("p.yaml", text="a:\n  b: 1\n")
    assert doc.locate(("a", "missing", "deeper")) == Location("p.yaml", 2, 3)
    assert doc.locate(("nothing",)) == Location("p.yaml", 1, 1)


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "NO", "On", "OFF"])
def test_yaml11_booleans_stay_strings(word: str) -> None:
    """yes/no/on/off are plain strings, not booleans, so ids like `no` survive."""
    doc = read_yaml("f.yaml", text=f"value: {word}\n{word}: key\n")
    assert doc.data == {"value": word, word: "key"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [("true", True), ("false", False), ("True", True), ("FALSE", False)],
)
def test_true_and_false_are_booleans(word: str, expected: bool) -> None:
    """Only true/false (any of YAML's three spellings) become booleans."""
    doc = read_yaml("f.yaml", text=f"value: {word}\n")
    assert doc.data["value"] is expected


def test_scalars_are_typed_like_yaml_core() -> None:
    """Integers, floats, null and quoted strings keep their YAML types; dates stay text."""
    doc = read_yaml("f.yaml", text="i: 1_000\nf: 2.5\nn: ~\ns: '12'\nd: 2024-05-01\n")
    assert doc.data == {"i": 1000, "f": 2.5, "n": None, "s": "12", "d": "2024-05-01"}


def test_duplicate_key_is_reported_at_the_second_key() -> None:
    """A repeated key is SOP003 at the repeated key's own line and column."""
    error = load_error("a: 1\nb:\n  c: 2\n  c: 3\n")
    assert error.code == "SOP003"
    assert [str(p.location) for p in error.problems] == ["f.yaml:4:3"]
    assert "'c'" in error.problems[0].message


def test_every_duplicate_key_is_reported() -> None:
    """All duplicates of a file are reported together, sorted by position."""
    error = load_error("a: 1\na: 2\nb:\n  x: 1\n  x: 1\n")
    assert [(p.code, str(p.location)) for p in error.problems] == [
        ("SOP003", "f.yaml:2:1"),
        ("SOP003", "f.yaml:5:3"),
    ]


def test_merge_keys_are_rejected() -> None:
    """`<<: *anchor` is SOP002 at the merge key."""
    error = load_error("base: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n")
    assert error.code == "SOP002"
    assert str(error.problems[0].location) == "f.yaml:3:3"


def test_python_tags_on_scalars_are_rejected() -> None:
    """A python tag on a scalar is SOP002 at the tagged value, never constructed."""
    error = load_error("a: 1\nb: !!python/object:os.system x\n")
    assert error.code == "SOP002"
    assert str(error.problems[0].location) == "f.yaml:2:4"


@pytest.mark.parametrize(
    "text",
    [
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/object:builtins.dict {x: 1}\n",
        "a: !custom [1, 2]\n",
    ],
)
def test_tags_on_collections_are_rejected(text: str) -> None:
    """A non-core tag on a list or mapping is SOP002 too, not silently dropped."""
    error = load_error(text)
    assert error.code == "SOP002"
    assert str(error.problems[0].location) == "f.yaml:1:4"


def test_alias_bomb_is_rejected_quickly() -> None:
    """A billion-laughs document is SOP004 within seconds instead of expanding."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    start = time.perf_counter()
    error = load_error("\n".join(lines) + "\n")
    elapsed = time.perf_counter() - start
    assert error.code == "SOP004"
    assert "alias" in error.problems[0].message
    assert elapsed < 10


def test_recursive_alias_is_rejected() -> None:
    """An alias that contains itself is reported (SOP004), not followed forever."""
    error = load_error("a: &a [*a]\n")
    assert error.code == "SOP004"


def test_too_deep_nesting_is_rejected() -> None:
    """More than 64 nested levels is SOP004 at the first level too deep."""
    error = load_error("[" * 100 + "]" * 100)
    assert error.code == "SOP004"
    assert "deeper than 64" in error.problems[0].message
    assert error.problems[0].location == Location("f.yaml", 1, 66)


def test_very_deep_nesting_is_a_load_error_not_a_crash() -> None:
    """Thousands of nested brackets are reported as a load error, not a RecursionError."""
    error = load_error("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error.code in {"SOP001", "SOP004"}


def test_invalid_utf8_is_reported_with_line_and_column(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are SOP001 at the line and column of the first bad byte."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: 1\nbb: \xff\xfe\n")
    with pytest.raises(PolicyLoadError) as info:
        read_yaml(path)
    assert info.value.code == "SOP001"
    assert info.value.problems[0].location == Location(str(path), 2, 5)
    assert "UTF-8" in info.value.problems[0].message


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    """A file that cannot be read is SOP001 naming the file."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyLoadError) as info:
        read_yaml(path)
    assert info.value.code == "SOP001"
    assert info.value.problems[0].location == Location(str(path))


def test_syntax_error_location() -> None:
    """A YAML syntax error is SOP001 at the position the parser stopped."""
    error = load_error("a: 1\nb: [1, 2\nc: 3\n")
    assert error.code == "SOP001"
    assert str(error.problems[0].location) == "f.yaml:3:2"
    assert error.problems[0].message.startswith("invalid YAML")


def test_mapping_value_error_location() -> None:
    """`a: b: c` is SOP001 at the second colon's line and column."""
    error = load_error("x: 1\na: b: c\n")
    assert error.code == "SOP001"
    assert str(error.problems[0].location) == "f.yaml:2:5"


def test_multiple_documents_are_rejected() -> None:
    """A second YAML document is SOP001 at the `---` that starts it."""
    error = load_error("a: 1\n---\nb: 2\n")
    assert error.code == "SOP001"
    assert "one YAML document" in error.problems[0].message
    assert error.problems[0].location.line == 2


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_has_no_data(text: str) -> None:
    """An empty document reads as None, located at the start of the file."""
    doc = read_yaml("f.yaml", text=text)
    assert doc.data is None
    assert doc.locate(()).file == "f.yaml"


def test_problem_renders_as_file_line_col_code_message() -> None:
    """A problem prints as `file:line:col: CODE message (hint: ...)`."""
    error = load_error("a: 1\na: 2\n")
    assert str(error) == (
        "f.yaml:2:1: SOP003 duplicate key 'a' (hint: each key may appear once in a mapping)"
    )
