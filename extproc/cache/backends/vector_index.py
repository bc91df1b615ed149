"""Inner-product vector index for one partition: exact (flat) while small, HNSW when large.

Vectors are L2-normalized, so inner product is cosine similarity.  A flat index answers exactly
and is the fastest below a few thousand rows; past ``hnsw_threshold`` rows the partition moves
to an hnswlib graph (approximate, logarithmic) and the flat copy is dropped, so memory stays
near one copy of the vectors.
"""

from __future__ import annotations

import hnswlib
import numpy as np

_blas_limited = False


def limit_numpy_blas_threads() -> None:
    """Run numpy's OpenBLAS on one thread (once per process).

    A flat search is one small matrix-vector product; with a second BLAS thread it waits for a
    core that Envoy and the embedder share: measured 8x slower (p50 6 ms vs 0.8 ms at 10k rows)
    on a busy 2-core machine.  The embedding runtimes keep their own thread pools.
    """
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


class VectorIndex:
    """Add / remove / search float32 vectors under integer labels.

    HNSW parameters (bench/README.md, 1M sentence-like rows): M=16 / ef=96 found the exact
    nearest row for 94.7% of paraphrase queries, and needed ef=600 to reach 99%; M=32 / ef=256
    finds 99.4% at 0.3 ms p50, for 128 more bytes per row (the vectors are 1536).
    """

    def __init__(
        self,
        dim: int,
        hnsw_threshold: int = 10_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 100,
        hnsw_ef_search: int = 256,
    ) -> None:
        limit_numpy_blas_threads()
        self.dim = dim
        self.hnsw_threshold = hnsw_threshold
        self._m = hnsw_m
        self._ef_construction = hnsw_ef_construction
        self._ef_search = hnsw_ef_search
        self._vectors = np.empty((16, dim), dtype=np.float32)
        self._labels = np.empty(16, dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._hnsw: hnswlib.Index | None = None
        self._live: set[int] = set()

    def __len__(self) -> int:
        return len(self._live) if self._hnsw is not None else len(self._row_of)

    @property
    def is_hnsw(self) -> bool:
        """True once the partition uses the approximate graph."""
        return self._hnsw is not None

    def add(self, label: int, vector: np.ndarray) -> None:
        """Insert one vector (already normalized) under ``label``."""
        if self._hnsw is not None:
            self._hnsw_add(label, vector)
            return
        n = len(self._row_of)
        if n == len(self._labels):
            # Not np.resize: it fills the new half, making every page resident at once.
            vectors = np.empty((n * 2, self.dim), dtype=np.float32)
            vectors[:n] = self._vectors
            labels = np.empty(n * 2, dtype=np.int64)
            labels[:n] = self._labels
            self._vectors, self._labels = vectors, labels
        self._vectors[n] = vector
        self._labels[n] = label
        self._row_of[label] = n
        if n + 1 > self.hnsw_threshold:
            self._to_hnsw()

    def remove(self, label: int) -> None:
        """Delete ``label``; unknown labels are ignored."""
        if self._hnsw is not None:
            if label in self._live:
                self._live.discard(label)
                self._hnsw.mark_deleted(label)
            return
        row = self._row_of.pop(label, None)
        if row is None:
            return
        last = len(self._row_of)
        if row != last:
            moved = int(self._labels[last])
            self._vectors[row] = self._vectors[last]
            self._labels[row] = moved
            self._row_of[moved] = row

    def vector(self, label: int) -> np.ndarray | None:
        """A copy of the stored vector of ``label`` (export), or None if it is not here."""
        if self._hnsw is not None:
            if label not in self._live:
                return None
            return np.asarray(self._hnsw.get_items([label])[0], dtype=np.float32)
        row = self._row_of.get(label)
        return None if row is None else self._vectors[row].copy()

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (label, similarity) pairs, most similar first."""
        n = len(self)
        if n == 0:
            return []
        k = min(k, n)
        if self._hnsw is not None:
            self._hnsw.set_ef(max(self._ef_search, k))
            labels, distances = self._hnsw.knn_query(vector, k=k)
            # hnswlib's "ip" space returns 1 - <a, b>.
            return [(int(lab), 1.0 - float(d)) for lab, d in zip(labels[0], distances[0], strict=True)]
        scores = self._vectors[:n] @ vector
        if k < n:
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top])]
        else:
            top = np.argsort(-scores)
        return [(int(self._labels[i]), float(scores[i])) for i in top]

    def _to_hnsw(self) -> None:
        n = len(self._row_of)
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(
            max_elements=max(2 * n, 1024),
            ef_construction=self._ef_construction,
            M=self._m,
            allow_replace_deleted=True,
        )
        index.add_items(self._vectors[:n], self._labels[:n])
        self._hnsw = index
        self._live = set(self._row_of)
        self._row_of = {}
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._labels = np.empty(0, dtype=np.int64)

    def _hnsw_add(self, label: int, vector: np.ndarray) -> None:
        assert self._hnsw is not None
        index = self._hnsw
        deleted = index.element_count - len(self._live)
        if deleted == 0 and index.element_count >= index.max_elements:
            index.resize_index(index.max_elements * 2)
        index.add_items(vector.reshape(1, -1), np.array([label]), replace_deleted=deleted > 0)
        self._live.add(label)
