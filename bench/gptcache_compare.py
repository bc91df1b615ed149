"""Side by side with GPTCache: ``python -m bench.gptcache_compare`` (needs ``pip install -e '.[bench]'``).

Same model (the packaged all-MiniLM-L6-v2), same QQP pairs, same threshold.  The first question
of every pair is stored with an answer naming it; the second is looked up.  A hit is correct when
it returns the answer of its own pair and the pair is a duplicate (label 1).  Precision = correct
hits / hits, recall = correct hits / duplicate pairs.  Timed: ``SemanticCache.check`` against
GPTCache's ``get`` per query (lone queries, as at concurrency 1), and inserts (embed + store)
against ``put``.

GPTCache runs its own way (SBERT on torch, faiss, sqlite, ``SearchDistanceEvaluation``) and, to
separate the cache machinery from the encoder, a second time with our encoder.  Our cosine
threshold t is GPTCache's (1 + t) / 2: its score is 4 − L2² = 2 + 2·cos on unit vectors, and a
hit needs score ≥ 4 × threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
from extproc.cache.guards import build_guards
from extproc.config.settings import CacheSettings
from extproc.embedding.base import resolve_model_path
from extproc.embedding.batcher import Embedder
from extproc.embedding.loader import load_sentence_model
from extproc.protocol.openai import exact_key, partition_key

from .report import DATASET, exit_on_sigterm, machine, save, summary, table, verdict
from .workload import Pair, read_pairs

MODEL = "all-MiniLM-L6-v2"


def query(prompt: str) -> CacheQuery:
    """A lookup in one partition (one model, global scope)."""
    return CacheQuery(
        model="m",
        scope="global",
        fingerprint="f",
        prompt=prompt,
        partition=partition_key("m", "global", "f"),
        exact_key=exact_key("m", "global", "f", prompt),
    )


def answer(i: int) -> dict[str, Any]:
    """The stored completion for pair ``i``."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}}]}


def quality(pairs: list[Pair], found: list[int | None]) -> dict[str, float]:
    """Hits, precision and recall from the pair index each lookup returned (None: miss)."""
    hits = sum(f is not None for f in found)
    correct = sum(f == i and p.label == 1 for i, (p, f) in enumerate(zip(pairs, found, strict=True)))
    positives = sum(p.label == 1 for p in pairs)
    return {
        "hits": hits,
        "precision": round(correct / hits, 4) if hits else float("nan"),
        "recall": round(correct / positives, 4) if positives else float("nan"),
    }


async def run_ours(
    pairs: list[Pair], encode: Any, dim: int, threshold: float, guards: bool = False
) -> dict[str, Any]:
    """Insert every first question, look up every second one, through SemanticCache (with the
    shipped guards when ``guards``, built by the server's own :func:`build_guards`)."""
    embedder = Embedder(encode, dim)
    chosen = await build_guards(CacheSettings(), embedder) if guards else []
    cache = SemanticCache(MemoryBackend(dim, max_entries=len(pairs) + 1), embedder, threshold, guards=chosen)
    started = time.perf_counter()
    for i, p in enumerate(pairs):
        await cache.store(query(p.a), answer(i))
    insert_s = time.perf_counter() - started
    times, found = [], []
    for p in pairs:
        t = time.perf_counter()
        result = await cache.check(query(p.b))
        times.append((time.perf_counter() - t) * 1000)
        content = result.entry.response["choices"][0]["message"]["content"] if result.entry else None
        found.append(int(content.split()[1]) if content else None)
    cache.embedder.close()
    return {"inserts_per_s": round(len(pairs) / insert_s, 1), **latency(times), **quality(pairs, found)}


def run_gptcache(
    pairs: list[Pair], embed: Callable[..., np.ndarray], threshold: float, tmp: Path
) -> dict[str, Any]:
    """The same through GPTCache's put / get (faiss + sqlite, distance evaluation)."""
    from gptcache import Cache, Config
    from gptcache.adapter.api import get, put
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    tmp.mkdir(parents=True, exist_ok=True)
    cache = Cache()
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=embed,
        data_manager=get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{tmp / 'gptcache.db'}"),
            VectorBase("faiss", dimension=384, index_path=str(tmp / "faiss.index")),
        ),
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=(1 + threshold) / 2),
    )
    started = time.perf_counter()
    for i, p in enumerate(pairs):
        put(p.a, f"answer {i}", cache_obj=cache)
    insert_s = time.perf_counter() - started
    times, found = [], []
    for p in pairs:
        t = time.perf_counter()
        hit = get(p.b, cache_obj=cache)
        times.append((time.perf_counter() - t) * 1000)
        found.append(int(hit.split()[1]) if hit else None)
    return {"inserts_per_s": round(len(pairs) / insert_s, 1), **latency(times), **quality(pairs, found)}


def latency(times: list[float]) -> dict[str, float]:
    """Lookup p50 / p90 / p99 in ms."""
    s = summary(times)
    return {"lookup_p50_ms": s["p50"], "lookup_p90_ms": s["p90"], "lookup_p99_ms": s["p99"]}


def main(argv: list[str] | None = None) -> int:
    """Run both, print the table, save bench/results/gptcache.json."""
    p = argparse.ArgumentParser(prog="python -m bench.gptcache_compare", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1000, help="QQP pairs (both labels, file order)")
    p.add_argument("--threshold", type=float, default=CacheSettings().similarity_threshold)
    p.add_argument("--embedding-backend", default="auto", choices=["auto", "onnx", "torch"])
    p.add_argument("--data", type=Path, default=DATASET)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    exit_on_sigterm()
    before = machine()
    pairs = list(read_pairs(args.data, limit=args.pairs))
    encode, dim = load_sentence_model(MODEL, backend=args.embedding_backend)
    rows = [
        {"system": f"ours, shipped guards ({args.embedding_backend})"}
        | asyncio.run(run_ours(pairs, encode, dim, args.threshold, guards=True)),
        {"system": f"ours, cosine only ({args.embedding_backend})"}
        | asyncio.run(run_ours(pairs, encode, dim, args.threshold)),
    ]
    try:
        import gptcache  # noqa: F401
    except ImportError:
        print("gptcache is not installed (pip install -e '.[bench]'): our side only", file=sys.stderr)
    else:
        from gptcache.embedding import SBERT

        logging.getLogger("gptcache").setLevel(logging.WARNING)
        tmp = Path(tempfile.mkdtemp(prefix="bench-gptcache-"))
        sbert = SBERT(str(resolve_model_path(MODEL)))
        rows.append(
            {"system": "GPTCache (SBERT, torch)"}
            | run_gptcache(pairs, sbert.to_embeddings, args.threshold, tmp / "sbert")
        )

        def ours_encoder(text: str, **_: Any) -> np.ndarray:
            return encode([text])[0]

        rows.append(
            {"system": "GPTCache + our encoder"}
            | run_gptcache(pairs, ours_encoder, args.threshold, tmp / "ours")
        )
    doc: dict[str, Any] = {
        "benchmark": "gptcache",
        "machine_before": before,
        "machine_after": machine(),
        "settings": {
            "pairs": len(pairs),
            "threshold": args.threshold,
            "gptcache_threshold": (1 + args.threshold) / 2,
        },
        "rows": rows,
        "targets": targets(rows),
    }
    print(table(rows))
    print()
    print(table(doc["targets"]))
    print(f"\nsaved {save('gptcache', doc, args.out)}")
    return 0


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lookup ≤ 0.5× GPTCache's and precision ≥ GPTCache's (ours as shipped, guards on), against
    each GPTCache row."""
    ours, out = rows[0], []
    for theirs in (r for r in rows if r["system"].startswith("GPTCache")):
        ratio = ours["lookup_p50_ms"] / theirs["lookup_p50_ms"]
        out.append({"target": f"lookup p50 ≤ 0.5× {theirs['system']}", "measured": f"{ratio:.2f}×",
                    "verdict": verdict(ratio <= 0.5)})  # fmt: skip
        out.append({"target": f"precision ≥ {theirs['system']}",
                    "measured": f"{ours['precision']} vs {theirs['precision']}",
                    "verdict": verdict(ours["precision"] >= theirs["precision"])})  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
