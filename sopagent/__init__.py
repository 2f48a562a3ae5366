"""sopagent: conversational agents that follow standard operating procedures exactly.

The pipeline: `load_policy` (YAML -> `Policy`), `check_policy` (cross references),
`compile_policy` (-> a state machine built on transitions), `Agent.respond` (one constrained
model call per turn at most), and an audit event per turn. `load_agent` does all of it.
`Npc` runs one game character on a shared agent: frame budgets, save/load, `replay`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sopagent._agent import Agent
from sopagent._compile import CompiledPolicy, compile_policy
from sopagent._load import load_catalog, load_policy
from sopagent._npc import Npc, Recording, Replay, replay
from sopagent.audit import AuditSink, JsonLinesSink, MemorySink, StructlogSink
from sopagent.backends import Backend
from sopagent.backends._scripted import ScriptedBackend
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

if TYPE_CHECKING:
    from sopagent.backends.llamacpp import LlamaCppBackend

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
    compiled = compile_policy(load_policy(path), require_approved=require_approved)
    return Agent(compiled, backend if backend is not None else embedded(), audit=audit)
