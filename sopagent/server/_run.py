"""Build a `Service` from a `ServeConfig` and run it under uvicorn.

With ``workers > 1`` uvicorn starts that many processes; each builds its own service from the
configuration passed in the environment (``SOPAGENT_SERVE_CONFIG``), sharing only the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sopagent.errors import Location, PolicyLoadError, Problem

if TYPE_CHECKING:
    from fastapi import FastAPI

    from sopagent._agent import Agent
    from sopagent._compile import CompiledPolicy
    from sopagent.audit import AuditSink
    from sopagent.backends import Backend
    from sopagent.server._service import Service

__all__ = ["ConfigError", "ServeConfig", "build_service", "serve"]

CONFIG_ENV = "SOPAGENT_SERVE_CONFIG"


class ConfigError(ValueError):
    """An option of ``sopagent serve`` cannot be used (exit code 2)."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``sopagent serve`` was told, as plain data.

    Attributes:
        policies: policy files; several versions of one policy may be served side by side.
        host: address to listen on.
        port: TCP port.
        store: ``sqlite:///FILE``, a file path, or ``redis://HOST:PORT/DB``.
        keys: the API keys file.
        audit: the audit log (JSON lines, rotated), or ``None`` for none.
        audit_max_bytes: size at which the audit log is rotated.
        audit_backups: rotated audit files kept.
        handoff_webhook: URL that receives handoff events as JSON POSTs.
        handoff_stream: ``redis://HOST:PORT/DB#stream`` that receives them as stream entries.
        backend: ``embedded``, ``scripted`` or ``openai``.
        script: the scripted backend's script file.
        workers: worker processes.
        lock_ttl: seconds a turn may hold a session's lease.
        backend_timeout: seconds one call to a remote model (``openai``) may take; below
            ``lock_ttl``, so that a slow model yields the error line, not a lost lease.
        access_log: log every request on standard error.
    """

    policies: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    store: str = "sopagent-sessions.db"
    keys: str = ""
    audit: str | None = "sopagent-audit.jsonl"
    audit_max_bytes: int = 64 * 1024 * 1024
    audit_backups: int = 10
    handoff_webhook: str | None = None
    handoff_stream: str | None = None
    backend: str = "embedded"
    script: str | None = None
    workers: int = 1
    lock_ttl: float = 15.0
    backend_timeout: float = 10.0
    access_log: bool = False

    def to_json(self) -> str:
        """Serialize for worker processes."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """Restore a configuration serialized by `to_json`."""
        data = json.loads(text)
        data["policies"] = tuple(data["policies"])
        return cls(**data)


def _compile_all(paths: Sequence[str]) -> list[CompiledPolicy]:
    from sopagent._compile import compile_policy  # noqa: PLC0415
    from sopagent._load import load_policy  # noqa: PLC0415

    return [compile_policy(load_policy(path)) for path in paths]


def _backend(config: ServeConfig, compiled: Sequence[CompiledPolicy]) -> Backend:
    """The backend a spec names (docs/backends.md), e.g. ``resilient(openai, retries=2)``."""
    from sopagent.backends._spec import SpecBuilder, SpecError, base_names  # noqa: PLC0415

    spec = config.backend
    try:
        bases = base_names(spec)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None
    if "scripted" in bases and config.script is None:
        raise ConfigError("the scripted backend needs --script FILE")
    if config.script is not None and "scripted" not in bases:
        raise ConfigError("--script is for --backend scripted")

    def embedded() -> Backend:
        import sopagent  # noqa: PLC0415

        return sopagent.embedded()

    def scripted() -> Backend:
        assert config.script is not None
        return _scripted(Path(config.script), compiled)

    builder = SpecBuilder(
        {
            "embedded": embedded,
            "openai": lambda: _openai(config.backend_timeout),
            "scripted": scripted,
        }
    )
    try:
        return builder.build(spec)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None


class _Forgetful(list[Any]):
    """A request log that keeps nothing: a long-running service must not grow without bound."""

    def append(self, item: Any) -> None:
        """Drop the item."""


def _scripted(path: Path, compiled: Sequence[CompiledPolicy]) -> Backend:
    from sopagent._yaml import read_yaml  # noqa: PLC0415
    from sopagent.backends._scripted import ScriptedBackend  # noqa: PLC0415
    from sopagent.policy import OUT_OF_SCOPE  # noqa: PLC0415

    document = read_yaml(path)
    data = document.data
    allowed = {OUT_OF_SCOPE} | {i for c in compiled for i in c.policy.intents}
    problems: list[Problem] = []

    def check(label: object, where: Location) -> str:
        if not isinstance(label, str) or label not in allowed:
            problems.append(
                Problem("SOP021", f"unknown intent {label!r} in no served policy", where)
            )
        return str(label)

    script: dict[str, str] | list[str]
    if isinstance(data, dict):
        script = {str(t): check(label, document.locate((t,))) for t, label in data.items()}
    elif isinstance(data, list):
        script = [check(label, document.locate((i,))) for i, label in enumerate(data)]
    else:
        message = "a script is a mapping of user text to intent label, or a list of labels"
        raise PolicyLoadError([Problem("SOP010", message, document.locate(()))])
    if problems:
        raise PolicyLoadError(problems)
    backend = ScriptedBackend(script)
    backend.requests = _Forgetful()
    return backend


def _openai(timeout: float) -> Backend:
    model = os.environ.get("SOPAGENT_OPENAI_MODEL")
    if not model:
        raise ConfigError("set SOPAGENT_OPENAI_MODEL to the model name the server knows")
    dialect = os.environ.get("SOPAGENT_OPENAI_DIALECT", "openai")
    if dialect not in ("openai", "llamacpp"):
        raise ConfigError(f"SOPAGENT_OPENAI_DIALECT is {dialect!r}; use openai or llamacpp")
    import openai  # noqa: PLC0415 (optional dependency)

    from sopagent.backends.openai import from_openai  # noqa: PLC0415

    # The SDK's own timeout and retry, per request: concurrent turns do not wait on each other.
    # The backend sets both on every request, so they are given to it, not only to the client.
    client = openai.OpenAI(
        api_key=os.environ.get("OPENAI_API_KEY") or "unused", timeout=timeout, max_retries=1
    )
    return from_openai(
        client,
        model=model,
        dialect=dialect,  # type: ignore[arg-type]
        timeout=timeout,
        max_retries=1,
    )


def _audit(config: ServeConfig, worker_suffix: bool) -> AuditSink:
    from sopagent.audit import NullSink, RotatingJsonLinesSink  # noqa: PLC0415

    if config.audit is None:
        return NullSink()
    path = Path(config.audit)
    if worker_suffix:
        # One file per worker process: rotation is not safe across processes.
        path = path.with_name(f"{path.stem}-{os.getpid()}{path.suffix}")
    try:
        return RotatingJsonLinesSink(
            path, max_bytes=config.audit_max_bytes, backups=config.audit_backups
        )
    except OSError as exc:
        raise ConfigError(f"cannot open the audit log {path}: {exc.strerror}") from exc


def build_service(
    config: ServeConfig, *, worker_suffix: bool = False
) -> tuple[Service, Callable[[], None]]:
    """Build the service a configuration describes; return it and its closing function.

    Raises:
        PolicyError: a policy, the keys file or the script is invalid.
        ConfigError: an option cannot be used.
        StoreError: the store cannot be opened or does not answer.
    """
    from sopagent._agent import Agent  # noqa: PLC0415
    from sopagent.server._auth import KeyRing  # noqa: PLC0415
    from sopagent.server._handoff import (  # noqa: PLC0415
        HandoffSink,
        NullHandoff,
        RedisStreamHandoff,
        WebhookHandoff,
    )
    from sopagent.server._service import Service  # noqa: PLC0415
    from sopagent.stores import open_store  # noqa: PLC0415

    if not config.policies:
        raise ConfigError("name at least one policy file")
    if not config.keys:
        raise ConfigError("--keys FILE is required: no key, no access (see sopagent new-key)")
    if config.handoff_webhook and config.handoff_stream:
        raise ConfigError("use one of --handoff-webhook and --handoff-stream")
    if config.backend == "openai" and config.backend_timeout >= config.lock_ttl:
        raise ConfigError("--backend-timeout must be shorter than --lock-ttl")
    compiled = _compile_all(config.policies)
    keys = KeyRing.from_file(config.keys)
    backend = _backend(config, compiled)
    agents: list[Agent] = [Agent(c, backend) for c in compiled]
    # Load the model and evaluate each policy's prompt before the first request, so that a
    # worker is ready only when its first turn costs what every later one does.
    warm = getattr(backend, "warm", None)
    if callable(warm):
        for policy in compiled:
            warm(policy.vocabulary, policy.hash)
    store = open_store(config.store)
    store.ping()
    audit = _audit(config, worker_suffix)

    def failed(event: Any, error: str) -> None:
        audit.emit({"event": "handoff_delivery_failed", "session_id": event.get("session_id"),
                    "error": error})  # fmt: skip

    handoff: HandoffSink = NullHandoff()
    if config.handoff_webhook:
        try:
            handoff = WebhookHandoff(config.handoff_webhook, on_failure=failed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    elif config.handoff_stream:
        handoff = RedisStreamHandoff.from_url(config.handoff_stream, on_failure=failed)
    service = Service(agents, store, keys, audit=audit, handoff=handoff, lock_ttl=config.lock_ttl)

    def close() -> None:
        handoff.close()
        store.close()
        closing = getattr(audit, "close", None)
        if callable(closing):
            closing()

    return service, close


def app_from_env() -> FastAPI:
    """The application of one worker process (uvicorn's factory when ``workers > 1``)."""
    from sopagent.server._app import create_app  # noqa: PLC0415

    config = ServeConfig.from_json(os.environ[CONFIG_ENV])
    service, close = build_service(config, worker_suffix=True)
    return create_app(service, on_shutdown=close)


def serve(config: ServeConfig, *, ready: Callable[[str], None] | None = None) -> int:
    """Run the service until SIGINT or SIGTERM; return the exit code.

    Raises:
        PolicyError, ConfigError, StoreError: as `build_service`.
        OSError: the address cannot be listened on.
    """
    import uvicorn  # noqa: PLC0415 (extra "server")

    from sopagent.server._app import create_app  # noqa: PLC0415

    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": config.access_log,
        "timeout_graceful_shutdown": 10,
        "server_header": False,
    }
    if config.workers > 1:
        # Validate everything once here, so that a mistake exits with its code instead of
        # killing every worker; the embedded model is loaded by the workers only.
        if config.backend != "embedded":
            _, close = build_service(dataclasses.replace(config, audit=None))
            close()
        sock = _listen(config.host, config.port)
        sock.close()
        os.environ[CONFIG_ENV] = config.to_json()
        if ready is not None:
            ready(f"http://{config.host}:{config.port}")
        uvicorn.run(
            "sopagent.server._run:app_from_env",
            factory=True,
            host=config.host,
            port=config.port,
            workers=config.workers,
            **options,
        )
        return 0
    service, close = build_service(config)
    sock = _listen(config.host, config.port)
    app = create_app(service, on_shutdown=close)
    server = _server_class()(uvicorn.Config(app, **options))
    if ready is not None:
        host, port = sock.getsockname()[:2]
        ready(f"http://{host}:{port}")
    server.run(sockets=[sock])
    return 0 if server.started else 3


def _server_class() -> type[Any]:
    import uvicorn  # noqa: PLC0415

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGINT or SIGTERM ends it with exit code 0.

        uvicorn re-raises the signal it caught once it has shut down, so the process would
        die of it; a service stopped on purpose has succeeded.
        """

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return Server


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
