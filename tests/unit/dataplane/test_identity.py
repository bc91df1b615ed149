"""The query string is part of a request's identity (canonical: parameter order does not matter)."""

from __future__ import annotations

import json

from extproc.dataplane.identity import cache_query, canonical_query
from extproc.protocol.openai import parse_chat_request

CHAT = parse_chat_request(
    json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
)


def test_canonical_query() -> None:
    assert canonical_query("/v1/chat/completions") == ""
    assert canonical_query("/v1/chat/completions?") == ""
    assert canonical_query("/p?b=2&a=1") == canonical_query("/p?a=1&b=2")
    assert canonical_query("/p?a=1&a=2") != canonical_query("/p?a=2&a=1")  # a repeated one keeps its order
    assert canonical_query("/p?deployment=gpt-a") != canonical_query("/p?deployment=gpt-b")
    assert canonical_query("/p?a=%41") == canonical_query("/p?a=A")
    assert canonical_query("/p?flag") == canonical_query("/p?flag=")
    # Bytes that are not UTF-8 are values of their own (decoded, each was U+FFFD: one identity).
    odd = {canonical_query(f"/p?deployment={v}") for v in ("%FF", "%FE", "%EF%BF%BD")}
    assert len(odd) == 3
    assert canonical_query("/p?q=a+b") == canonical_query("/p?q=a%20b")


def test_query_changes_partition_and_exact_key() -> None:
    bare = cache_query(CHAT, "global")
    a = cache_query(CHAT, "global", query=canonical_query("/x?api-version=1&deployment=gpt-a"))
    b = cache_query(CHAT, "global", query=canonical_query("/x?deployment=gpt-b&api-version=1"))
    same = cache_query(CHAT, "global", query=canonical_query("/x?deployment=gpt-a&api-version=1"))
    assert len({bare.exact_key, a.exact_key, b.exact_key}) == 3
    assert len({bare.partition, a.partition, b.partition}) == 3
    assert same == a


def test_an_added_route_is_its_own_identity() -> None:
    """A route an operator adds (to another cluster, say) never shares answers with the shipped
    one; the shipped names add nothing, so fingerprints stored before stay valid."""
    bare = cache_query(CHAT, "global")
    for shipped in ("", "chat", "completions", "responses"):
        assert cache_query(CHAT, "global", route=shipped) == bare
    premium = cache_query(CHAT, "global", route="premium")
    canary = cache_query(CHAT, "global", route="canary")
    assert len({bare.partition, premium.partition, canary.partition}) == 3
    assert len({bare.exact_key, premium.exact_key, canary.exact_key}) == 3
    assert cache_query(CHAT, "global", route="premium") == premium
