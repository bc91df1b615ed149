"""Inner-product vector index for one partition: exact (flat) while small, HNSW when large.

Vectors are L2-normalized, so inner product is cosine similarity.  A flat index answers exactly
and is the fastest below a few thousand rows; past ``hnsw_threshold`` rows the partition moves
to an hnswlib graph (approximate, logarithmic) and the flat copy is dropped, so memory stays
near one copy of the vectors.

Graphs are built in a thread (hnswlib releases the GIL while it adds rows), never on the event
loop: the first from a copy of the flat rows, which keep serving until it is ready (10,000 rows
took seconds); later ones from the live rows of the current graph. A removed row stays in the
graph as a tombstone (reusing its slot, hnswlib's ``replace_deleted``, repairs every link around
it: 30 ms per add at M=32 once a full cache evicts on every store); when tombstones reach half
the live rows, a new graph is built. Meanwhile the old graph only loses rows (marked deleted)
and new rows wait in a small exact-searched set; the changes made during the build are replayed
onto the new graph, which then replaces the old one: for the build's duration a partition holds
two graphs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

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
        self._pending: VectorIndex | None = None
        """Rows added to a graph partition while its next graph builds (a flat index)."""
        self._lock = threading.Lock()
        self._journal: list[tuple[int, np.ndarray | None]] | None = None
        """Changes since a build's snapshot (None: no build running); a None vector removes."""
        self._built: hnswlib.Index | None = None
        self._failed = False
        self._retry_at = 0.0
        self.rebuilds = 0
        """Graphs swapped in (the first one included)."""
        self.min_tombstones = 1024
        """Fewer tombstones never start a rebuild (a small partition rebuilds for nothing)."""

    def __len__(self) -> int:
        return len(self._live) if self._hnsw is not None else len(self._row_of)

    def __contains__(self, label: int) -> bool:
        return label in (self._live if self._hnsw is not None else self._row_of)

    @property
    def is_hnsw(self) -> bool:
        """True once the partition uses the approximate graph."""
        return self._hnsw is not None

    def add(self, label: int, vector: np.ndarray) -> None:
        """Insert one vector (already normalized) under ``label``."""
        self._swap_if_built()
        self._journaled(label, vector)
        if self._hnsw is None:
            self._flat_add(label, vector)
            if len(self._row_of) > self.hnsw_threshold:
                self._start_build()
            return
        if self._pending is not None:  # the old graph is being read: it takes no row meanwhile
            self._pending.add(label, vector)
        else:
            _add(self._hnsw, label, vector)
        self._live.add(label)

    def remove(self, label: int) -> None:
        """Delete ``label``; unknown labels are ignored."""
        self._swap_if_built()
        if self._hnsw is None:
            if label in self._row_of:
                self._journaled(label, None)
                self._flat_remove(label)
            return
        if label not in self._live:
            return
        self._live.discard(label)
        self._journaled(label, None)
        if self._pending is not None and label in self._pending:
            self._pending.remove(label)
            return
        self._hnsw.mark_deleted(label)
        in_graph = len(self._live) - (len(self._pending) if self._pending is not None else 0)
        if self._hnsw.element_count - in_graph > max(len(self._live) // 2, self.min_tombstones):
            self._start_build()

    def vector(self, label: int) -> np.ndarray | None:
        """A copy of the stored vector of ``label`` (export), or None if it is not here."""
        if self._hnsw is not None:
            if label not in self._live:
                return None
            waiting = self._pending.vector(label) if self._pending is not None else None
            if waiting is not None:
                return waiting
            return np.asarray(self._hnsw.get_items([label], return_type="list")[0], dtype=np.float32)
        row = self._row_of.get(label)
        return None if row is None else self._vectors[row].copy()

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` (label, similarity) pairs, most similar first."""
        self._swap_if_built()
        n = len(self)
        if n == 0:
            return []
        k = min(k, n)
        if self._hnsw is None:
            scores = self._vectors[:n] @ vector
            if k < n:
                top = np.argpartition(-scores, k - 1)[:k]
                top = top[np.argsort(-scores[top])]
            else:
                top = np.argsort(-scores)
            return [(int(self._labels[i]), float(scores[i])) for i in top]
        found: list[tuple[int, float]] = []
        waiting = len(self._pending) if self._pending is not None else 0
        in_graph = min(k, n - waiting)
        if in_graph > 0:
            self._hnsw.set_ef(max(self._ef_search, in_graph))
            labels, distances = self._hnsw.knn_query(vector, k=in_graph)
            # hnswlib's "ip" space returns 1 - <a, b>.
            found = [(int(lab), 1.0 - float(d)) for lab, d in zip(labels[0], distances[0], strict=True)]
        if waiting and self._pending is not None:
            found += self._pending.search(vector, k)
            found.sort(key=lambda pair: pair[1], reverse=True)
        return found[:k]

    # --- the flat rows ---------------------------------------------------------------------

    def _flat_add(self, label: int, vector: np.ndarray) -> None:
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

    def _flat_remove(self, label: int) -> None:
        row = self._row_of.pop(label)
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

    # --- building graphs (in a thread) -----------------------------------------------------

    def _journaled(self, label: int, vector: np.ndarray | None) -> None:
        with self._lock:
            if self._journal is not None:
                copied = None if vector is None else np.array(vector, dtype=np.float32)
                self._journal.append((label, copied))

    def _start_build(self) -> None:
        """Build the next graph in a thread (one build at a time; a failed one waits a minute)."""
        with self._lock:
            if self._journal is not None or time.monotonic() < self._retry_at:
                return
            self._journal = []
        if self._hnsw is None:  # the first graph: from a copy of the flat rows, which keep serving
            n = len(self._row_of)
            rows: tuple[hnswlib.Index | None, np.ndarray, np.ndarray | None] = (
                None,
                self._labels[:n].copy(),
                self._vectors[:n].copy(),
            )
        else:  # from the graph's live rows, read in the thread
            self._pending = VectorIndex(self.dim, hnsw_threshold=sys.maxsize)
            rows = (self._hnsw, np.fromiter(self._live, dtype=np.int64, count=len(self._live)), None)
        threading.Thread(target=self._build, args=rows, name="hnsw-build", daemon=True).start()

    def _build(self, old: hnswlib.Index | None, labels: np.ndarray, vectors: np.ndarray | None) -> None:
        """(thread) The new graph; then the changes made meanwhile, until none is left."""
        try:
            if vectors is None:
                assert old is not None
                labels, vectors = _read_rows(old, labels, self.dim)
            index = self._new_graph(len(labels))
            if len(labels):
                index.add_items(vectors, labels, num_threads=1)
            while True:
                with self._lock:
                    changes, self._journal = self._journal or [], []
                    if not changes:
                        self._built = index  # the event loop swaps it in at its next call
                        return
                _replay(index, changes)
        except Exception:
            log.warning("building a vector index failed; the current one stays", exc_info=True)
            with self._lock:
                self._failed = True

    def _swap_if_built(self) -> None:
        if self._built is None and not self._failed:
            return
        with self._lock:
            index, self._built = self._built, None
            failed, self._failed = self._failed, False
            changes, self._journal = self._journal or [], None
        if failed or index is None:
            self._retry_at = time.monotonic() + 60.0
            if self._hnsw is not None and self._pending is not None:  # the waiting rows go in
                for label, row in self._pending._row_of.items():
                    _add(self._hnsw, label, self._pending._vectors[row])
            self._pending = None
            return
        _replay(index, changes)  # the few made since the thread finished
        if self._hnsw is None:
            self._live = set(self._row_of)
            self._row_of = {}
            self._vectors = np.empty((0, self.dim), dtype=np.float32)
            self._labels = np.empty(0, dtype=np.int64)
        self._hnsw, self._pending = index, None
        self.rebuilds += 1

    def _new_graph(self, rows: int) -> hnswlib.Index:
        index = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=max(2 * rows, 1024), ef_construction=self._ef_construction, M=self._m)
        return index


def _read_rows(index: hnswlib.Index, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(thread) The rows of ``labels`` still in ``index``, a few hundred at a time (each read
    holds the GIL; as lists: hnswlib's numpy form took 1.2 s for 12,000 rows, lists 0.2 s)."""
    kept: list[int] = []
    parts: list[np.ndarray] = [np.empty((0, dim), dtype=np.float32)]
    for start in range(0, len(labels), 256):
        chunk = [int(x) for x in labels[start : start + 256]]
        try:
            rows = index.get_items(chunk, return_type="list")
            kept += chunk
        except RuntimeError:  # one was removed meanwhile: row by row
            rows = []
            for label in chunk:
                with contextlib.suppress(RuntimeError):
                    rows += index.get_items([label], return_type="list")
                    kept.append(label)
        parts.append(np.asarray(rows, dtype=np.float32).reshape(-1, dim))  # per chunk: short GIL holds
    return np.asarray(kept, dtype=np.int64), np.concatenate(parts)


def _add(index: hnswlib.Index, label: int, vector: np.ndarray) -> None:
    if index.element_count >= index.max_elements:
        index.resize_index(index.max_elements * 2)
    index.add_items(np.asarray(vector, dtype=np.float32).reshape(1, -1), np.array([label]))


def _replay(index: hnswlib.Index, changes: list[tuple[int, np.ndarray | None]]) -> None:
    for label, vector in changes:
        if vector is not None:
            _add(index, label, vector)
        else:
            with contextlib.suppress(RuntimeError):  # not in this graph
                index.mark_deleted(label)
