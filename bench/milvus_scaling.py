"""The Milvus half of bench/backends.py: a real Milvus 2.3 standalone server, searched through
:class:`MilvusBackend` (partition-key filter, TTL filter, every output field, as in production).

Only one Milvus standalone can run on a machine (it locks /run/milvus/standalone.pid), so this
waits while another one runs, then starts its own on a free port and stops it at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from extproc.app import make_backend
from extproc.cache.backends.milvus.backend import MilvusBackend
from extproc.config.settings import parse_config
from tests.conftest import MilvusServer, milvus_yaml

from . import vectors
from .backends import entry, recall, search_all
from .report import summary

BATCH = 2000


def wait_for_milvus_lock(timeout: float = 600.0, poll: float = 30.0) -> None:
    """Wait while another Milvus standalone runs on this machine (polls every 30 s, up to 10 min)."""
    deadline = time.monotonic() + timeout
    while True:
        running = subprocess.run(
            ["pgrep", "-fa", "milvus run standalone"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not running:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"another Milvus server kept running for {timeout:.0f}s:\n{running}")
        print(
            f"  waiting for another Milvus server to stop: {running.splitlines()[0][:100]}", file=sys.stderr
        )
        time.sleep(poll)


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in process group ``pgid`` (MiB)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[21]) * 4096
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


async def wait_indexed(backend: MilvusBackend, n: int, timeout: float = 1800.0) -> float:
    """Flush and wait until every row is in the vector index; return the seconds it took."""
    client, s = backend._client, backend.settings
    started = time.perf_counter()
    await asyncio.to_thread(client.flush, s.collection)
    name = (await asyncio.to_thread(client.list_indexes, s.collection))[0]
    while time.perf_counter() - started < timeout:
        info = await asyncio.to_thread(client.describe_index, s.collection, name)
        if int(info.get("indexed_rows", 0)) >= n and int(info.get("pending_index_rows", 0)) == 0:
            break
        await asyncio.sleep(1.0)
    return time.perf_counter() - started


async def measure(
    server: MilvusServer, n: int, anchors: np.ndarray, queries: int, tmp: Path
) -> dict[str, Any]:
    """Load ``n`` rows into a fresh collection, index them, time searches and recall."""
    config = milvus_yaml(
        tmp / f"milvus-{n}.yaml",
        server.uri,
        f"bench_{n}_{int(time.time())}",
        search={"consistency_level": "Session"},
        maintenance={"sweep_interval_seconds": 3600},  # no TTL / max_entries sweeps meanwhile
    )
    section = {"backend_type": "milvus", "backend_config_path": str(config), "max_entries": n + 1}
    settings = parse_config({"semantic_cache": section})
    backend = make_backend(settings, anchors.shape[1])
    assert isinstance(backend, MilvusBackend)
    await backend.start()
    if not await backend.wait_ready(120):
        raise RuntimeError(f"Milvus backend not ready: {backend.status()}")
    assert server.process is not None
    rss_before = group_rss_mb(server.process.pid)
    started, now = time.perf_counter(), time.time()
    client, collection = backend._client, backend.settings.collection
    for start, data in vectors.chunks(anchors, n):
        rows = [backend.row(entry(start + j, data[j], now)) for j in range(len(data))]
        for i in range(0, len(rows), BATCH):
            await asyncio.to_thread(client.insert, collection, rows[i : i + BATCH])
    insert_s = time.perf_counter() - started
    index_s = await wait_indexed(backend, n)
    out: dict[str, Any] = {"backend": "milvus", "entries": n, "build_s": round(insert_s + index_s, 1)}
    para, _ = vectors.paraphrase_queries(anchors, n, queries)
    fresh = vectors.fresh_queries(anchors, queries)
    for name, qs in (("paraphrase", para), ("fresh", fresh)):
        await search_all(backend, qs[:50])
        times, top, sims = await search_all(backend, qs)
        exact, exact_sim = vectors.exact_top1(anchors, n, qs)
        lat = summary(times)
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = lat["p50"], lat["p99"]
        out[f"{name}_recall@1"] = recall(top, sims, exact, exact_sim)
    raw = n * anchors.shape[1] * 4 / 2**20
    used = group_rss_mb(server.process.pid) - rss_before
    out |= {"raw_vectors_mb": round(raw, 1), "rss_mb": round(used, 1), "rss_over_raw": round(used / raw, 2)}
    await asyncio.to_thread(client.drop_collection, collection)
    await backend.close()
    return out


def run_milvus(sizes: list[int], anchors: np.ndarray, queries: int, tmp: Path) -> list[dict[str, Any]]:
    """Start a Milvus server, measure each size, stop the server."""
    wait_for_milvus_lock()
    data = tmp / "milvus"
    data.mkdir(parents=True, exist_ok=True)
    server = MilvusServer(data)
    server.start()
    try:
        rows = []
        for n in sizes:
            rows.append(asyncio.run(measure(server, n, anchors, queries, tmp)))
            print(f"  milvus {n}: done", file=sys.stderr)
        return rows
    finally:
        server.stop(graceful=True)
