"""The chat processor under hostile input: bombs, stuck single-flights, answers of unknown shape."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.dataplane.processors import ChatCompletionsProcessor
from tests.unit.dataplane.test_processors import (
    CHAT,
    chat_body,
    completion,
    headers,
    make_shared,
    miss_and_store,
)

OK_JSON = [(":status", "200"), ("content-type", "application/json")]
OK_SSE = [(":status", "200"), ("content-type", "text/event-stream")]


async def test_gzip_bomb_bypasses_without_inflating() -> None:
    shared, decisions, _ = make_shared(max_request_bytes=64 * 1024)
    body = chat_body("hello") + b" " * (50 * 2**20)  # valid JSON, 50 MiB of trailing spaces
    bomb = gzip.compress(body, compresslevel=9)
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers([*CHAT, ("content-encoding", "gzip")]), False)
    await p.on_request_body(bomb, True)
    p.on_stream_closed()
    assert (decisions[-1].outcome, decisions[-1].reason) == ("bypass", "request_too_large")


async def test_gzip_request_within_the_limit_is_looked_up() -> None:
    shared, _, _ = make_shared()
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers([*CHAT, ("content-encoding", "gzip")]), False)
    await p.on_request_body(gzip.compress(chat_body("hello there")), True)
    assert p.decision.outcome == "miss"
    bad = ChatCompletionsProcessor(shared)
    bad.on_request_headers(headers([*CHAT, ("content-encoding", "gzip")]), False)
    await bad.on_request_body(gzip.compress(chat_body("x"))[:-10], True)
    assert bad.decision.reason == "bad_encoding"


async def test_oversized_gzip_response_is_not_stored() -> None:
    shared, decisions, pending = make_shared(max_response_bytes=4096)
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("tell me everything"), True)
    p.on_response_headers(headers([*OK_JSON, ("content-encoding", "gzip")]), False)
    big = json.loads(completion("x"))
    big["choices"][0]["message"]["content"] = "y" * 100_000
    p.on_response_body(gzip.compress(json.dumps(big).encode()), True)
    await pending.pop()
    assert decisions[-1].store == "too_large"


async def test_followers_are_released_when_the_leader_will_not_store() -> None:
    """A non-2xx answer is known at the response headers: the waiters go upstream at once."""
    shared, _, _ = make_shared(coalesce_wait_ms=30_000)
    leader = ChatCompletionsProcessor(shared)
    leader.on_request_headers(headers(CHAT), False)
    await leader.on_request_body(chat_body("slow question"), True)
    follower = ChatCompletionsProcessor(shared)
    follower.on_request_headers(headers(CHAT), False)
    waiting = asyncio.create_task(follower.on_request_body(chat_body("slow question"), True))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    leader.on_response_headers(headers([(":status", "503")]), False)  # the body is still coming
    reply = await asyncio.wait_for(waiting, 2)
    assert reply.immediate_response is None and follower.decision.outcome == "miss"
    assert len(shared.inflight) == 0  # released at the headers, not at the end of the body


async def test_a_follower_never_serves_the_old_entry_its_own_max_age_passed_over() -> None:
    """Both ask for answers under a minute old; the stored one is an hour old. The leader's
    upstream fails (nothing stored): the follower goes upstream too, never to the old entry."""
    shared, _, pending = make_shared(coalesce_wait_ms=30_000)
    await miss_and_store(shared, pending, "who wrote hamlet", "OLD ANSWER")
    backend = shared.cache.backend
    for key, entry in list(backend._entries.items()):
        backend._entries[key] = dataclasses.replace(entry, created_at=entry.created_at - 3600)
    fresh = [*CHAT, ("cache-control", "max-age=60")]
    leader = ChatCompletionsProcessor(shared)
    leader.on_request_headers(headers(fresh), False)
    await leader.on_request_body(chat_body("who wrote hamlet"), True)
    assert leader.decision.outcome == "miss" and leader._leading
    follower = ChatCompletionsProcessor(shared)
    follower.on_request_headers(headers(fresh), False)
    waiting = asyncio.create_task(follower.on_request_body(chat_body("who wrote hamlet"), True))
    await asyncio.sleep(0.05)
    leader.on_response_headers(headers([(":status", "503")]), False)
    reply = await asyncio.wait_for(waiting, 2)
    assert reply.immediate_response is None and follower.decision.outcome == "miss"


async def test_an_answer_too_large_to_store_releases_the_waiters_mid_stream() -> None:
    shared, _, _ = make_shared(max_response_bytes=2048)
    leader = ChatCompletionsProcessor(shared)
    leader.on_request_headers(headers(CHAT), False)
    await leader.on_request_body(chat_body("a very long story"), True)
    leader.on_response_headers(headers(OK_SSE), False)
    assert len(shared.inflight) == 1
    leader.on_response_body(b"data: " + b"x" * 4096 + b"\n\n", False)  # more is still coming
    assert len(shared.inflight) == 0 and leader.decision.store == "too_large"


async def test_store_failure_of_any_kind_reports_and_releases_once() -> None:
    shared, decisions, pending = make_shared()

    async def broken_store(*_: Any, **__: Any) -> None:
        raise RuntimeError("a bug in a backend")

    shared.cache.store = broken_store  # type: ignore[method-assign]
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("q"), True)
    p.on_response_headers(headers(OK_JSON), False)
    p.on_response_body(completion("a"), True)
    await pending.pop()
    assert len(shared.inflight) == 0 and len(decisions) == 1
    assert decisions[0].store == "backend_error"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
CHOICE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "index": JSON_VALUES,
        "finish_reason": JSON_VALUES,
        "message": JSON_VALUES,
        "delta": JSON_VALUES,
        "logprobs": JSON_VALUES,
    },
)
BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
    st.builds(lambda cs: json.dumps({"choices": cs}).encode(), st.lists(CHOICE_FIELDS, max_size=3)),
    st.builds(
        lambda cs: (
            b"".join(b"data: " + json.dumps({"choices": [c]}).encode() + b"\n\n" for c in cs)
            + b"data: [DONE]\n\n"
        ),
        st.lists(CHOICE_FIELDS, max_size=4),
    ),
)


@settings(max_examples=150, deadline=None)
@given(body=BODIES, stream=st.booleans())
def test_any_upstream_body_ends_the_bookkeeping_exactly_once(body: bytes, stream: bool) -> None:
    """Whatever the upstream answers, the decision is reported once and the key released."""

    async def run() -> None:
        shared, decisions, pending = make_shared()
        p = ChatCompletionsProcessor(shared)
        p.on_request_headers(headers(CHAT), False)
        await p.on_request_body(chat_body("fuzzed"), True)
        assert len(shared.inflight) == 1
        p.on_response_headers(headers(OK_SSE if stream else OK_JSON), False)
        p.on_response_body(body, True)
        for coro in pending:
            await coro
        p.on_stream_closed()
        assert len(shared.inflight) == 0
        assert len(decisions) == 1 and decisions[0].store

    asyncio.run(run())


async def test_a_stream_that_ends_mid_lookup_is_undecided_not_a_miss() -> None:
    """The client leaves while its prompt is being embedded: a bypass `stream_ended`, never a
    miss (which would lower the hit ratio and claim a lookup that never finished)."""
    import time

    import numpy as np
    from envoy_data_plane.envoy.service.ext_proc.v3 import HttpBody, ProcessingRequest

    from extproc.embedding.batcher import Embedder
    from tests.support.toy import DIM, toy_encode

    def slow(texts: list[str]) -> np.ndarray:
        time.sleep(0.5)
        return toy_encode(texts)

    shared, decisions, _ = make_shared()
    shared.cache.embedder = Embedder(slow, DIM)
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    body = ProcessingRequest(request_body=HttpBody(body=chat_body("v:1,0"), end_of_stream=True))
    deciding = asyncio.create_task(p.handle(body))
    await asyncio.sleep(0.1)
    deciding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await deciding
    p.on_stream_closed()
    assert (decisions[-1].outcome, decisions[-1].reason) == ("bypass", "")
    shared.cache.embedder.close()
