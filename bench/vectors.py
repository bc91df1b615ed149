"""Sentence-like 384-d vectors at any scale, reproducible chunk by chunk.

Real embeddings of QQP questions are the *anchors*; entry ``i`` is an anchor pushed in a random
direction (cosine ≈ 0.86 to its anchor), so the data keeps the clustered, low-dimensional shape
of sentence embeddings while a million rows need only a few thousand encoded questions.  Chunks
are generated from (seed, chunk number), so the same rows can be produced again for the exact
search that recall is measured against, without holding every row in memory.

Two query sets: *paraphrase* queries (a stored row pushed slightly, cosine ≈ 0.93, like a cache
hit) and *fresh* queries (a new point around an anchor: its nearest row is a near-tie among the
cluster, the hard case for an approximate index).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK = 10_000
SPREAD = 0.6
PARAPHRASE = 0.4


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _push(rng: np.random.Generator, base: np.ndarray, amount: float) -> np.ndarray:
    noise = _unit(rng.standard_normal(base.shape, dtype=np.float32))
    return _unit(base + amount * noise)


def chunk(anchors: np.ndarray, number: int, size: int, seed: int = 7) -> np.ndarray:
    """Rows ``number * CHUNK`` .. ``+ size`` of the data set."""
    rng = np.random.default_rng([seed, number])
    return _push(rng, anchors[rng.integers(0, len(anchors), size)], SPREAD)


def chunks(anchors: np.ndarray, n: int, seed: int = 7) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) for the whole data set of ``n`` rows."""
    for number, start in enumerate(range(0, n, CHUNK)):
        yield start, chunk(anchors, number, min(CHUNK, n - start), seed)


def paraphrase_queries(
    anchors: np.ndarray, n: int, count: int, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, index of the stored row each was made from)."""
    rng = np.random.default_rng([seed, 10**6])
    sources = np.sort(rng.choice(n, size=min(count, n), replace=False))
    rows = np.empty((len(sources), anchors.shape[1]), dtype=np.float32)
    for start, data in chunks(anchors, n, seed):
        mine = (sources >= start) & (sources < start + len(data))
        rows[mine] = data[sources[mine] - start]
    return _push(rng, rows, PARAPHRASE), sources


def fresh_queries(anchors: np.ndarray, count: int, seed: int = 7) -> np.ndarray:
    """New points around random anchors (not derived from any stored row)."""
    rng = np.random.default_rng([seed, 2 * 10**6])
    return _push(rng, anchors[rng.integers(0, len(anchors), count)], SPREAD)


def exact_top1(
    anchors: np.ndarray, n: int, queries: np.ndarray, seed: int = 7
) -> tuple[np.ndarray, np.ndarray]:
    """(index, similarity) of the most similar row for each query, by brute force over ``n`` rows."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    where = np.zeros(len(queries), dtype=np.int64)
    for start, data in chunks(anchors, n, seed):
        scores = queries @ data.T
        top = scores.argmax(axis=1)
        value = scores[np.arange(len(queries)), top]
        better = value > best
        best[better] = value[better]
        where[better] = top[better] + start
    return where, best
