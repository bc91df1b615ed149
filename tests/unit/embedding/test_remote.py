"""The remote encoder against a real HTTP embeddings server (toy vectors): order, retries, budget, key."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from extproc.config.settings import parse_config
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
