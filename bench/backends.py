"""Backend lookup scaling: ``python -m bench.backends``.

For the memory backend at each size (default 10k, 100k, 1M entries of 384-d vectors) a child
process fills a :class:`MemoryBackend` through ``put`` and reports the resident memory it took,
``search`` latency (p50 / p99, top-k 10, one partition: the worst case) and recall@1 against
exact search.  The same data goes into a real Milvus server (default 10k and 100k) searched
through :class:`MilvusBackend`.  Vectors: see bench/vectors.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from extproc.cache import MemoryBackend
from extproc.cache.schema import CacheEntry

from . import vectors
from .report import DATASET, exit_on_sigterm, machine, rss_mb, save, summary, table, trim_heap, verdict
from .workload import encode_all, read_pairs

PARTITION = "f" * 64
COLUMNS = [
    "backend",
    "entries",
    "paraphrase_p50_ms",
    "paraphrase_p99_ms",
    "paraphrase_recall@1",
    "fresh_p50_ms",
    "fresh_p99_ms",
    "fresh_recall@1",
    "raw_vectors_mb",
    "rss_mb",
    "rss_over_raw",
    "build_s",
]
DIM = 384


def anchors(count: int, data: Path, backend: str) -> np.ndarray:
    """Embeddings of the first ``count`` distinct QQP questions."""
    from extproc.embedding.loader import load_sentence_model

    encode, _ = load_sentence_model("all-MiniLM-L6-v2", backend=backend)
    seen: dict[str, None] = {}
    for pair in read_pairs(data):
        seen.setdefault(pair.a, None)
        seen.setdefault(pair.b, None)
        if len(seen) >= count:
            break
    return encode_all(encode, list(seen)[:count])


def entry(i: int, vector: np.ndarray, now: float) -> CacheEntry:
    """A stored answer with a real-sized key and a tiny payload (payloads are not measured)."""
    key = f"{i:064x}"
    return CacheEntry(
        id=key,
        model="bench",
        scope="global",
        fingerprint="f",
        partition=PARTITION,
        exact_key=key,
        prompt=f"prompt {i}",
        response={},
        vector=vector,
        created_at=now,
    )


def recall(found: list[int], found_sim: list[float], exact: np.ndarray, exact_sim: np.ndarray) -> float:
    """Share of queries whose top result is the exact nearest row (ties by similarity count)."""
    ok = [
        f == e or abs(fs - es) < 1e-5 for f, fs, e, es in zip(found, found_sim, exact, exact_sim, strict=True)
    ]
    return round(sum(ok) / len(ok), 4) if ok else float("nan")


async def search_all(
    backend: Any, queries: np.ndarray, top_k: int = 10
) -> tuple[list[float], list[int], list[float]]:
    """Time ``backend.search`` per query; return (ms, top-1 row index, top-1 similarity)."""
    times, top, sims = [], [], []
    now = time.time()
    for q in queries:
        started = time.perf_counter()
        found = await backend.search(PARTITION, q, top_k, now)
        times.append((time.perf_counter() - started) * 1000)
        top.append(int(found[0].entry.id, 16) if found else -1)
        sims.append(found[0].similarity if found else -1.0)
    return times, top, sims


async def memory_child(n: int, anchor_file: Path, queries: int) -> dict[str, Any]:
    """Fill a memory backend with ``n`` rows and measure it (run in a fresh process)."""
    base = np.load(anchor_file)
    para, _ = vectors.paraphrase_queries(base, n, queries)
    fresh = vectors.fresh_queries(base, queries)
    rows = list(vectors.chunks(base, n))  # made before measuring: only the backend's memory counts
    gc.collect()
    trim_heap()
    before = rss_mb()
    backend = MemoryBackend(DIM, max_entries=n + 1)
    started, now = time.perf_counter(), time.time()
    for start, data in rows:
        for j in range(len(data)):
            await backend.put(entry(start + j, data[j], now))  # a row of a batch, as the embedder gives
    build_s = time.perf_counter() - started
    gc.collect()
    trim_heap()
    used = rss_mb() - before
    out: dict[str, Any] = {"backend": "memory", "entries": n, "build_s": round(build_s, 1)}
    for name, qs in (("paraphrase", para), ("fresh", fresh)):
        await search_all(backend, qs[:50])  # warm caches
        times, top, sims = await search_all(backend, qs)
        exact, exact_sim = vectors.exact_top1(base, n, qs)
        lat = summary(times)
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = lat["p50"], lat["p99"]
        out[f"{name}_recall@1"] = recall(top, sims, exact, exact_sim)
    raw = n * DIM * 4 / 2**20
    out |= {"raw_vectors_mb": round(raw, 1), "rss_mb": round(used, 1), "rss_over_raw": round(used / raw, 2)}
    return out


def run_memory(n: int, anchor_file: Path, queries: int) -> dict[str, Any]:
    """:func:`memory_child` in a fresh interpreter (so its memory is its own)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.backends", "--child", str(n), "--anchors", str(anchor_file),
         "--queries", str(queries)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {n} entries failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The backend targets of issue 7 against these rows."""
    out = []
    memory = {r["entries"]: r for r in rows if r["backend"] == "memory"}
    for n, limit in ((100_000, 2.0), (1_000_000, 5.0)):
        if n in memory:
            r = memory[n]
            ok = r["paraphrase_p50_ms"] <= limit and r["paraphrase_recall@1"] >= 0.99
            out.append({"target": f"memory search p50 ≤ {limit} ms at {n} with recall@1 ≥ 0.99",
                        "measured": f"{r['paraphrase_p50_ms']} ms, recall {r['paraphrase_recall@1']}",
                        "verdict": verdict(ok)})  # fmt: skip
    for n, r in sorted(memory.items()):
        out.append({"target": f"memory ≤ 2× raw vectors at {n}", "measured": f"{r['rss_over_raw']}×",
                    "verdict": verdict(r["rss_over_raw"] <= 2.0)})  # fmt: skip
    for r in rows:
        if r["backend"] == "milvus" and r["entries"] in memory:
            m = memory[r["entries"]]["paraphrase_p50_ms"]
            out.append({"target": f"milvus lookup p50 ≤ memory + 5 ms at {r['entries']}",
                        "measured": f"{r['paraphrase_p50_ms']} vs {m} ms",
                        "verdict": verdict(r["paraphrase_p50_ms"] <= m + 5)})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every size, print the table, save bench/results/backends.json."""
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--milvus-sizes", type=ints, default=[10_000, 100_000], help="empty to skip Milvus")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--anchors-count", type=int, default=4096)
    p.add_argument("--embedding-backend", default="auto", choices=["auto", "onnx", "torch"])
    p.add_argument("--data", type=Path, default=DATASET)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--anchors", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.child:
        print(json.dumps(asyncio.run(memory_child(args.child, args.anchors, args.queries))))
        return 0
    before = machine()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    anchor_file = tmp / "anchors.npy"
    np.save(anchor_file, anchors(args.anchors_count, args.data, args.embedding_backend))
    rows = []
    for n in args.sizes:
        rows.append(run_memory(n, anchor_file, args.queries))
        print(f"  memory {n}: done", file=sys.stderr)
    if args.milvus_sizes:
        from .milvus_scaling import run_milvus

        rows += run_milvus(args.milvus_sizes, np.load(anchor_file), args.queries, tmp)
    doc = {"benchmark": "backends", "machine_before": before, "machine_after": machine(), "rows": rows}
    doc["targets"] = targets(rows)
    print(table(rows, COLUMNS))
    print()
    print(table(doc["targets"]))
    print(f"\nsaved {save('backends', doc, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
