"""The Milvus backend against a real server: what is stored after a reconnect (the circuit
breaker opened on failing calls) is found, and searches for more candidates than HNSW's ef."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extproc.cache.schema import EntryFilter
from extproc.embedding.base import EncodeFn
from tests.conftest import MilvusServer, milvus_yaml
from tests.integration.test_milvus import collection, open_cache
from tests.support.toy import answer
from tests.support.toy import query as q

pytestmark = pytest.mark.integration


async def test_after_a_reconnect_what_is_stored_is_found(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """A reconnect (the breaker opened on a slow call) gives the backend a new client and pool:
    every store after it is found by the next lookup, exact and semantic, as before it."""
    cfg = milvus_yaml(
        tmp_path / "m.yaml", milvus_server.uri, collection(), search={"consistency_level": "Session"}
    )
    cache = await open_cache(model, cfg, ttl_seconds=0)
    try:
        for round_ in range(3):
            cache.backend._reconnect("a test's reconnect")  # type: ignore[attr-defined]
            assert await cache.backend.wait_ready(60), cache.backend.status()  # type: ignore[attr-defined]
            for i in range(5):
                text = f"round {round_} question {i} about reconnecting"
                await cache.store(q(text), answer(f"answer {round_} {i}"))
                found = await cache.check(q(text))
                assert found.hit, (round_, i, found)
    finally:
        await cache.close()


async def test_more_candidates_than_ef_are_searched(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """search.topk 100 (allowed up to 1000) with the default ef 64: the Milvus the chart installs
    (2.5.9) refuses an HNSW search with ef below its limit ("ef(64) should be larger than k(100)"),
    so the cache would serve nothing; ef is raised to the limit. (2.3.5, run here, adjusts it
    itself: this checks such a search works, search_request's unit test the raise.)"""
    cfg = milvus_yaml(
        tmp_path / "m.yaml",
        milvus_server.uri,
        collection(),
        search={"params": {"ef": 64}, "topk": 100, "consistency_level": "Session"},
    )
    cache = await open_cache(model, cfg, ttl_seconds=0)
    try:
        await cache.store(q("How do I reset my router?"), answer("unplug it"))
        found = await cache.check(q("How can I reset my router?"))
        assert found.hit and found.match == "semantic", found
    finally:
        await cache.close()


async def test_an_import_larger_than_max_entries_says_what_it_evicted(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """Milvus trims in its background sweep: the report said evicted 0, then the next sweep
    removed the excess. The import sweeps at its end now."""
    from extproc.admin.importer import Importer
    from extproc.admin.transfer import entry_to_line

    source = await open_cache(
        model, milvus_yaml(tmp_path / "a.yaml", milvus_server.uri, collection()), ttl_seconds=0
    )
    target = await open_cache(
        model,
        milvus_yaml(tmp_path / "b.yaml", milvus_server.uri, collection()),
        ttl_seconds=0,
        max_entries=10,
    )
    try:
        for i in range(25):
            await source.store(q(f"question number {i} about imports"), answer(f"a{i}"))
        lines = [
            entry_to_line(e).encode() + b"\n"
            async for batch in source.backend.entries(EntryFilter(), time.time())
            for e in batch
        ]

        async def body() -> AsyncIterator[bytes]:
            yield b"".join(lines)

        report = await Importer(target.backend, target.embedder, reembed=False).run(body())
        assert (report.imported, report.evicted) == (25, 15), report.as_dict()
        assert await target.backend.count() == 10
    finally:
        await source.close()
        await target.close()
