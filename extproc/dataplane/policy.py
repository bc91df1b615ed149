"""Which policy a request falls under: its Envoy route (gRPC metadata) and its model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from extproc.config.policies import ROUTE_METADATA, find_policy, may_enable, with_policy
from extproc.config.settings import CacheSettings


def route_name(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The route name Envoy set in the stream's initial metadata (``x-semantic-cache-route``), or ""."""
    for key, value in metadata or ():
        if key.lower() == ROUTE_METADATA and isinstance(value, str):
            return value.strip()[:64]
    return ""


def route_settings(settings: CacheSettings, route: str) -> tuple[CacheSettings, bool]:
    """(settings of the route's first model-free policy, whether a model policy may still enable it)."""
    policy = find_policy(settings.policies, route, None)
    return with_policy(settings, policy), may_enable(settings.policies, route)


def request_settings(settings: CacheSettings, route: str, model: str) -> tuple[CacheSettings, str]:
    """(the settings of a request of ``model`` on ``route``, the name of the policy or "")."""
    policy = find_policy(settings.policies, route, model)
    return with_policy(settings, policy), policy.name if policy is not None else ""
