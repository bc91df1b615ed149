"""A request's identity: the cache query (partition, exact key, prompt) (its cache-control: freshness.py)."""

from __future__ import annotations

from urllib.parse import quote_plus, unquote_to_bytes

from extproc.cache import CacheQuery
from extproc.protocol.openai import (
    ChatRequest,
    exact_key,
    partition_key,
    with_query,
    with_revision,
    with_route,
)


def canonical_query(path: str) -> str:
    """The query string of ``path``, decoded and with its parameters sorted by name ("" without one).

    Order and encoding do not change what a gateway routes on, so ``?b=2&a=1`` and ``?a=1&b=2``
    are one identity; any other difference in the parameters is another.
    """
    query = path.partition("?")[2].partition("#")[0]
    if not query:
        return ""
    pairs = [(_bytes(k), _bytes(v)) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
    # By name only (a stable sort): the values of a repeated parameter keep their order. Bytes,
    # not text: %FF and %FE are two values (decoding them as UTF-8 made both U+FFFD).
    pairs.sort(key=lambda kv: kv[0])
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in pairs)


def _bytes(text: str) -> bytes:
    """A query component's bytes: ``+`` is a space, ``%XX`` a byte (as browsers and gateways read it)."""
    return unquote_to_bytes(text.replace("+", " ").encode("utf-8", "surrogateescape"))


def cache_query(
    chat: ChatRequest, scope: str, revision: str = "", query: str = "", route: str = ""
) -> CacheQuery:
    """The cache lookup key of a parsed request in ``scope`` (the ``eval`` tool uses it too).

    ``revision`` (model weights), ``query`` (the canonical query string) and ``route`` (the
    Envoy route's name) are part of the fingerprint, so of the partition and the exact key.
    """
    fingerprint = with_route(with_query(with_revision(chat.fingerprint, revision), query), route)
    return CacheQuery(
        model=chat.model,
        scope=scope,
        fingerprint=fingerprint,
        prompt=chat.prompt,
        partition=partition_key(chat.model, scope, fingerprint),
        exact_key=exact_key(chat.model, scope, fingerprint, chat.prompt),
    )
