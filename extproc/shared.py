"""What the streams of one server share, and the record of one request's cache decision."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .cache import CacheQuery, SemanticCache
from .cache.singleflight import InFlight
from .config import CacheSettings
from .openai import ChatRequest, exact_key, partition_key, with_revision

HEADER = "x-semantic-cache"
MAX_SCOPE_CHARS = 256
"""A longer scope header value is treated as missing (the request bypasses)."""
Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class Decision:
    """What happened to one request, for the response header, logs, metrics and traces."""

    outcome: str = "bypass"
    """``hit`` | ``miss`` | ``bypass``."""
    reason: str = ""
    """Why a request was bypassed (``not_chat``, ``no_cache_no_store``, ``backend_error``…)."""
    match: str | None = None
    similarity: float = 0.0
    model: str = ""
    store: str = ""
    """``stored`` or the store-skip reason (``non_2xx``, ``truncated``, ``too_large``…)."""
    timings: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    best_similarity: float = 0.0
    rejected_by: list[str] = field(default_factory=list)
    entry_age_s: float | None = None
    partition: str = ""


@dataclass
class Shared:
    """What every stream of one server shares."""

    settings: CacheSettings
    cache: SemanticCache
    spawn: Spawn
    """Runs a coroutine in the background, tracked for graceful shutdown."""
    on_decision: Callable[[Decision], None] = lambda d: None
    """Called once per request with its final decision (metrics, logs)."""
    inflight: InFlight = field(default_factory=InFlight)
    """Identical misses being fetched now (single-flight)."""


def cache_control(value: str) -> tuple[bool, bool]:
    """(no_cache, no_store) from a ``cache-control`` request header."""
    directives = {d.strip().split("=", 1)[0].lower() for d in value.split(",")}
    return "no-cache" in directives, "no-store" in directives


def cache_query(chat: ChatRequest, scope: str, revision: str = "") -> CacheQuery:
    """The cache lookup key of a parsed request in ``scope`` (the ``eval`` tool uses it too)."""
    fingerprint = with_revision(chat.fingerprint, revision)
    return CacheQuery(
        model=chat.model,
        scope=scope,
        fingerprint=fingerprint,
        prompt=chat.prompt,
        partition=partition_key(chat.model, scope, fingerprint),
        exact_key=exact_key(chat.model, scope, fingerprint, chat.prompt),
    )
