"""A request's identity: the cache query (partition, exact key, prompt) (its cache-control: freshness.py)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from extproc.cache import CacheQuery
from extproc.protocol.openai import ChatRequest, exact_key, partition_key, with_query, with_revision


def canonical_query(path: str) -> str:
    """The query string of ``path``, decoded and with its parameters sorted by name ("" without one).

    Order and encoding do not change what a gateway routes on, so ``?b=2&a=1`` and ``?a=1&b=2``
    are one identity; any other difference in the parameters is another.
    """
    query = path.partition("?")[2].partition("#")[0]
    if not query:
        return ""
    # By name only (a stable sort): the values of a repeated parameter keep their order.
    return urlencode(sorted(parse_qsl(query, keep_blank_values=True), key=lambda kv: kv[0]))


def cache_query(chat: ChatRequest, scope: str, revision: str = "", query: str = "") -> CacheQuery:
    """The cache lookup key of a parsed request in ``scope`` (the ``eval`` tool uses it too).

    ``revision`` (model weights) and ``query`` (the canonical query string) are part of the
    fingerprint, so of the partition and the exact key.
    """
    fingerprint = with_query(with_revision(chat.fingerprint, revision), query)
    return CacheQuery(
        model=chat.model,
        scope=scope,
        fingerprint=fingerprint,
        prompt=chat.prompt,
        partition=partition_key(chat.model, scope, fingerprint),
        exact_key=exact_key(chat.model, scope, fingerprint, chat.prompt),
    )
