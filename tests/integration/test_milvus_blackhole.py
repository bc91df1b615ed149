"""Milvus unreachable without a reset (a node failure, a partition), then reachable again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from extproc.embedding.base import EncodeFn
from tests.conftest import MilvusServer, milvus_yaml
from tests.integration.test_milvus import collection, open_cache
from tests.support.blackhole import BlackholeProxy
from tests.support.toy import answer
from tests.support.toy import query as q

pytestmark = pytest.mark.integration


async def test_hits_come_back_when_milvus_does(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """gRPC shared the dead connection with the reconnect's new client, and calls stuck on it
    held every thread of the backend's pool until their deadline: hits came back 55-110 s after
    Milvus did. A connection and a pool of its own: within seconds."""
    port = int(milvus_server.uri.rsplit(":", 1)[1])
    proxy = BlackholeProxy(port)
    uri = f"http://127.0.0.1:{proxy.port}"
    cfg = milvus_yaml(
        tmp_path / "m.yaml", uri, collection(),
        connection={"uri": uri, "timeout": 60},  # the documented default
        search={"consistency_level": "Session", "timeout_ms": 1000},
    )  # fmt: skip
    cache = await open_cache(model, cfg, ttl_seconds=0)
    try:
        for i in range(10):
            await cache.store(q(f"known {i}"), answer("x"))
        hits: list[tuple[float, bool]] = []
        stop = asyncio.Event()

        async def traffic(worker: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                with_hit = False
                with contextlib.suppress(Exception):  # bypassing while Milvus is away
                    with_hit = (await cache.check(q(f"known {i % 10}"))).hit
                hits.append((time.monotonic(), with_hit))
                with contextlib.suppress(Exception):
                    await cache.store(q(f"new {worker} {i}"), answer("y"))
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(traffic(w)) for w in range(12)]
        await asyncio.sleep(1.5)
        proxy.blackhole()
        await asyncio.sleep(5)
        back = time.monotonic()
        proxy.recover()
        deadline = back + 40  # bounded: the bug took 55 s or more
        while time.monotonic() < deadline and not any(h and t > back for t, h in hits):
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*tasks)
        resumed = next((t for t, h in hits if h and t > back), None)
        assert resumed is not None and resumed - back < 15, "hits did not come back with Milvus"
    finally:
        await cache.close()
        proxy.close()
