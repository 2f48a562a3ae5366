"""The service's modules: their public names, and that the core never imports FastAPI or redis."""

from __future__ import annotations

import json
import subprocess
import sys

import sopagent.server
import sopagent.stores


def test_importing_sopagent_and_the_seams_stays_light() -> None:
    """`import sopagent`, `sopagent.stores` and `sopagent.server` load no web or Redis client."""
    code = (
        "import json, sys, sopagent, sopagent.stores, sopagent.server;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('fastapi', 'starlette', 'uvicorn', 'redis', 'httpx', 'uvloop'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_server_public_names() -> None:
    """sopagent.server exports the service, the app factory, keys, handoff sinks and serve."""
    assert sopagent.server.__all__ == [
        "ApiError", "ApiKey", "ConfigError", "HandoffSink", "KeyRing", "NullHandoff",
        "RedisStreamHandoff", "ServeConfig", "Service", "WebhookHandoff", "build_service",
        "create_app", "hash_key", "new_key", "serve",
    ]  # fmt: skip
    assert all(hasattr(sopagent.server, name) for name in sopagent.server.__all__)


def test_stores_public_names() -> None:
    """sopagent.stores exports the Protocol, both stores, their records and open_store."""
    assert sopagent.stores.__all__ == [
        "Commit", "RedisStore", "Replay", "SessionStore", "SqliteStore", "Status", "StoredSession",
        "open_store",
    ]  # fmt: skip
    assert all(hasattr(sopagent.stores, name) for name in sopagent.stores.__all__)
