"""A request's identity: the cache query (partition, exact key, prompt) and its cache-control."""

from __future__ import annotations

from extproc.cache import CacheQuery
from extproc.protocol.openai import ChatRequest, exact_key, partition_key, with_revision


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
