"""The remote encoder against a real HTTP embeddings server (toy vectors): order, retries, budget, key."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from extproc.config.settings import parse_config
from extproc.embedding.base import TextRefused
from extproc.embedding.batcher import Embedder
from extproc.embedding.remote import RemoteEmbeddingError, RemoteEncoder
from extproc.errors import ConfigError
from tests.support.embed_server import EmbedServer
from tests.support.toy import DIM, toy_encode


async def test_vectors_in_input_order_and_normalized() -> None:
    server = await EmbedServer(toy_encode, api_key="k").start()
    try:
        encoder = RemoteEncoder(server.url, "toy", api_key="k")
        vectors = await asyncio.to_thread(encoder, ["v:1,0", "v:0,3", "v:1,1"])
        assert np.allclose(vectors, toy_encode(["v:1,0", "v:0,3", "v:1,1"]), atol=1e-6)
        assert await asyncio.to_thread(encoder.probe) == DIM and server.models[0] == "toy"
    finally:
        await server.stop()


async def test_retries_within_the_budget_then_a_clear_error() -> None:
    server = await EmbedServer(toy_encode).start()
    try:
        server.fail_next = 2
        encoder = RemoteEncoder(server.url, "toy", retries=2, budget=5.0)
        assert (await asyncio.to_thread(encoder, ["a"])).shape == (1, DIM)
        assert encoder.failures == 2
        server.fail_next = 5
        with pytest.raises(RemoteEmbeddingError, match="after 3 attempt"):
            await asyncio.to_thread(encoder, ["a"])
        server.fail_next, server.delay = 0, 0.5
        slow = RemoteEncoder(server.url, "toy", timeout=0.1, retries=5, budget=0.25)
        with pytest.raises(RemoteEmbeddingError):  # timeouts retried, but never past the budget
            await asyncio.to_thread(slow, ["a"])
    finally:
        await server.stop()


async def test_a_wrong_key_stops_the_start_with_the_fix() -> None:
    server = await EmbedServer(toy_encode, api_key="right").start()
    try:
        encoder = RemoteEncoder(server.url, "toy", api_key="wrong")
        with pytest.raises(ConfigError, match="SEMANTIC_CACHE_EMBEDDING_API_KEY"):
            await asyncio.to_thread(encoder.probe)
    finally:
        await server.stop()


async def test_the_embedder_batches_remote_passes_side_by_side() -> None:
    server = await EmbedServer(toy_encode).start()
    try:
        server.delay = 0.05
        embedder = Embedder(RemoteEncoder(server.url, "toy"), DIM, max_batch=8, workers=2)
        vectors = await asyncio.gather(*(embedder.embed(f"text {i}") for i in range(20)))
        assert len(vectors) == 20 and sum(server.batches) == 20 and len(server.batches) < 20
        assert not embedder.has_words and embedder.expected_wait() > 0
        embedder.close()
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("embedding_endpoint", "embed:8000", 'must be "" or an http(s) URL'),
        ("embedding_timeout_ms", 0, "semantic_cache.embedding_timeout_ms: must be an integer >= 1"),
        ("embedding_retries", 11, "semantic_cache.embedding_retries: must be an integer >= 0 and <= 10"),
    ],
)
def test_settings_are_checked(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match="semantic_cache." + key) as info:
        parse_config({"semantic_cache": {key: value}})
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda rows: [r | {"embedding": [float("nan")] * DIM} for r in rows], "non-finite"),
        (lambda rows: [r | {"embedding": [float("inf")] * DIM} for r in rows], "non-finite"),
        (lambda rows: [r | {"embedding": [1e300] * DIM} for r in rows], "non-finite"),  # norm: inf
        (lambda rows: [r | {"embedding": [0.0] * DIM} for r in rows], "zero"),
        (lambda rows: [r | {"index": 0} for r in rows], "not one per input"),  # rows would swap prompts
        (lambda rows: [r | {"index": i + 5} for i, r in enumerate(rows)], "not one per input"),
        (lambda rows: [r | {"embedding": r["embedding"] + [0.5]} for r in rows], "9-dimensional"),
    ],
)
async def test_an_answer_that_is_not_one_vector_per_input_is_refused(mangle: Any, expected: str) -> None:
    """Never a vector served from: a NaN similarity passed every threshold test, and duplicate
    indexes gave one prompt another's vector (both served wrong answers)."""
    server = await EmbedServer(toy_encode).start()
    try:
        encoder = RemoteEncoder(server.url, "toy")
        assert await asyncio.to_thread(encoder.probe) == DIM
        server.mangle = mangle
        with pytest.raises(RemoteEmbeddingError, match=expected):
            await asyncio.to_thread(encoder, ["v:1,0", "v:0,1"])
    finally:
        await server.stop()


async def test_a_trickling_answer_ends_with_the_budget() -> None:
    """A socket timeout bounds each read, and a server sending a byte every 50 ms never trips it."""
    server = await EmbedServer(toy_encode, trickle=0.05).start()
    try:
        encoder = RemoteEncoder(server.url, "toy", timeout=0.3, retries=2, budget=0.6)
        started = time.monotonic()
        with pytest.raises(RemoteEmbeddingError, match="no complete answer within"):
            await asyncio.to_thread(encoder, ["v:1,0"])
        assert time.monotonic() - started < 3  # the answer would take ~10 s
    finally:
        await server.stop()


async def test_a_text_the_server_refuses_fails_its_own_caller_only() -> None:
    """vLLM and TEI refuse a batch with one input past the context (400): the others of the pass
    are asked again without it, and only its caller gets an error."""
    server = await EmbedServer(toy_encode, max_chars=100).start()
    try:
        encoder = RemoteEncoder(server.url, "toy")
        await asyncio.to_thread(encoder.probe)
        embedder = Embedder(encoder, DIM, max_batch=8, workers=1)
        texts = [f"v:1,{i}" for i in range(6)] + ["x" * 500]
        results = await asyncio.gather(*(embedder.embed(t) for t in texts), return_exceptions=True)
        assert all(isinstance(r, np.ndarray) for r in results[:6])
        assert np.allclose(np.stack(results[:6]), toy_encode(texts[:6]), atol=1e-6)  # type: ignore[arg-type]
        assert isinstance(results[6], TextRefused)
        embedder.close()
    finally:
        await server.stop()


async def test_a_connection_the_server_closed_while_idle_is_replaced_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn closes idle connections after 5 s: the next pass failed on it, then slept 50 ms."""
    from extproc.embedding import remote

    server = await EmbedServer(toy_encode, keepalive=0.1).start()
    slept: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", slept.append)
    try:
        encoder = RemoteEncoder(server.url, "toy", retries=1)
        assert (await asyncio.to_thread(encoder, ["a"])).shape == (1, DIM)
        await asyncio.sleep(0.3)  # the server has closed the kept-alive connection
        assert (await asyncio.to_thread(encoder, ["b"])).shape == (1, DIM)
        assert slept == [] and server.batches == [1, 1]
    finally:
        await server.stop()


async def test_an_endpoint_failing_every_attempt_fails_the_next_passes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Down, it cost every lookup its whole latency budget (and read as overload)."""
    from extproc.embedding import remote

    server = await EmbedServer(toy_encode).start()
    monkeypatch.setattr(remote, "FAIL_FAST_SECONDS", 0.3)
    try:
        encoder = RemoteEncoder(server.url, "toy", retries=1, budget=5.0)
        server.fail_next = 2
        with pytest.raises(RemoteEmbeddingError, match="after 2 attempt"):
            await asyncio.to_thread(encoder, ["a"])
        with pytest.raises(RemoteEmbeddingError, match=r"failing .* next try in"):
            await asyncio.to_thread(encoder, ["a"])  # no request: the server is not asked
        assert server.fail_next == 0 and server.batches == []
        await asyncio.sleep(0.4)
        assert (await asyncio.to_thread(encoder, ["a"])).shape == (1, DIM)  # then one tries again
    finally:
        await server.stop()


async def test_a_key_ending_in_a_newline_is_read_without_it() -> None:
    """A Secret made with `echo key > file` ends in a newline: the start failed with a traceback."""
    server = await EmbedServer(toy_encode, api_key="k").start()
    try:
        encoder = RemoteEncoder(server.url, "toy", api_key="k\n")
        assert await asyncio.to_thread(encoder.probe) == DIM
        with pytest.raises(ConfigError, match="characters an HTTP header cannot carry"):
            RemoteEncoder(server.url, "toy", api_key="k\x00ey")
    finally:
        await server.stop()


async def test_one_bad_answer_or_a_stale_connection_never_fails_the_next_lookups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failing fast is for an endpoint that failed every attempt: one input answered with a zero
    vector, or a stale kept-alive connection with embedding_retries 0, must not stop the others."""
    server = await EmbedServer(toy_encode, keepalive=0.1).start()
    try:
        encoder = RemoteEncoder(server.url, "toy", retries=0)
        assert (await asyncio.to_thread(encoder, ["a"])).shape == (1, DIM)
        server.mangle = lambda rows: [r | {"embedding": [0.0] * DIM} for r in rows]
        with pytest.raises(RemoteEmbeddingError, match="zero"):
            await asyncio.to_thread(encoder, ["poison"])
        server.mangle = None
        assert (await asyncio.to_thread(encoder, ["b"])).shape == (1, DIM)  # no fail-fast
        await asyncio.sleep(0.3)  # the server closed the kept-alive connection
        assert (await asyncio.to_thread(encoder, ["c"])).shape == (1, DIM)  # retried, not counted
    finally:
        await server.stop()
