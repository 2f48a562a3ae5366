"""Loaders under hostile input: whatever the bytes, a typed error with a location or a policy.

Random text and bytes, random YAML documents, and shipped policies and catalogs after byte
flips, deleted, duplicated and swapped lines, truncations and inserted hostile tokens go
through everything `load_agent` and `sopagent check` do with a file: read, parse, validate,
load the catalog, import the declared decision modules, check and compile. Anything but a
`PolicyError` whose problems all name the file is a crash of the loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import ROOT, SHIPPED, mutated_documents, yaml_values

from sopagent import compile_policy, load_catalog, load_policy
from sopagent._analysis import check_paths
from sopagent.errors import PolicyError

FUZZ = settings(
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _located(error: PolicyError, path: Path) -> None:
    assert error.problems
    for problem in error.problems:
        assert problem.location.file
        assert problem.code.startswith("SOP")
        if problem.location.file == str(path) and problem.code != "SOP001":
            assert problem.location.line >= 1
            assert problem.location.column >= 1


def _load_everything(path: Path) -> None:
    """Load ``path`` as a policy (then compile it) and as a catalog; only PolicyError may leave."""
    try:
        compile_policy(load_policy(path))
    except PolicyError as exc:
        _located(exc, path)
    try:
        load_catalog(path)
    except PolicyError as exc:
        _located(exc, path)
    report = check_paths([str(path)])
    assert report.findings or report.policies


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "policies" / "fuzzed.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


@FUZZ
@given(text=st.text(max_size=400))
def test_random_text_is_a_policy_error_or_loads(tmp_path: Path, text: str) -> None:
    """Arbitrary Unicode text never raises anything but PolicyError."""
    _load_everything(_write(tmp_path, text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_are_a_policy_error_or_load(tmp_path: Path, data: bytes) -> None:
    """Arbitrary bytes (invalid UTF-8, NULs, BOMs) never raise anything but PolicyError."""
    _load_everything(_write(tmp_path, data))


@FUZZ
@given(value=yaml_values())
def test_random_yaml_documents_are_a_policy_error_or_load(tmp_path: Path, value: Any) -> None:
    """Arbitrary well-formed YAML of any shape fails validation with located problems."""
    text = yaml.safe_dump(value, allow_unicode=True)
    _load_everything(_write(tmp_path, text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(value=yaml_values(), source=st.sampled_from(SHIPPED), key=st.text(max_size=10))
def test_shipped_documents_with_a_key_replaced(
    tmp_path: Path, value: Any, source: Path, key: str
) -> None:
    """A shipped document with one top-level key's value swapped for arbitrary data."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    names = sorted(data)
    data[names[len(key) % len(names)]] = value
    if key:
        data[key] = value
    if "catalog" in data and isinstance(data["catalog"], str):
        data["catalog"] = str(ROOT / "catalogs" / Path(data["catalog"]).name)
    data.pop("decisions", None)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    _load_everything(_write(tmp_path, text.encode("utf-8", "surrogatepass")))


@settings(FUZZ, max_examples=300)
@given(data=mutated_documents())
def test_mutated_shipped_documents_are_a_policy_error_or_load(tmp_path: Path, data: bytes) -> None:
    """Shipped policies and catalogs, mutated, never raise anything but PolicyError."""
    _load_everything(_write(tmp_path, data))
