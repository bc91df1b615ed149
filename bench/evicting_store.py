"""Stores into a full memory cache: ``python -m bench.evicting_store``.

A memory cache whose partition is past the HNSW switch (``hnsw_threshold``, 10,000 rows) and
full: every store evicts one entry. Each store runs on the event loop, so its time is added to
every request in flight. Reported against the lone-query encode floor measured in the same run
(the cost of a semantic lookup's embedding, bench/e2e.py). Before the tombstone rebuild a store
reused the evicted row's slot in the graph, and hnswlib repaired its neighbourhood, and the store
that crossed the HNSW switch built the graph on the event loop (seconds); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from extproc.cache import MemoryBackend
from extproc.cache.schema import CacheEntry
from extproc.embedding.loader import load_sentence_model

from .e2e import encode_floor

DIM = 384


def _entry(i: int, rng: np.random.Generator) -> CacheEntry:
    vector = rng.normal(size=DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    key = f"{i:064x}"
    now = time.time()
    return CacheEntry(key, "m", "global", "f", "p" * 64, key, f"prompt {i}", {}, vector, now, now + 3600)


async def _stores(backend: MemoryBackend, first: int, count: int, rng: np.random.Generator) -> list[float]:
    times = []
    for i in range(first, first + count):
        started = time.perf_counter()
        await backend.put(_entry(i, rng))
        times.append((time.perf_counter() - started) * 1000)
    return times


async def run(entries: int, stores: int) -> dict[str, float]:
    """Fill a cache of ``entries``, then time ``stores`` evicting stores (ms)."""
    rng = np.random.default_rng(0)
    backend = MemoryBackend(DIM, max_entries=entries)
    fill = await _stores(backend, 0, entries, rng)
    evicting = await _stores(backend, entries, stores, rng)
    return {
        "fill_ms_median": round(statistics.median(fill), 3),
        "fill_ms_max": round(max(fill), 3),  # the store that crosses the HNSW switch
        "evicting_ms_median": round(statistics.median(evicting), 3),
        "evicting_ms_mean": round(statistics.fmean(evicting), 3),
        "evicting_ms_max": round(max(evicting), 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the store times and their ratio to the encode floor."""
    parser = argparse.ArgumentParser(prog="python -m bench.evicting_store", description=__doc__)
    parser.add_argument("--entries", type=int, default=12_000, help="max_entries (past the HNSW switch)")
    parser.add_argument("--stores", type=int, default=5_000, help="evicting stores timed")
    args = parser.parse_args(argv)
    encode, _ = load_sentence_model("all-MiniLM-L6-v2")
    floor = encode_floor(encode, [f"How do I bake bread number {i}?" for i in range(50)], n=100)["single_ms"]
    result = asyncio.run(run(args.entries, args.stores))
    for name, value in result.items():
        print(f"{name:22} {value:8.3f} ms  ({value / floor:.2f}x the lone-query encode floor {floor:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
