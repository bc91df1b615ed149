"""Verification evidence shared through a real Milvus 2.3 server: replicas, restarts, chunks, age."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from extproc.app import make_backend
from extproc.cache import SemanticCache
from extproc.cache.backends.milvus.backend import MilvusBackend
from extproc.cache.backends.milvus.evidence import CHUNK, read_documents, write_document
from extproc.config.settings import parse_config
from extproc.config.verification import VerificationSettings
from extproc.dataplane.verification import Verification
from extproc.embedding.base import EncodeFn
from extproc.embedding.batcher import Embedder
from extproc.errors import BackendUnavailable
from tests.conftest import MilvusServer, drop_collections, milvus_yaml

pytestmark = pytest.mark.integration

_names: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def drop_module_collections(milvus_server: MilvusServer) -> Any:
    """Drop the collections this module made (entries and evidence)."""
    yield
    drop_collections(milvus_server, _names)


def config(tmp_path: Path, server: MilvusServer, name: str, **development: Any) -> Path:
    """milvus.yaml for collection ``name`` (dropped at the end of the module)."""
    _names.append(name)
    return milvus_yaml(tmp_path / f"{uuid.uuid4().hex}.yaml", server.uri, name, development=development)


async def backend_for(cfg: Path, dim: int) -> MilvusBackend:
    """A connected Milvus backend as the server builds it (one per simulated process)."""
    settings = parse_config({"semantic_cache": {"backend_type": "milvus", "backend_config_path": str(cfg)}})
    backend = make_backend(settings, dim)
    assert isinstance(backend, MilvusBackend)
    await backend.start()
    assert await backend.wait_ready(60), backend.status()
    return backend


async def test_documents_chunked_replaced_and_aged_out(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, milvus_server, f"ev_{uuid.uuid4().hex[:10]}")
    one, two = await backend_for(cfg, model[1]), await backend_for(cfg, model[1])
    try:
        now = time.time()
        long = "".join(chr(ord("a") + i % 26) for i in range(2 * CHUNK + 123))  # three rows
        await one.save_evidence("pod-a", long, now)
        await two.save_evidence("pod-b", "short", now)
        assert await two.load_evidence(now - 60) == {"pod-a": long, "pod-b": "short"}
        await one.save_evidence("pod-a", "replaced", now + 1)  # its three rows become one
        assert await two.load_evidence(now - 60) == {"pod-a": "replaced", "pod-b": "short"}
        await two.save_evidence("pod-b", "later", now + 100)
        assert await one.load_evidence(now + 50) == {"pod-b": "later"}  # pod-a's aged out …
        assert await one.load_evidence(0) == {"pod-b": "later"}  # … and was deleted
        with pytest.raises(ValueError, match="ASCII"):
            await one.save_evidence("pod-ü", "x", now)
    finally:
        await one.close()
        await two.close()


async def test_a_reader_during_a_rewrite_finds_one_whole_document(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """A rewrite deleted the owner's rows before inserting the new ones: a replica reading in
    between adopted none of that owner's outcomes (its disagreements included) for a sync period."""
    name = f"ev_{uuid.uuid4().hex[:10]}"
    cfg = config(tmp_path, milvus_server, name)
    one = await backend_for(cfg, model[1])
    seen: list[dict[str, str]] = []

    class ReadsBetween:  # the client, reading the documents before each delete of the rewrite
        def __init__(self, client: Any) -> None:
            self.client = client

        def insert(self, *args: Any, **kwargs: Any) -> Any:
            return self.client.insert(*args, **kwargs)

        def delete(self, *args: Any, **kwargs: Any) -> Any:
            seen.append(read_documents(self.client, f"{name}_evidence", 0))
            return self.client.delete(*args, **kwargs)

    try:
        now = time.time()
        await one.save_evidence("pod-a", "first", now)
        client = one._client
        write_document(ReadsBetween(client), f"{name}_evidence", "pod-a", "second", now + 1)
        assert seen == [{"pod-a": "second"}]  # the new write is whole before the old one goes
        assert await one.load_evidence(0) == {"pod-a": "second"}
    finally:
        await one.close()


async def test_two_replicas_and_a_restart_share_the_bound(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, milvus_server, f"ev_{uuid.uuid4().hex[:10]}")
    encode, dim = model
    values = VerificationSettings(max_false_hit_rate=0.02)

    async def process() -> Verification:
        cache = SemanticCache(await backend_for(cfg, dim), Embedder(encode, dim), 0.8, 5, 0)
        return Verification(lambda: values, cache, lambda coro: coro.close())

    def serves(v: Verification) -> bool:
        return v.outcomes.upper("m", 0.995, "", 0.99) <= 0.02

    a, b = await process(), await process()
    for i in range(150):
        a.outcomes.learn("m", f"a{i}", 0.995, False, 0.99)
        b.outcomes.learn("m", f"b{i}", 0.995, False, 0.99)
    assert not serves(a) and not serves(b)
    assert await a.evidence.sync() and await b.evidence.sync() and await a.evidence.sync()
    assert serves(a) and serves(b)
    assert b.stats()["evidence"]["other_processes"] == 1 and b.stats()["evidence"]["shared_outcomes"] == 150
    for v in (a, b):  # both pods stop (a rollout): what they learned is written on the way out
        await v.close()
        await v.cache.close()
    c = await process()
    assert not serves(c)
    assert await c.evidence.sync()
    assert serves(c) and c.outcomes.shared[("m", 10, 4)] == [0.0, 300.0]
    await c.close()
    await c.cache.close()


async def test_without_auto_create_the_evidence_stays_in_each_process(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pymilvus import MilvusClient

    from extproc.cache.backends.milvus.client import create_collection

    name = f"ev_{uuid.uuid4().hex[:10]}"
    cfg = config(tmp_path, milvus_server, name, auto_create_collection=False)
    settings = parse_config({"semantic_cache": {"backend_type": "milvus", "backend_config_path": str(cfg)}})
    client = MilvusClient(uri=milvus_server.uri)
    create_collection(client, settings.milvus(), model[1])  # the entries' collection only
    client.close()
    backend = await backend_for(cfg, model[1])
    caplog.set_level(logging.WARNING)
    try:
        with pytest.raises(BackendUnavailable, match="semantic-cache create-collection"):
            await backend.save_evidence("pod-a", "{}", time.time())
        assert "verification evidence stays in this process" in caplog.text
        assert backend.status()[0] == "ready" and backend.breaker.state == "closed"  # lookups unaffected
    finally:
        await backend.close()
