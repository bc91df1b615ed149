"""Verification against a real (local) upstream: what is judged how, and what a verdict deletes.

A semantic hit's shadow re-asks the *paraphrase*; the cached answer was given to another prompt.
A wrong verdict or feedback deletes exactly the entry judged or named, never one stored under
the same key since.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from extproc.cache import MemoryBackend, SemanticCache
from extproc.cache.schema import CacheEntry
from extproc.dataplane.verification import request as shadow_request
from extproc.dataplane.verification.entry_ids import MAX_ID_CHARS, EntryIds
from extproc.embedding.batcher import Embedder
from tests.support.shadow import P_KEY, Harness, P, Q, Upstream, serve_upstream
from tests.support.toy import DIM, answer, query, toy_encode


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    """The upstream and its base URL."""
    async with serve_upstream() as served:
        yield served


def text_of(entry: CacheEntry | None) -> str | None:
    """The answer text of ``entry`` (None when there is none)."""
    return None if entry is None else entry.response["choices"][0]["message"]["content"]


async def test_a_deterministic_paraphrase_is_judged_by_meaning(upstream: tuple[Upstream, str]) -> None:
    """temperature 0 and a seed say nothing about another prompt's answer: other words agree."""
    state, url = upstream
    h = Harness(url)
    hit = await h.store(P, "v:1,0,0")
    state.text = "v:1,0.001,0"  # the same answer, worded otherwise (cosine 0.9999995)
    assert h.v.shadow(h.shadow(hit, temperature=0, seed=7))
    await h.drain()
    assert h.v.outcomes.rates()["m"][2].agree == 1
    assert text_of(await h.cache.entry(hit.exact_key)) == "v:1,0,0"  # kept
    assert all(wrong == 0 for wrong, _ in h.v.outcomes.bins.values())
    state.text = "v:0,1"  # another meaning is still a disagreement
    assert h.v.shadow(h.shadow(hit, temperature=0, seed=7))
    await h.drain()
    assert h.v.outcomes.rates()["m"][2].disagree == 1
    assert await h.cache.entry(hit.exact_key) is None
    assert state.bodies[0]["stream"] is False and state.bodies[0]["seed"] == 7


async def test_a_heal_spares_an_entry_stored_since_the_hit(upstream: tuple[Upstream, str]) -> None:
    state, url = upstream
    h = Harness(url, replace=True)
    hit = await h.store(P, "v:1,0")
    newer = await h.store(P, "v:1,0.01")  # a refresh while the shadow is in flight
    assert h.v.shadow(h.shadow(hit))
    await h.drain()
    assert h.v.outcomes.rates()["m"][2].disagree == 1
    assert text_of(await h.cache.entry(P_KEY)) == "v:1,0.01" and newer.created_at > hit.created_at
    assert text_of(await h.cache.entry(query(Q).exact_key)) == "v:0,1"  # the fresh answer, stored
    # The judged entry itself still goes, and an answer stored for the paraphrase since stays.
    state.text = "v:0,0,1"
    second = h.shadow(newer)
    await h.store(Q, "v:1,0.05")
    assert h.v.shadow(second)
    await h.drain()
    assert await h.cache.entry(P_KEY) is None
    assert text_of(await h.cache.entry(query(Q).exact_key)) == "v:1,0.05"


async def test_an_explored_candidate_found_wrong_is_kept_but_never_served_as_a_paraphrase(
    upstream: tuple[Upstream, str],
) -> None:
    """Wrong for the request that explored it, the candidate still answers its own prompt: it
    stays (its exact repeats hit), and its own wrong outcome keeps the bound from serving it to
    a paraphrase again, however much its group has earned trust."""
    _, url = upstream
    h = Harness(url, sample_rate=0.0, max_false_hit_rate=0.2)
    candidate = await h.store(P, "v:1,0")
    assert not h.v.allows("m", candidate, 0.995, 0.995)  # no evidence yet: explored
    h.v.learn_from_miss("m", candidate, (0.995, 0.995), answer("v:0,1"))
    await h.drain()
    assert text_of(await h.cache.entry(P_KEY)) == "v:1,0"  # kept for its own prompt
    for i in range(500):  # the group earns trust; the entry found wrong does not
        h.v.outcomes.learn("m", f"other-{i}", 0.995, False, 0.995)
    assert h.v.allows("m", replace(candidate, exact_key="f" * 64), 0.995, 0.995)
    assert not h.v.allows("m", candidate, 0.995, 0.995)
    newer = await h.store(P, "v:1,0.02")  # another version under the key: its record is clean
    assert h.v.allows("m", newer, 0.995, 0.995)


async def test_feedback_names_one_version_of_an_entry(upstream: tuple[Upstream, str]) -> None:
    _, url = upstream
    h = Harness(url, sample_rate=0.0)
    old = await h.store(P, "v:1,0")
    old_id = h.v.ids.issue(old.partition, old.exact_key, old.created_at)
    newer = await h.store(P, "v:1,0.02")  # refreshed, or expired and stored again
    new_id = h.v.ids.issue(newer.partition, newer.exact_key, newer.created_at)
    assert old_id != new_id and len(new_id) <= MAX_ID_CHARS
    assert EntryIds.parse(new_id) == (P_KEY, round(newer.created_at * 1000))
    assert not await h.v.feedback(old_id, "wrong")  # its entry is gone: 404
    assert not await h.v.feedback(old_id, "wrong", partition=old.partition)  # the data-path route
    assert text_of(await h.cache.entry(P_KEY)) == "v:1,0.02"
    assert await h.v.feedback(new_id, "wrong", partition=newer.partition)
    assert await h.cache.entry(P_KEY) is None
    assert h.v.stats()["feedback"] == {"wrong": 1}


async def test_forget_deletes_only_the_version_named() -> None:
    class Unversioned(MemoryBackend):
        delete_version = None  # a backend without a conditional delete: read, compare, delete

    for backend in (MemoryBackend(DIM, 10), Unversioned(DIM, 10)):
        cache = SemanticCache(backend, Embedder(toy_encode, DIM), 0.9, 5, 60)
        old = await cache.store(query(P), answer("old"))
        await asyncio.sleep(0.003)
        newer = await cache.store(query(P), answer("new"))
        assert not await cache.forget(P_KEY, old.created_at)
        assert text_of(await cache.entry(P_KEY)) == "new"
        assert await cache.forget(P_KEY, newer.created_at)
        assert await cache.entry(P_KEY) is None
        assert not await cache.forget(P_KEY, newer.created_at)


@pytest.mark.parametrize(
    "size, encoding, threaded", [(1_000, "", False), (200_000, "", True), (1_000, "gzip", True)]
)
async def test_a_large_or_compressed_shadow_body_is_prepared_off_the_loop(
    upstream: tuple[Upstream, str], monkeypatch: pytest.MonkeyPatch, size: int, encoding: str, threaded: bool
) -> None:
    state, url = upstream
    h = Harness(url)
    threads: list[int] = []
    prepare = shadow_request.shadow_body

    def recorded(body: bytes, enc: str) -> bytes:
        threads.append(threading.get_ident())
        return prepare(body, enc)

    monkeypatch.setattr(shadow_request, "shadow_body", recorded)
    hit = await h.store(P, "v:1,0")
    job = h.shadow(hit, stream=True, padding="x" * size)
    if encoding:
        job = replace(job, body=gzip.compress(job.body), encoding=encoding)
    assert h.v.shadow(job)
    await h.drain()
    assert len(threads) == 1 and (threads[0] != threading.get_ident()) == threaded
    assert state.bodies[-1]["stream"] is False and len(state.bodies[-1]["padding"]) == size


def test_a_shadow_body_is_the_request_made_non_streaming() -> None:
    """Members are spliced back as written (never re-encoded whole), read as json.loads reads them."""
    rng = random.Random(7)
    leaves = [1, -2.5, 'q"\\', None, True, "é\n", 1e300]

    def value(depth: int = 0) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.3:
            return rng.choice(leaves)
        if roll < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {
            rng.choice(["stream", "tools", "a"]) + str(rng.randint(0, 2)): value(depth + 1) for _ in range(3)
        }

    for _ in range(500):
        keys = rng.sample(
            ["model", "messages", "stream", "stream_options", "temperature", "x"], rng.randint(0, 6)
        )
        request = {k: value() for k in keys}
        text = json.dumps(request, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        sent = shadow_request.shadow_body(text.encode(), "")
        expected = {k: v for k, v in request.items() if k != "stream_options"} | {"stream": False}
        assert json.loads(sent) == expected and list(json.loads(sent)) == list(expected)
    assert json.loads(shadow_request.shadow_body(b'{"a": 1, "a": 2}', "")) == {"a": 2, "stream": False}
    assert (
        shadow_request.shadow_body(b'{"a": "\\ud800"}', "") == b'{"a": "\\ud800", "stream": false}'
    )  # as sent
    assert b'"stream": false' in shadow_request.shadow_body(b'{"stream":true}', "")
    utf16 = json.dumps({"model": "m"}).encode("utf-16")  # json.loads reads it: so do shadows
    assert json.loads(shadow_request.shadow_body(utf16, "")) == {"model": "m", "stream": False}
    for bad in (
        b"",
        b"[]",
        b'"x"',
        b"{",
        b'{"a"}',
        b'{"a":}',
        b'{"a":1,}',
        b'{"a":1} x',
        b"{a:1}",
        b'{"a":1 "b":2}',
    ):
        with pytest.raises(ValueError):
            shadow_request.shadow_body(bad, "")
    for tools in (b'{"tools": [{"type": "function"}]}', b'{"tool_choice": "auto"}'):
        with pytest.raises(shadow_request.Skip, match="side_effects"):
            shadow_request.shadow_body(tools, "")
    assert json.loads(shadow_request.shadow_body(b'{"tools": []}', "")) == {"tools": [], "stream": False}
    with pytest.raises(shadow_request.Skip, match="unreadable"):
        shadow_request.shadow_body(b"not gzip", "gzip")


async def test_an_answer_too_large_to_store_is_an_error_and_changes_nothing(
    upstream: tuple[Upstream, str],
) -> None:
    """The request path stores nothing over max_response_bytes; neither may a heal, and the
    answer is never read whole (a small gzip body can inflate to gigabytes)."""
    state, url = upstream
    h = Harness(url, replace=True)
    hit = await h.store(P, "v:1,0")
    state.text = "v:0,1 " + "x" * 20_000
    assert h.v.shadow(h.shadow(hit, max_bytes=4096))
    await h.drain()
    rates = h.v.outcomes.rates().get("m")
    assert rates is None or rates[2].disagree == 0
    assert text_of(await h.cache.entry(P_KEY)) == "v:1,0"  # kept
    assert await h.cache.entry(query(Q).exact_key) is None  # nothing stored
    await h.v.close()


async def test_a_redirect_is_an_error_not_followed(upstream: tuple[Upstream, str]) -> None:
    """Envoy hands a 3xx to the client; a shadow following it would send the client's api-key
    headers to another origin and judge that origin's answer."""
    state, url = upstream
    async with serve_upstream() as (elsewhere, other_url):
        h = Harness(url)
        hit = await h.store(P, "v:1,0")
        state.redirect = other_url + "/v1/chat/completions"
        assert h.v.shadow(h.shadow(hit, headers={"api-key": "secret"}))
        await h.drain()
        assert elsewhere.bodies == []
        assert text_of(await h.cache.entry(P_KEY)) == "v:1,0"
        await h.v.close()
