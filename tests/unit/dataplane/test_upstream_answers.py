"""What the upstream's answer allows: its cache-control (a shared cache's duties), and streams
that never wait for an identical request in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from extproc.dataplane.freshness import upstream_lifetime
from extproc.dataplane.processors import ChatCompletionsProcessor
from extproc.dataplane.shared import Shared
from tests.unit.dataplane.test_processors import (
    CHAT,
    chat_body,
    completion,
    headers,
    make_shared,
    run_spawned,
)

OK_JSON = [(":status", "200"), ("content-type", "application/json")]


async def answered(shared: Shared, pending: list[Any], cache_control: str) -> ChatCompletionsProcessor:
    """One miss answered with ``cache-control`` (when not ""), its store finished."""
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("What is my account balance?"), True)
    extra = [("cache-control", cache_control)] if cache_control else []
    p.on_response_headers(headers(OK_JSON + extra), False)
    p.on_response_body(completion("Hello alice, your balance is $1,234."), True)
    await run_spawned(pending)
    p.on_stream_closed()
    return p


def lifetime_of(cache_control: str) -> int | None:
    return upstream_lifetime({"cache-control": cache_control})


def test_upstream_lifetime() -> None:
    assert lifetime_of("") is None
    assert lifetime_of("no-cache") is None  # SSE servers' proxy hygiene; nothing to revalidate
    never_stored = ("no-store", "private", 'private="set-cookie"', "max-age=0", "s-maxage=0", "No-Store")
    for never in never_stored:
        assert lifetime_of(never) == 0, never
    assert lifetime_of("max-age=60") == 60
    assert lifetime_of("max-age=600, s-maxage=30") == 30  # a shared cache's own first
    assert lifetime_of("max-age=60, max-age=600") == 60
    assert lifetime_of("max-age=abc") is None
    assert lifetime_of("max-age=" + "9" * 40) == 10**10


def test_the_age_already_spent_and_expires_count() -> None:
    """RFC 9111 §4.2: an answer a cache before us kept 58 of its 60 s has 2 s left (it was kept
    60 s), and without max-age ``Expires`` sets the lifetime (an hour in the past was kept)."""
    date = "Mon, 07 Dec 2026 10:00:00 GMT"
    assert upstream_lifetime({"cache-control": "max-age=60", "age": "58"}) == 2
    assert upstream_lifetime({"cache-control": "max-age=60", "age": "600"}) == 0
    assert upstream_lifetime({"cache-control": "max-age=60", "age": "x"}) == 60
    assert upstream_lifetime({"expires": "Mon, 07 Dec 2026 10:10:00 GMT", "date": date}) == 600
    assert upstream_lifetime({"expires": "Mon, 07 Dec 2026 09:00:00 GMT", "date": date}) == 0
    assert upstream_lifetime({"expires": "0"}) == 0  # not a date: already expired (§5.3)
    now = 1796637600.0  # Mon, 07 Dec 2026 10:00:00 GMT: no Date header, the clock instead
    assert upstream_lifetime({"expires": "Mon, 07 Dec 2026 10:01:00 GMT"}, now) == 60
    both = {"cache-control": "max-age=30", "expires": "Mon, 07 Dec 2026 11:00:00 GMT", "date": date}
    assert upstream_lifetime(both) == 30  # max-age wins over Expires
    assert upstream_lifetime({"age": "10"}) is None


async def test_an_answer_already_as_old_as_it_may_be_is_not_stored() -> None:
    shared, _, pending = make_shared(ttl_seconds=3600)
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("What is my account balance?"), True)
    p.on_response_headers(headers([*OK_JSON, ("cache-control", "max-age=60"), ("age", "60")]), False)
    p.on_response_body(completion("Your balance is $1,234."), True)
    await run_spawned(pending)
    assert p.decision.store == "upstream_no_store"


@pytest.mark.parametrize("cache_control", ["no-store", "private", "private, no-store, max-age=0"])
async def test_an_answer_for_one_user_is_not_stored(cache_control: str) -> None:
    """Alice's answer marked private or no-store must never be served to Bob."""
    shared, _, pending = make_shared()
    first = await answered(shared, pending, cache_control)
    assert first.decision.store == "upstream_no_store"
    again = await answered(shared, pending, "")
    assert again.decision.outcome == "miss"


async def test_max_age_caps_how_long_the_answer_is_kept() -> None:
    shared, _, pending = make_shared(ttl_seconds=3600)
    p = await answered(shared, pending, "public, max-age=60")
    assert p.decision.store == "stored" and p._query is not None
    entry = await shared.cache.entry(p._query.exact_key)
    assert entry is not None and round(entry.expires_at - entry.created_at) == 60


async def test_the_upstreams_cache_control_can_be_ignored() -> None:
    """A gateway in front of the model may mark every answer private."""
    shared, _, pending = make_shared(upstream_cache_control=False)
    assert (await answered(shared, pending, "private")).decision.store == "stored"


async def test_a_stream_never_waits_for_the_identical_request_in_flight() -> None:
    """Its first token would come only at the end of the leader's answer (or never, when that
    answer cannot be stored); a JSON request still waits for a streaming leader."""
    shared, _, _ = make_shared(coalesce_wait_ms=30_000)
    leader = ChatCompletionsProcessor(shared)
    leader.on_request_headers(headers(CHAT), False)
    await leader.on_request_body(chat_body("Write a long story", stream=True), True)
    assert leader._leading
    streaming = ChatCompletionsProcessor(shared)
    streaming.on_request_headers(headers(CHAT), False)
    body = chat_body("Write a long story", stream=True)
    reply = await asyncio.wait_for(streaming.on_request_body(body, True), 1)
    assert reply.immediate_response is None and streaming.decision.outcome == "miss"
    assert not streaming._leading
    follower = ChatCompletionsProcessor(shared)
    follower.on_request_headers(headers(CHAT), False)
    waiting = asyncio.create_task(follower.on_request_body(chat_body("Write a long story"), True))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    leader.on_response_headers(headers([(":status", "503")]), False)
    assert (await asyncio.wait_for(waiting, 2)).immediate_response is None


async def test_a_body_servers_would_refuse_is_not_served_from_cache() -> None:
    """vLLM answers text/plain or a form (curl -d) with 415 / 422: a hit would be a 200."""
    shared, _, pending = make_shared()
    await answered(shared, pending, "")
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        p = ChatCompletionsProcessor(shared)
        typed = [(k, content_type if k == "content-type" else v) for k, v in CHAT]
        reply = p.on_request_headers(headers(typed), False)
        assert reply.immediate_response is None
        assert (p.decision.outcome, p.decision.reason) == ("bypass", "not_json")
