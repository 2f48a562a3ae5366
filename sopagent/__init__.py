"""sopagent: conversational agents that follow standard operating procedures exactly.

The pipeline: `load_policy` (YAML -> `Policy`), `check_policy` (cross references),
`compile_policy` (-> a state machine built on transitions), `Agent.respond` (one constrained
model call per turn at most), and an audit event per turn. `load_agent` does all of it.
`Npc` runs one game character on a shared agent: frame budgets, save/load, `replay`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from sopagent._agent import Agent
    from sopagent._compile import CompiledPolicy, compile_policy
    from sopagent._load import load_catalog, load_policy
    from sopagent._npc import Npc, Recording, Replay, replay
    from sopagent.audit import AuditSink, JsonLinesSink, MemorySink, StructlogSink
    from sopagent.backends import Backend
    from sopagent.backends._scripted import ScriptedBackend
    from sopagent.backends.llamacpp import LlamaCppBackend
    from sopagent.decisions import Context, Outcome, decision
    from sopagent.errors import (
        BackendAnswerError,
        BackendError,
        BackendTimeout,
        BackendUnavailable,
        DecisionError,
        PolicyError,
        PolicyLoadError,
        RuntimeFault,
        SessionError,
        SopError,
    )
    from sopagent.policy import Catalog, Policy
    from sopagent.session import Effect, Session, Turn, Utterance

# Where each public name lives. They are imported on first use, so that `import sopagent`
# costs nothing until something is used, and a decision module importing `decision` does not
# load the agent, the compiler or pydantic's policy models.
_HOME = {
    "Agent": "sopagent._agent",
    "CompiledPolicy": "sopagent._compile",
    "compile_policy": "sopagent._compile",
    "load_catalog": "sopagent._load",
    "load_policy": "sopagent._load",
    "Npc": "sopagent._npc",
    "Recording": "sopagent._npc",
    "Replay": "sopagent._npc",
    "replay": "sopagent._npc",
    "AuditSink": "sopagent.audit",
    "JsonLinesSink": "sopagent.audit",
    "MemorySink": "sopagent.audit",
    "StructlogSink": "sopagent.audit",
    "Backend": "sopagent.backends",
    "ScriptedBackend": "sopagent.backends._scripted",
    "Context": "sopagent.decisions",
    "Outcome": "sopagent.decisions",
    "decision": "sopagent.decisions",
    "BackendAnswerError": "sopagent.errors",
    "BackendError": "sopagent.errors",
    "BackendTimeout": "sopagent.errors",
    "BackendUnavailable": "sopagent.errors",
    "DecisionError": "sopagent.errors",
    "PolicyError": "sopagent.errors",
    "PolicyLoadError": "sopagent.errors",
    "RuntimeFault": "sopagent.errors",
    "SessionError": "sopagent.errors",
    "SopError": "sopagent.errors",
    "Catalog": "sopagent.policy",
    "Policy": "sopagent.policy",
    "Effect": "sopagent.session",
    "Session": "sopagent.session",
    "Turn": "sopagent.session",
    "Utterance": "sopagent.session",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'sopagent' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


__all__ = [
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

__version__ = "0.1.0"


def embedded(**options: Any) -> LlamaCppBackend:
    """Return the embedded offline backend (Gemma 3 270M on llama.cpp), loading it lazily.

    Keyword arguments are passed to `sopagent.backends.llamacpp.from_llamacpp`.
    """
    from sopagent.backends.llamacpp import from_llamacpp  # noqa: PLC0415 (heavy, optional)

    return from_llamacpp(**options)


def load_agent(
    path: str | Path,
    *,
    backend: Backend | None = None,
    audit: AuditSink | None = None,
    require_approved: bool = False,
) -> Agent:
    """Load, check and compile a policy file and bind it to a backend.

    Args:
        path: the policy YAML file; its catalog and decision modules are found from it.
        backend: the model backend; by default the embedded offline model.
        audit: where audit events go; by default structlog's configured pipeline.
        require_approved: refuse a catalog with responses not approved in its lock file.

    Raises:
        PolicyError: the policy, its catalog or its decision modules have errors, or approval
            is required and some response is not approved.
    """
    from sopagent._agent import Agent  # noqa: PLC0415 (loaded on first use)
    from sopagent._compile import compile_policy  # noqa: PLC0415
    from sopagent._load import load_policy  # noqa: PLC0415

    compiled = compile_policy(load_policy(path), require_approved=require_approved)
    return Agent(compiled, backend if backend is not None else embedded(), audit=audit)
