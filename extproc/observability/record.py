"""What observability reads from the layers above (protocols: it never imports them); the bypass reasons."""

from __future__ import annotations

from typing import Protocol

BYPASS_REASONS: dict[str, str] = {
    "not_chat": "another method than POST on a cached path (other paths never reach the processor)",
    "disabled": "the cache is switched off (enabled: false)",
    "no_body": "a POST without a body",
    "no_cache_no_store": "the request said cache-control: no-cache, no-store",
    "no_scope": "scope_mode header / authorization and no usable scope value",
    "request_too_large": "the body is over Envoy's buffer or max_request_bytes",
    "unsupported_encoding": "a content-encoding other than gzip / identity",
    "bad_encoding": "the gzip body does not decompress",
    "bad_json": "the body is not a JSON object",
    "not_json": "a content-type servers do not read as JSON (text/plain, a form): they refuse it",
    "bad_messages": "messages is missing or not a list of chat messages",
    "no_model": "model is missing or not a string",
    "model_too_long": "model is longer than the partition key allows",
    "no_user_message": "no user message to look up",
    "empty_prompt": "the last user message is empty after normalization",
    "unsupported_value": "stream / stream_options that servers read differently (stream: 1, stream_options "
    "without include_usage or without stream: true, continuous_usage_stats)",
    "unsupported_prompt": "/v1/completions with a prompt of token ids or several prompts",
    "stateful": "a request that keeps state or reads it (store, previous_response_id, conversation, "
    "background, a stored prompt without a version)",
    "server_tools": "the server runs tools for the answer (web_search_options; /v1/responses tools other "
    "than function and custom: web and file search, code interpreter, MCP, image generation)",
    "backend_unavailable": "the backend is not connected, its breaker is open or its schema is wrong",
    "backend_error": "a backend call failed",
    "lookup_timeout": "the lookup took longer than lookup_timeout_ms",
    "embedding_error": "the embedding model raised",
    "overloaded": "the embedding backlog would exceed max_added_latency_ms: only the exact-key lookup ran",
    "data_rejected": "the backend refused this request's data (one caller's bad value, not an outage)",
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


MISS_REASONS = ("no_cache", "volatile")
"""Why a miss looked nothing up: the client's ``no-cache``, a time-sensitive prompt."""


def bypass_reason(reason: str) -> str:
    """The reason a bypass reports: a stream that ended undecided says so (never "unknown")."""
    return reason or "stream_ended"


class DecisionRecord(Protocol):
    """The fields of one request's decision that metrics and spans read."""

    outcome: str
    reason: str
    match: str | None
    similarity: float
    confidence: float | None
    model: str
    store: str
    timings: dict[str, float]
    candidates: int
    best_similarity: float
    rejected_by: list[str]
    entry_age_s: float | None
    partition: str
    saved_prompt_tokens: int
    saved_completion_tokens: int
    volatile: str
    non_latin: bool
    policy: str
    verifying: bool


class EmbedderLike(Protocol):
    """What the scrape-time gauges read from the embedder."""

    @property
    def backlog(self) -> int:
        """Texts waiting for a forward pass."""
        ...

    def expected_wait(self) -> float:
        """Seconds a new lookup would wait for its vector."""
        ...


class BackendLike(Protocol):
    """What the scrape-time gauges read from a cache backend."""

    name: str

    def status(self) -> tuple[str, str]:
        """(state, detail): ``ready`` or why the backend bypasses."""
        ...


def miss_reason(d: DecisionRecord) -> str:
    """A miss's reason when it looked nothing up (one of MISS_REASONS), else ""."""
    return d.reason if d.outcome == "miss" and d.reason in MISS_REASONS else ""
