"""A policy runs only the code it declares, and a catalog runs none at all.

Decision functions are looked up only among the ``@decision`` functions defined in the modules
a policy lists under ``decisions``; anything else it names (``os.system``, ``eval``, a function
of a module it did not declare) is refused before any import, and a standard library module
listed as a decision module is refused without being imported. Catalog lines are plain
text: placeholders are bare slot or fact names, and YAML tags that would construct objects
are refused while the file is read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sopagent import Catalog, compile_policy, load_catalog, load_policy
from sopagent.errors import PolicyError, PolicyLoadError
from tests.conftest import REFUND_POLICY

ROOT = REFUND_POLICY.parent.parent


def _refund(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = REFUND_POLICY.read_text(encoding="utf-8").replace("../", f"{ROOT}/")
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "policies" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _trap(tmp_path: Path) -> tuple[Path, Path]:
    """A module that leaves a marker file when it is imported, and the marker's path."""
    marker = tmp_path / "imported"
    module = tmp_path / "trap.py"
    module.write_text(
        "from pathlib import Path\n"
        "from sopagent import decision\n"
        f"Path({str(marker)!r}).write_text('yes')\n"
        "@decision(outcomes=['found', 'not_found'])\n"
        "def find_order(ctx):\n"
        "    return 'found'\n",
        encoding="utf-8",
    )
    return module, marker


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "subprocess.run", "__import__"])
def test_a_dotted_or_dunder_function_name_is_refused_at_load(tmp_path: Path, name: str) -> None:
    """`decide: os.system` is not an id: SOP010 at the name, when the file is read."""
    path = _refund(tmp_path, ("decide: find_order", f"decide: {name}"))
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    assert info.value.code == "SOP010"
    line = path.read_text(encoding="utf-8").splitlines().index(f"    decide: {name}") + 1
    assert info.value.problems[0].location.line == line


@pytest.mark.parametrize("name", ["system", "eval", "exec", "open", "getattr", "load_policy"])
def test_a_function_outside_the_declared_modules_is_refused(tmp_path: Path, name: str) -> None:
    """A builtin or library function's bare name is not a decision function of the policy."""
    path = _refund(tmp_path, ("decide: find_order", f"decide: {name}"))
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    assert any(name in p.message for p in info.value.problems)


def test_a_module_the_policy_does_not_declare_is_never_imported(tmp_path: Path) -> None:
    """A function of an undeclared module beside the policy is refused; the module never runs."""
    module, marker = _trap(tmp_path)
    (tmp_path / "policies" / "trap.py").parent.mkdir(exist_ok=True)
    module.rename(tmp_path / "policies" / "trap.py")
    path = _refund(tmp_path, ("decide: find_order", "decide: trap.find_order"))
    with pytest.raises(PolicyError):
        compile_policy(load_policy(path))
    path = _refund(tmp_path)
    compile_policy(load_policy(path))  # the real module runs, the trap beside it does not
    assert not marker.exists()


def test_only_a_declared_module_runs(tmp_path: Path) -> None:
    """Declaring the module is what makes it run: then, and only then, the marker appears."""
    module, marker = _trap(tmp_path)
    path = _refund(tmp_path, (f"  - {ROOT}/examples/support/decisions.py", f"  - {module}"))
    with pytest.raises(PolicyError):
        compile_policy(load_policy(path))  # it lacks the other functions; it did run
    assert marker.exists()


@pytest.mark.parametrize("module", ["this", "os", "os.path", "subprocess", "antigravity", "sys"])
def test_standard_library_modules_are_refused_before_import(tmp_path: Path, module: str) -> None:
    """`decisions: [this]` is SOP028 and `this` is never imported (a fresh interpreter)."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from sopagent import compile_policy, load_policy
        from sopagent.errors import PolicyError
        text = Path({str(REFUND_POLICY)!r}).read_text().replace("../", {f"{ROOT}/"!r})
        text = text.replace("  - {ROOT}/examples/support/decisions.py", "  - {module}")
        Path("p.yaml").write_text(text)
        before = set(sys.modules)
        try:
            compile_policy(load_policy("p.yaml"))
        except PolicyError as exc:
            print(sorted({{p.code for p in exc.problems}}))
        print({module.partition(".")[0]!r} in set(sys.modules) - before)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "SOP028" in lines[-2]
    assert lines[-1] == "False"


@pytest.mark.parametrize(
    "template",
    [
        "{order_id.__class__}",
        "{order_id.__init__.__globals__}",
        "{order_id[0]}",
        "{order_id!r}",
        "{0}",
        "{}",
        "{order_id:>{refund_amount}}",
        "{__import__}",
        "unbalanced {",
    ],
)
def test_catalog_placeholders_are_bare_names_only(template: str) -> None:
    """Attribute or index access, conversions, positional and nested fields are refused."""
    with pytest.raises(ValueError, match=r"placeholder|brace|Single|unmatched|expected"):
        Catalog.model_validate(
            {"sopagent": 1, "catalog": "c", "locale": "en", "responses": {"a": template}}
        )


def test_catalog_tags_never_construct_anything(tmp_path: Path) -> None:
    """A catalog line tagged to call a function is SOP002; the function never runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "c.yaml"
    path.write_text(
        "sopagent: 1\ncatalog: c\nlocale: en\nresponses:\n"
        f"  greet: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path"
        f" ['{marker}']]\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyLoadError) as info:
        load_catalog(path)
    assert info.value.code == "SOP002"
    assert not marker.exists()


def test_a_rendered_line_is_its_text_with_values_only(tmp_path: Path) -> None:
    """A value that looks like a format field is said as it is, never formatted again."""
    catalog = Catalog.model_validate(
        {"sopagent": 1, "catalog": "c", "locale": "en", "responses": {"a": "Order {order_id}."}}
    )
    text = catalog.responses["a"].text
    assert text.format_map({"order_id": "{order_id.__class__}"}) == "Order {order_id.__class__}."
