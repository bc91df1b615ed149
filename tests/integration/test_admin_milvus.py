"""The admin API over Milvus: bulk operations, replicas sharing a collection, another dimension."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from extproc.admin.api import AdminServer
from extproc.admin.transfer import entry_to_line
from extproc.app import build_server
from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
from extproc.cache.backends.milvus.backend import MilvusBackend
from extproc.cache.schema import EntryFilter
from extproc.config.settings import ServerSettings, parse_config
from extproc.dataplane.server import ExtProcServer
from extproc.embedding.base import EncodeFn
from extproc.embedding.batcher import Embedder
from extproc.protocol.openai import exact_key, partition_key
from tests.conftest import MilvusServer, milvus_yaml
from tests.support.admin_helpers import completion

pytestmark = pytest.mark.integration
NDJSON = {"content-type": "application/x-ndjson"}
JSON = {"content-type": "application/json"}

_created: list[str] = []


def collection() -> str:
    """A fresh collection name, dropped at the end of the module."""
    name = f"ops_{uuid.uuid4().hex[:10]}"
    _created.append(name)
    return name


@pytest.fixture(scope="module", autouse=True)
def drop_collections(milvus_server: MilvusServer) -> Any:
    """Drop this module's collections at its end (Milvus restarts slow down with each one)."""
    yield
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server.uri, timeout=30)
    for name in _created:
        if client.has_collection(name):
            client.drop_collection(name)
    client.close()


def q(prompt: str, model: str = "m", scope: str = "global", fp: str = "f" * 64) -> CacheQuery:
    """A CacheQuery."""
    return CacheQuery(
        model, scope, fp, prompt, partition_key(model, scope, fp), exact_key(model, scope, fp, prompt)
    )


async def milvus_server_for(model: tuple[EncodeFn, int], cfg: Path) -> ExtProcServer:
    """A processor over the Milvus collection of ``cfg``, connected."""
    settings = parse_config({"semantic_cache": {"backend_type": "milvus", "backend_config_path": str(cfg)}})
    settings = replace(settings, server=ServerSettings(grpc_address="127.0.0.1:0"))
    server = await build_server(settings, model)
    backend = server.shared.cache.backend
    assert isinstance(backend, MilvusBackend)
    assert await backend.wait_ready(60), backend.status()
    return server


@pytest.fixture
async def replicas(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> AsyncIterator[tuple[ExtProcServer, ExtProcServer, AdminServer]]:
    """Two processors sharing one collection; the first with its admin API."""
    cfg = milvus_yaml(
        tmp_path / "m.yaml", milvus_server.uri, collection(), search={"consistency_level": "Session"}
    )
    a = await milvus_server_for(model, cfg)
    b = await milvus_server_for(model, cfg)
    admin = AdminServer(a.shared, "127.0.0.1:0")
    await admin.start()
    yield a, b, admin
    await admin.stop()
    for s in (a, b):
        await s.shared.cache.close()


async def test_bulk_operations_on_a_real_collection(
    replicas: tuple[ExtProcServer, ExtProcServer, AdminServer],
) -> None:
    a, _, _ = replicas
    cache, backend = a.shared.cache, a.shared.cache.backend
    assert isinstance(backend, MilvusBackend)
    odd = 'we\\ird "model"'
    stored = [
        await cache.store(q("What is the capital of France?"), completion("Paris")),
        await cache.store(q("How do I sort a list?"), completion("sorted()")),
        await cache.store(q("What is the capital of France?", model=odd), completion("Paris!")),
    ]
    now = time.time()
    got = [e async for batch in backend.entries(EntryFilter(), now, batch_size=2) for e in batch]
    assert sorted(e.exact_key for e in got) == sorted(e.exact_key for e in stored)
    by_key = {e.exact_key: e for e in got}
    for e in stored:
        assert np.array_equal(by_key[e.exact_key].vector, e.vector.astype(np.float32))
        assert by_key[e.exact_key].response == e.response and by_key[e.exact_key].model == e.model
    assert await backend.count_matching(EntryFilter(model=odd), now) == 1
    assert await backend.count_matching(EntryFilter(model="m", created_before=now + 1), now) == 2
    assert await backend.count_matching(EntryFilter(created_before=now - 3600), now) == 0
    near = await backend.nearest(stored[0].vector, EntryFilter(model="m"), 5, now)
    assert near[0].entry.exact_key == stored[0].exact_key and near[0].similarity == pytest.approx(
        1.0, abs=1e-4
    )
    assert len(near) == 2
    big = await cache.store(q("tiny"), completion("x"))
    big.prompt = "p" * 70_000
    refused = await backend.put_many([big, stored[1]])
    assert list(refused) == [0] and "too large for Milvus" in refused[0]
    assert await backend.delete_matching(EntryFilter(model=odd)) == 1
    assert await backend.delete_ids([stored[1].exact_key]) == 1
    assert await backend.count_matching(EntryFilter(), time.time()) == 2  # France (m) and "tiny"


async def test_an_export_keeps_a_key_stored_again_while_it_runs(
    replicas: tuple[ExtProcServer, ExtProcServer, AdminServer],
) -> None:
    """A store deletes then inserts: a key absent when the scan passes it is read after the scan."""
    a, _, _ = replicas
    cache, backend = a.shared.cache, a.shared.cache.backend
    stored = {}
    for i in range(12):
        entry = await cache.store(q(f"question number {i}"), completion(f"answer {i}"))
        stored[entry.exact_key] = entry
    order = sorted(stored)  # the scan pages by primary key
    got: list[str] = []
    target = ""
    async for batch in backend.entries(EntryFilter(), time.time(), batch_size=4):
        ids = [e.id for e in batch]
        if not target:  # delete a key the scan has not reached: it misses it ...
            target = order[order.index(max(ids)) + 1]
            assert await backend.delete_ids([target]) == 1
        got += ids
        if len(got) == len(stored) - 1:  # ... and it is back (stored again) once the scan is past
            assert target not in got
            await backend.put(stored[target])
    assert sorted(got) == order  # every key once, the one stored again included


async def wait_until_miss(cache: SemanticCache, query: CacheQuery, timeout: float = 15.0) -> float:
    """Seconds until ``query`` stops hitting on ``cache``."""
    started = time.monotonic()
    while (await cache.check(query)).hit:
        assert time.monotonic() - started < timeout, "the other replica still serves the entry"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_invalidate_and_flush_reach_every_replica(
    replicas: tuple[ExtProcServer, ExtProcServer, AdminServer],
) -> None:
    a, b, admin = replicas
    paris, python = q("What is the capital of France?"), q("How do I reverse a list in Python?")
    for query, text in ((paris, "Paris"), (python, "list[::-1]")):
        await a.shared.cache.store(query, completion(text))
    for query in (paris, python, q("What's the capital city of France?")):
        for _ in range(100):
            if (await b.shared.cache.check(query)).hit:
                break
            await asyncio.sleep(0.1)
        assert (await b.shared.cache.check(query)).hit
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}", timeout=60) as api:
        dry = (
            await api.post("/admin/invalidate", json={"prompt": "What's the capital city of France?"})
        ).json()
        assert dry["matched"] == 1 and (await b.shared.cache.check(paris)).hit
        done = await api.post(
            "/admin/invalidate", json={"prompt": "What's the capital city of France?", "dry_run": False}
        )
        assert done.json()["deleted"] == 1
        invalidated_in = await wait_until_miss(b.shared.cache, paris)
        assert (await b.shared.cache.check(python)).hit
        assert (await api.post("/admin/flush", json={"confirm": "flush-all"})).json()["deleted"] == 1
        flushed_in = await wait_until_miss(b.shared.cache, python)
        stats = (await api.get("/admin/stats")).json()
    assert stats["backend"] == "milvus" and stats["entries"] == 0 and stats["backend_state"] == "ready"
    assert invalidated_in < 10 and flushed_in < 10  # "within seconds" on the other replica


def projected(model: tuple[EncodeFn, int], dim: int) -> tuple[EncodeFn, int]:
    """Another embedding space: MiniLM projected to ``dim`` dimensions by a fixed random matrix."""
    encode, full = model
    matrix = np.random.default_rng(7).standard_normal((full, dim)).astype(np.float32)

    def encode_small(texts: Sequence[str]) -> np.ndarray:
        v = encode(texts) @ matrix
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    return encode_small, dim


async def test_import_into_a_collection_with_another_dimension(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    source = SemanticCache(MemoryBackend(384), Embedder(*model), 0.9)
    prompts = ["What is the capital of France?", "How do I reverse a list in Python?"]
    lines = [
        entry_to_line(await source.store(q(p), completion(f"answer {i}"))) for i, p in enumerate(prompts)
    ]
    body = ("\n".join(lines) + "\n").encode()
    cfg = milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, collection())
    cfg.write_text(cfg.read_text().replace("dimension: 384", "dimension: 128"))
    target = await milvus_server_for(projected(model, 128), cfg)
    admin = AdminServer(target.shared, "127.0.0.1:0")
    await admin.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}", timeout=60) as api:
            assert (await api.get("/admin/stats")).json()["dimension"] == 128
            refused = (await api.post("/admin/import", content=body, headers=NDJSON)).json()
            assert refused["imported"] == 0 and refused["rejected"] == 2
            for r in refused["rejections"]:
                assert "vector has 384 dimensions but this cache's embeddings have 128" in r["reason"]
                assert "--reembed" in r["reason"]
            assert (await api.get("/admin/stats")).json()["entries"] == 0  # nothing applied
            done = (
                await api.post("/admin/import", params={"reembed": "1"}, content=body, headers=NDJSON)
            ).json()
            assert done["imported"] == 2 and done["rejected"] == 0
        for i, p in enumerate(prompts):
            exact = await target.shared.cache.check(q(p))
            assert exact.match == "exact" and exact.entry is not None
            assert exact.entry.response == completion(f"answer {i}")
        paraphrase = await target.shared.cache.check(q("What's the capital city of France?"))
        assert paraphrase.match == "semantic" and paraphrase.entry is not None
        assert len(paraphrase.entry.vector) in (0, 128)
    finally:
        await admin.stop()
        await target.shared.cache.close()


async def test_bad_parameters_are_400_and_never_reach_milvus(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    server = await milvus_server_for(model, milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, collection()))
    backend = server.shared.cache.backend
    assert isinstance(backend, MilvusBackend)
    await server.shared.cache.store(q("What is the capital of France?"), completion("Paris"))
    admin = AdminServer(server.shared, "127.0.0.1:0")
    await admin.start()
    bodies = [  # issue #20: 503 and an open breaker, or a 500 with a traceback for NaN / Infinity
        (b'{"older_than_seconds": 1e20}', "older_than_seconds must be a number of seconds between 0 and"),
        (b'{"model": "\\ud800"}', "model must be valid Unicode text"),
        (b'{"scope": "\\udfff", "dry_run": false}', "scope must be valid Unicode text"),
        (b'{"older_than_seconds": NaN}', "NaN is not a JSON number"),
        (b'{"older_than_seconds": Infinity}', "Infinity is not a JSON number"),
        (b'{"prompt": "caf\\ud800"}', "prompt must be valid Unicode text"),
        (b'{"prompt": "x", "min_similarity": -Infinity}', "-Infinity is not a JSON number"),
    ]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}", timeout=60) as api:
            for _ in range(4):  # more than the breaker's threshold of consecutive failures
                for body, message in bodies:
                    r = await api.post("/admin/invalidate", content=body, headers=JSON)
                    assert r.status_code == 400 and message in r.json()["error"], (body, r.text)
            for query in ({"older_than_seconds": "nan"}, {"older_than_seconds": "1e20"}):
                r = await api.get("/admin/export", params=query)
                assert r.status_code == 400 and "older_than_seconds" in r.json()["error"]
            ok = await api.get("/admin/export", params={"older_than_seconds": "0"})  # the CLI's --older-than
            assert ok.status_code == 200 and len(ok.text.splitlines()) == 1
            stats = (await api.get("/admin/stats")).json()
        assert stats["backend_state"] == "ready" and stats["entries"] == 1
        assert backend.breaker.opened == 0 and backend.data_errors == 0  # nothing reached Milvus
        assert (await server.shared.cache.check(q("What is the capital of France?"))).match == "exact"
    finally:
        await admin.stop()
        await server.shared.cache.close()
