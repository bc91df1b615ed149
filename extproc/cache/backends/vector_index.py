"""Inner-product vector index for one partition: exact (flat) while small, HNSW when large.

Vectors are L2-normalized, so inner product is cosine similarity.  A flat index answers exactly
and is the fastest below a few thousand rows; past ``hnsw_threshold`` rows the partition moves
to an hnswlib graph (approximate, logarithmic) and the flat copy is dropped, so memory stays
near one copy of the vectors.

A removed row stays in the graph as a tombstone: reusing its slot (hnswlib's
``replace_deleted``) repairs every link around it, 30 ms per add at M=32 on the event loop
once a full cache evicts on every store.  When tombstones outnumber the live rows, a new graph
is built from the live rows in a thread (hnswlib releases the GIL while it adds), the changes
made meanwhile are replayed onto it, and it replaces the old one: for the build's duration a
partition holds two graphs.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import hnswlib
import numpy as np

log = logging.getLogger(__name__)
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
        self._lock = threading.Lock()
        self._journal: list[tuple[int, np.ndarray | None]] | None = None
        """Changes since a rebuild's snapshot (None: no rebuild running); a None vector removes."""
        self._rebuilt: hnswlib.Index | None = None
        self.rebuilds = 0

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
            self._journaled(label, np.array(vector, dtype=np.float32))
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
            self._swap_if_rebuilt()
            if label in self._live:
                self._live.discard(label)
                self._hnsw.mark_deleted(label)
                self._journaled(label, None)
                if self._hnsw.element_count - len(self._live) > max(len(self._live), 1024):
                    self._start_rebuild()
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
        capacity = len(self._labels)
        if capacity > 64 and last < capacity // 4:
            # Give memory back once three quarters are free (halving keeps adds amortized O(1)):
            # a burst of one tenant's entries would otherwise hold its peak until restart.
            self._vectors = self._vectors[: capacity // 2].copy()
            self._labels = self._labels[: capacity // 2].copy()

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
            self._swap_if_rebuilt()
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
        index = self._new_graph(n)
        index.add_items(self._vectors[:n], self._labels[:n])
        self._hnsw = index
        self._live = set(self._row_of)
        self._row_of = {}
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._labels = np.empty(0, dtype=np.int64)

    def _new_graph(self, rows: int) -> hnswlib.Index:
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=max(2 * rows, 1024), ef_construction=self._ef_construction, M=self._m)
        return index

    def _hnsw_add(self, label: int, vector: np.ndarray) -> None:
        self._swap_if_rebuilt()
        assert self._hnsw is not None
        _add(self._hnsw, label, vector)
        self._live.add(label)

    def _journaled(self, label: int, vector: np.ndarray | None) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.append((label, vector))

    def _start_rebuild(self) -> None:
        """Build a graph of the live rows in a thread (one rebuild at a time)."""
        assert self._hnsw is not None
        with self._lock:
            if self._journal is not None:
                return
            self._journal = []
        labels = np.fromiter(self._live, dtype=np.int64, count=len(self._live))
        vectors = np.asarray(self._hnsw.get_items(labels, return_type="numpy"), dtype=np.float32)
        rebuild = threading.Thread(
            target=self._rebuild, args=(labels, vectors), name="hnsw-rebuild", daemon=True
        )
        rebuild.start()

    def _rebuild(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """(thread) Build, or give up (the old graph stays, the next removal tries again)."""
        try:
            self._build(labels, vectors)
        except Exception:
            log.warning("rebuilding a vector index failed; its tombstones stay", exc_info=True)
            with self._lock:
                self._journal = None

    def _build(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """(thread) The new graph; then the changes made meanwhile, until none is left."""
        index = self._new_graph(len(labels))
        if len(labels):
            index.add_items(vectors, labels, num_threads=1)
        while True:
            with self._lock:
                changes, self._journal = self._journal or [], []
                if not changes:
                    self._rebuilt = index  # the event loop swaps it in at its next call
                    return
            _replay(index, changes)

    def _swap_if_rebuilt(self) -> None:
        with self._lock:
            index, self._rebuilt = self._rebuilt, None
            if index is None:
                return
            changes, self._journal = self._journal or [], None
        _replay(index, changes)  # the few made since the thread finished
        self._hnsw = index
        self.rebuilds += 1


def _add(index: hnswlib.Index, label: int, vector: np.ndarray) -> None:
    if index.element_count >= index.max_elements:
        index.resize_index(index.max_elements * 2)
    index.add_items(vector.reshape(1, -1), np.array([label]))


def _replay(index: hnswlib.Index, changes: list[tuple[int, np.ndarray | None]]) -> None:
    for label, vector in changes:
        if vector is not None:
            _add(index, label, vector)
        else:
            with contextlib.suppress(RuntimeError):  # not in this graph
                index.mark_deleted(label)
