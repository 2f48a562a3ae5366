"""Hostile policy files: each is refused with a typed, located error, fast and without blocking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sopagent import load_catalog, load_policy
from sopagent._analysis import check_paths
from sopagent._yaml import read_yaml
from sopagent.errors import Location, PolicyError, PolicyLoadError

ROOT = Path(__file__).resolve().parents[2]
REFUND = ROOT / "policies" / "refund.yaml"


def _error(path: Path) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    return info.value


def _text_error(text: str) -> PolicyLoadError:
    with pytest.raises(PolicyLoadError) as info:
        read_yaml("f.yaml", text=text)
    return info.value


# --- files that are not regular files ----------------------------------------------------------


def test_a_directory_is_refused(tmp_path: Path) -> None:
    """A directory given as a policy is SOP001 'a directory', naming it."""
    error = _error(tmp_path)
    assert error.code == "SOP001"
    assert "directory" in error.problems[0].message
    assert error.problems[0].location == Location(str(tmp_path))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO nobody writes to is refused at once by load and by `sopagent check`."""
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    script = textwrap.dedent(
        f"""
        from sopagent import load_policy
        from sopagent._analysis import check_paths
        from sopagent.errors import PolicyLoadError
        try:
            load_policy({str(fifo)!r})
        except PolicyLoadError as exc:
            print(exc.code, exc.problems[0].message)
        print(len(check_paths([{str(fifo)!r}]).findings))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["SOP001 cannot read file: not a regular file", "1"]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused(device: str) -> None:
    """Character devices (endless or empty) are refused before anything is read."""
    if not Path(device).exists():
        pytest.skip(f"no {device}")
    error = _error(Path(device))
    assert error.code == "SOP001"
    assert "not a regular file" in error.problems[0].message


def test_symlinks_to_devices_and_directories_are_refused(tmp_path: Path) -> None:
    """A link is followed, and what it points at is refused like the thing itself."""
    to_zero = tmp_path / "zero.yaml"
    to_zero.symlink_to("/dev/zero")
    to_dir = tmp_path / "dir.yaml"
    to_dir.symlink_to(tmp_path)
    assert "not a regular file" in _error(to_zero).problems[0].message
    assert "directory" in _error(to_dir).problems[0].message


def test_a_symlink_to_a_policy_loads(tmp_path: Path) -> None:
    """A link to a regular file is fine: symlinked policy trees keep working."""
    link = tmp_path / "refund.yaml"
    link.symlink_to(REFUND)
    assert load_policy(link).name == "refund"


def test_a_dangling_symlink_is_refused(tmp_path: Path) -> None:
    """A link to nothing is SOP001 cannot read."""
    link = tmp_path / "gone.yaml"
    link.symlink_to(tmp_path / "missing.yaml")
    assert "cannot read file" in _error(link).problems[0].message


def test_a_catalog_that_is_a_device_is_refused(tmp_path: Path) -> None:
    """A policy whose catalog is /dev/zero fails to load its catalog, without reading it."""
    with pytest.raises(PolicyLoadError) as info:
        load_catalog("/dev/zero")
    assert info.value.code == "SOP001"


def test_a_decision_module_that_is_a_fifo_does_not_block_check(tmp_path: Path) -> None:
    """`sopagent check` on a policy naming a FIFO as its decision module does not block."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs")
    policy = tmp_path / "p.yaml"
    policy.write_text(
        REFUND.read_text(encoding="utf-8")
        .replace("../catalogs/", f"{ROOT}/catalogs/")
        .replace("../examples/", f"{tmp_path}/"),
        encoding="utf-8",
    )
    os.mkfifo(tmp_path / "refund_decisions.py")
    script = f"from sopagent._analysis import check_paths; check_paths([{str(policy)!r}])"
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


# --- contents --------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A 9 MB file is SOP001 'larger than', whatever it holds."""
    path = tmp_path / "big.yaml"
    with path.open("wb") as out:
        out.truncate(9 * 1024 * 1024)
    error = _error(path)
    assert error.code == "SOP001"
    assert "larger than" in error.problems[0].message


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    """A byte order mark at the start of a policy is ignored, as editors write it."""
    path = tmp_path / "policies" / "bom.yaml"
    path.parent.mkdir()
    text = REFUND.read_text(encoding="utf-8").replace("../", f"{ROOT}/")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_policy(path).name == "refund"


def test_a_nul_byte_is_located_where_it_is() -> None:
    """A NUL is SOP001 at its own line and column, not at the start of the file."""
    error = _text_error("a: 1\nbé: x\x00y\n")
    assert error.code == "SOP001"
    assert error.problems[0].location == Location("f.yaml", 2, 6)
    assert "U+0000" in error.problems[0].message


def test_invalid_utf8_in_a_policy_is_located(tmp_path: Path) -> None:
    """A lone continuation byte is SOP001 at its line and column."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"sopagent: 1\nname: \x80oops\n")
    assert _error(path).problems[0].location == Location(str(path), 2, 7)


def test_a_flat_document_of_millions_of_values_is_refused_early() -> None:
    """Four million list items stop at the value limit, not after building them all."""
    error = _text_error("[" + "1," * 4_000_000 + "1]")
    assert error.code == "SOP004"
    assert "more than 500000 values" in error.problems[0].message


def test_a_huge_document_stays_within_a_memory_limit() -> None:
    """Parsing the largest document allowed fits in 1 GiB of address space (a subprocess)."""
    script = textwrap.dedent(
        """
        import resource
        limit = 1024 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from sopagent._yaml import read_yaml
        from sopagent.errors import PolicyLoadError
        for text in ("[" + "1," * 4_000_000 + "1]", "a: " + "x" * 8_000_000,
                     "".join(f"k{i}: [a, b]\\n" for i in range(400_000))):
            try:
                read_yaml("f.yaml", text=text)
                print("loaded")
            except PolicyLoadError as exc:
                print(exc.code)
        """
    )
    if sys.platform != "linux":
        pytest.skip("RLIMIT_AS is enforced on Linux")
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SOP004", "loaded", "SOP004"]


def test_a_billion_laughs_bomb_is_refused_without_expanding() -> None:
    """Nested aliases that expand to a billion values are SOP004 at the alias past the limit."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    error = _text_error("\n".join(lines) + "\n")
    assert error.code == "SOP004"
    assert error.problems[0].location.line == 6


def test_an_alias_chain_cannot_nest_past_the_depth_limit() -> None:
    """Aliases that each wrap the last one are as deep as written out, and refused so."""
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 80)]
    error = _text_error("\n".join(lines) + "\n")
    assert error.code == "SOP004"
    assert "deeper than 64" in error.problems[0].message


def test_an_undefined_alias_is_located() -> None:
    """`*nothing` is SOP001 at the alias."""
    error = _text_error("a: 1\nb: *nothing\n")
    assert error.code == "SOP001"
    assert error.problems[0].location == Location("f.yaml", 2, 4)


def test_an_alias_to_a_scalar_reads_as_its_value() -> None:
    """Plain anchors and aliases of values still work."""
    doc = read_yaml("f.yaml", text="a: &x hello\nb: *x\nc: &l [1, 2]\nd: *l\n")
    assert doc.data == {"a": "hello", "b": "hello", "c": [1, 2], "d": [1, 2]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes: 1\nno: 2\non: 3\noff: 4\n", {"yes": 1, "no": 2, "on": 3, "off": 4}),
        ("a: 010\nb: 1:30\nc: 190:20:30.15\n", {"a": "010", "b": "1:30", "c": "190:20:30.15"}),
        ("010: a\n1:30: b\n", {"010": "a", "1:30": "b"}),
        ("1: a\n2.5: b\nnull: c\ntrue: d\n", {1: "a", "2.5": "b", "null": "c", "true": "d"}),
        ("a: .inf\nb: 0x1F\nc: 1e999\n", {"a": ".inf", "b": 31, "c": "1e999"}),
    ],
)
def test_yaml11_scalars_as_ids_stay_what_was_written(text: str, expected: object) -> None:
    """YAML 1.1 booleans, octals and sexagesimals never turn into other values silently."""
    assert read_yaml("f.yaml", text=text).data == expected


def test_yaml11_words_as_intent_ids_load(tmp_path: Path) -> None:
    """Intents and states named yes, no, on and off load as those names."""
    text = REFUND.read_text(encoding="utf-8").replace("../", f"{ROOT}/")
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("  start_over:\n", "  yes:\n", 1), encoding="utf-8")
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        pytest.fail(str(exc))
    assert "yes" in policy.intents or "yes" in policy.states


@pytest.mark.parametrize("word", ["010", "1:30", "0x1F"])
def test_numeric_looking_ids_are_refused_as_ids(tmp_path: Path, word: str) -> None:
    """An intent id written 010, 1:30 or 0x1F is SOP010 at the id, not a crash."""
    text = REFUND.read_text(encoding="utf-8").replace("../", f"{ROOT}/")
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("intents:\n", f"intents:\n  {word}:\n    description: x\n", 1))
    error = _error(path)
    assert {p.code for p in error.problems} <= {"SOP010"}
    assert all(p.location.line > 0 for p in error.problems)


def test_non_string_keys_are_reported_at_the_key(tmp_path: Path) -> None:
    """An integer intent id is a located SOP010, not a TypeError in validation."""
    text = REFUND.read_text(encoding="utf-8").replace("../", f"{ROOT}/")
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("intents:\n", "intents:\n  42:\n    description: x\n", 1))
    error = _error(path)
    assert error.code == "SOP010"
    assert all(p.location.line > 0 for p in error.problems)


def test_a_collection_as_a_key_is_reported_and_its_marks_do_not_leak() -> None:
    """`? [a, b]` is SOP002; locations of the real values are unchanged by it."""
    error = _text_error("x: 1\n? [a, b]\n: 2\n")
    assert error.code == "SOP002"
    assert error.problems[0].location == Location("f.yaml", 2, 3)


def test_duplicate_keys_everywhere_are_bounded() -> None:
    """A hundred thousand duplicate keys report at most a hundred problems."""
    error = _text_error("a: 1\n" * 100_000)
    assert error.code == "SOP003"
    assert len(error.problems) == 100


def test_python_tags_never_execute(tmp_path: Path) -> None:
    """A python/object/apply tag that would create a file is SOP002; the file never appears."""
    marker = tmp_path / "executed"
    for tag in ("!!python/object/apply:os.system", "!!python/object/apply:subprocess.call"):
        path = tmp_path / "p.yaml"
        path.write_text(f"sopagent: 1\nname: !{tag[1:]} [['touch', '{marker}']]\n")
        error = _error(path)
        assert error.code == "SOP002"
        assert error.problems[0].location.line == 2
    assert not marker.exists()


def test_check_reports_every_hostile_file_without_raising(tmp_path: Path) -> None:
    """`check_paths` over directories, devices and broken files gives findings, no exception."""
    broken = tmp_path / "broken.yaml"
    broken.write_bytes(b"\xff\xfe\x00")
    empty = tmp_path / "empty"
    empty.mkdir()
    report = check_paths([str(empty), "/dev/zero", str(broken), str(tmp_path / "none")])
    assert len(report.findings) == 4
    assert {f.code for f in report.findings} == {"SOP001"}
