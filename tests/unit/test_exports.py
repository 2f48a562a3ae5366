"""The public API: `sopagent.__all__` is exactly what is promised and all of it exists."""

from __future__ import annotations

import sopagent

EXPECTED = [
    "Agent",
    "AuditSink",
    "Backend",
    "BackendAnswerError",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "Catalog",
    "CompiledPolicy",
    "Context",
    "DecisionError",
    "Effect",
    "JsonLinesSink",
    "MemorySink",
    "Npc",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyLoadError",
    "Recording",
    "Replay",
    "RuntimeFault",
    "ScriptedBackend",
    "Session",
    "SessionError",
    "SopError",
    "StructlogSink",
    "Turn",
    "Utterance",
    "__version__",
    "compile_policy",
    "decision",
    "embedded",
    "load_agent",
    "load_catalog",
    "load_policy",
    "replay",
]


def test_all_is_exactly_the_expected_sorted_list() -> None:
    """`__all__` lists exactly the public names, sorted, without duplicates."""
    assert sopagent.__all__ == EXPECTED
    assert sorted(sopagent.__all__) == sopagent.__all__


def test_every_exported_name_exists() -> None:
    """Every name in `__all__` is an attribute of the package."""
    missing = [name for name in sopagent.__all__ if not hasattr(sopagent, name)]
    assert missing == []


def test_star_import_gives_the_public_names() -> None:
    """`from sopagent import *` binds exactly the names of `__all__`."""
    namespace: dict[str, object] = {}
    exec("from sopagent import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(EXPECTED)


def test_error_hierarchy_and_exit_codes() -> None:
    """Authoring errors and runtime faults are two SopError families with their exit codes."""
    assert issubclass(sopagent.PolicyLoadError, sopagent.PolicyError)
    assert issubclass(sopagent.PolicyError, sopagent.SopError)
    for fault in (sopagent.BackendError, sopagent.DecisionError, sopagent.SessionError):
        assert issubclass(fault, sopagent.RuntimeFault)
    assert issubclass(sopagent.RuntimeFault, sopagent.SopError)
    assert (sopagent.SopError.exit_code, sopagent.PolicyError.exit_code) == (1, 2)
    assert sopagent.RuntimeFault.exit_code == 3


def test_version_is_the_package_version() -> None:
    """`__version__` matches the installed distribution's version."""
    from importlib.metadata import version  # noqa: PLC0415

    assert sopagent.__version__ == version("sopagent")
