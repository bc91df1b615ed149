"""What observability reads from the layers above (protocols: it never imports them); the bypass reasons."""

from __future__ import annotations

from typing import Protocol

BYPASS_REASONS: dict[str, str] = {
    "not_chat": "not POST /v1/chat/completions (passes through without the header)",
    "disabled": "the cache is switched off (enabled: false)",
    "no_body": "a POST without a body",
    "no_cache_no_store": "the request said cache-control: no-cache, no-store",
    "no_scope": "scope_mode header / authorization and no usable scope value",
    "request_too_large": "the body is over Envoy's buffer or max_request_bytes",
    "unsupported_encoding": "a content-encoding other than gzip / identity",
    "bad_encoding": "the gzip body does not decompress",
    "bad_json": "the body is not a JSON object",
    "bad_messages": "messages is missing or not a list of chat messages",
    "no_model": "model is missing or not a string",
    "model_too_long": "model is longer than the partition key allows",
    "no_user_message": "no user message to look up",
    "empty_prompt": "the last user message is empty after normalization",
    "backend_unavailable": "the backend is not connected, its breaker is open or its schema is wrong",
    "backend_error": "a backend call failed",
    "lookup_timeout": "the lookup took longer than lookup_timeout_ms",
    "embedding_error": "the embedding model raised",
    "internal_error": "a bug in the processor (logged with its traceback); the request went on unchanged",
    "stream_ended": "the stream ended before a decision (the client went away, or Envoy stopped waiting)",
}
"""Every bypass reason, with what it means: the ``reason`` label, span attribute and response header."""


def hit_ratio(hits: float, misses: float) -> float | None:
    """THE hit ratio: hits / (hits + misses), the share of lookups answered from cache.

    Bypasses are not lookups (the cache stepped aside) and are left out; their share is the
    bypass ratio. None before the first lookup. Admin stats, the metric and the docs use this.
    """
    looked_up = hits + misses
    return round(hits / looked_up, 4) if looked_up else None


def bypass_reason(reason: str) -> str:
    """The reason a bypass reports: a stream that ended undecided says so (never "unknown")."""
    return reason or "stream_ended"


class DecisionRecord(Protocol):
    """The fields of one request's decision that metrics and spans read."""

    outcome: str
    reason: str
    match: str | None
    similarity: float
    model: str
    store: str
    timings: dict[str, float]
    candidates: int
    best_similarity: float
    rejected_by: list[str]
    entry_age_s: float | None
    partition: str


class BackendLike(Protocol):
    """What the scrape-time gauges read from a cache backend."""

    name: str

    def status(self) -> tuple[str, str]:
        """(state, detail): ``ready`` or why the backend bypasses."""
        ...
