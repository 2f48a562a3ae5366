"""The customer-support service: ``sopagent serve``, an HTTP JSON API over durable sessions.

Needs the ``server`` extra (FastAPI and uvicorn); ``import sopagent`` never imports it.

* `Service`: sessions, turns under a lease, idempotency keys, handoffs, without HTTP;
* `create_app`: the FastAPI application over a service (OpenAPI at ``/openapi.json``);
* `ServeConfig`, `build_service`, `serve`: what ``sopagent serve`` runs;
* `KeyRing`, `ApiKey`, `new_key`, `hash_key`: API keys, hashed at rest, scoped to policies
  and owned by a tenant;
* `WebhookHandoff`, `RedisStreamHandoff`: where handoff events go.

Stores are in `sopagent.stores`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sopagent.server._auth import ApiKey, KeyRing, hash_key, new_key
from sopagent.server._handoff import HandoffSink, NullHandoff, RedisStreamHandoff, WebhookHandoff
from sopagent.server._run import ConfigError, ServeConfig, build_service, serve
from sopagent.server._service import ApiError, Service

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "ApiError",
    "ApiKey",
    "ConfigError",
    "HandoffSink",
    "KeyRing",
    "NullHandoff",
    "RedisStreamHandoff",
    "ServeConfig",
    "Service",
    "WebhookHandoff",
    "build_service",
    "create_app",
    "hash_key",
    "new_key",
    "serve",
]


def create_app(service: Service, **options: Any) -> FastAPI:
    """Return the FastAPI application serving ``service`` (see `sopagent.server._app`)."""
    from sopagent.server._app import create_app as build  # noqa: PLC0415 (FastAPI is heavy)

    return build(service, **options)
