"""Remote embeddings through the real Envoy: a real HTTP server serving the bundled MiniLM.

The processor is built without a model: it must not load the local one (loading it fails the
test), probes the endpoint's dimension at start, and serves paraphrase hits with vectors from
the endpoint; the content guard, without word vectors, decides on stems alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc import app
from extproc.app import build_server, make_backend
from extproc.config.settings import CacheSettings, ServerSettings, parse_config, with_overrides
from extproc.embedding.base import EncodeFn
from extproc.errors import ConfigError
from tests.conftest import milvus_yaml, start_envoy
from tests.support import upstream as fake
from tests.support.embed_server import EmbedServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def embed_server(model: tuple[EncodeFn, int]) -> AsyncIterator[EmbedServer]:
    """The bundled MiniLM behind a real /v1/embeddings, with an API key."""
    server = await EmbedServer(model[0], api_key="sk-test").start()
    yield server
    await server.stop()


def no_local_model(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the local loader: with an endpoint configured it must never run."""
    raise AssertionError("the local embedding model was loaded")


async def test_remote_embeddings_end_to_end(
    embed_server: EmbedServer,
    upstream: fake.FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "load_sentence_model", no_local_model)
    monkeypatch.setenv("SEMANTIC_CACHE_EMBEDDING_API_KEY", "sk-test")
    settings = with_overrides(
        CacheSettings(server=ServerSettings(grpc_address="127.0.0.1:0")),
        embedding_endpoint=embed_server.url,
        embedding_endpoint_model="minilm",
        max_added_latency_ms=0,
    )
    server = await build_server(settings)
    embedder = server.shared.cache.embedder
    assert embedder.dim == 384 and not embedder.has_words and embedder.workers == app.REMOTE_WORKERS
    port = await server.start("127.0.0.1:0")
    envoy = await start_envoy(tmp_path, port, upstream.port)
    try:
        async with httpx.AsyncClient(base_url=envoy.url, timeout=30) as client:
            model = f"remote-{uuid.uuid4().hex[:8]}"

            async def ask(prompt: str) -> httpx.Response:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
                return await client.post("/v1/chat/completions", json=body)

            assert (await ask("What is the capital of France?")).headers["x-semantic-cache"] == "miss"
            await server.tasks.drain(5)
            hit = await ask("What's the capital city of France?")
            assert hit.headers["x-semantic-cache"] == "hit"
            assert 0.9 <= float(hit.headers["x-semantic-cache-similarity"]) < 1.0
            # Stems alone: a different name is still refused without word vectors.
            assert (await ask("What is the capital of Austria?")).headers["x-semantic-cache"] == "miss"
        assert set(embed_server.models) == {"minilm"} and sum(embed_server.batches) >= 3
    finally:
        envoy.stop()
        await server.stop(1)
        await server.shared.cache.close()


async def test_dimension_mismatch_is_a_clear_error(embed_server: EmbedServer, tmp_path: Path) -> None:
    config = milvus_yaml(tmp_path / "milvus.yaml", "http://127.0.0.1:1", "dims")
    text = (config.read_text()).replace("dimension: 384", "dimension: 768")
    config.write_text(text)
    settings = parse_config(
        {
            "semantic_cache": {
                "backend_type": "milvus",
                "backend_config_path": str(config),
                "embedding_endpoint": embed_server.url,
            }
        }
    )
    with pytest.raises(
        ConfigError, match=r"dimension is 768 but the embedding model .* at http://.* produces 384"
    ):
        make_backend(settings, 384)


async def test_an_unreachable_endpoint_stops_the_start(tmp_path: Path) -> None:
    settings = with_overrides(CacheSettings(), embedding_endpoint="http://127.0.0.1:9/v1/embeddings")
    with pytest.raises(ConfigError, match="did not answer at start"):
        await build_server(settings)
