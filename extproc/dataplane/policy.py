"""Which policy a request falls under: its Envoy route (gRPC metadata) and its model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from extproc.config.policies import ROUTE_METADATA, find_policy, route_policies, with_policy
from extproc.config.settings import CacheSettings


def route_name(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The route name Envoy set in the stream's initial metadata (``x-semantic-cache-route``), or ""."""
    for key, value in metadata or ():
        if key.lower() == ROUTE_METADATA and isinstance(value, str):
            return value.strip()[:64]
    return ""


def route_settings(settings: CacheSettings, route: str) -> list[tuple[CacheSettings, str]]:
    """Every (settings, policy name or "") a request on ``route`` may run under once its model
    is known; the last applies to a model no model policy names."""
    return [
        (with_policy(settings, p), p.name if p is not None else "")
        for p in route_policies(settings.policies, route)
    ]


def request_settings(settings: CacheSettings, route: str, model: str) -> tuple[CacheSettings, str]:
    """(the settings of a request of ``model`` on ``route``, the name of the policy or "")."""
    policy = find_policy(settings.policies, route, model)
    return with_policy(settings, policy), policy.name if policy is not None else ""
