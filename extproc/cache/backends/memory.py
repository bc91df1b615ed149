"""In-memory backend: one vector index per partition, bounded size, absolute TTL."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import numpy as np

from extproc.cache.backends.eviction import make_policy
from extproc.cache.backends.vector_index import VectorIndex
from extproc.cache.schema import CacheEntry, Candidate, EntryFilter

_NO_VECTOR = np.empty(0, dtype=np.float32)


class MemoryBackend:
    """Entries in process memory; lost on restart, never shared between replicas."""

    name = "memory"

    def __init__(
        self,
        dim: int,
        max_entries: int = 10_000,
        eviction_policy: str = "lru",
        hnsw_threshold: int = 10_000,
    ) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self._policy = make_policy(eviction_policy)
        self._hnsw_threshold = hnsw_threshold
        self._labels = itertools.count(1)
        self._entries: dict[int, CacheEntry] = {}
        self._label_of: dict[str, int] = {}
        self._exact: dict[str, int] = {}
        self._partitions: dict[str, VectorIndex] = {}
        self._expiry: list[tuple[float, int]] = []  # a heap: imported entries expire in any order
        self.evictions = 0
        self._evidence: dict[str, tuple[float, str]] = {}
        """owner -> (written at, document): see :class:`~extproc.cache.schema.EvidenceStore`."""

    async def get_exact(self, exact_key: str, now: float) -> CacheEntry | None:
        """The live entry stored under ``exact_key``, if any."""
        label = self._exact.get(exact_key)
        if label is None:
            return None
        entry = self._entries[label]
        if entry.expired(now):
            self._remove(label)
            return None
        return entry

    async def search(self, partition: str, vector: np.ndarray, top_k: int, now: float) -> list[Candidate]:
        """Up to ``top_k`` live entries of ``partition``, most similar first."""
        self._purge_expired(now)
        index = self._partitions.get(partition)
        if index is None:
            return []
        out: list[Candidate] = []
        for label, score in index.search(vector, top_k):
            entry = self._entries.get(label)
            if entry is None:
                continue
            if entry.expired(now):
                self._remove(label)
                continue
            out.append(Candidate(entry, score, index.vector(label)))
        return out

    async def put(self, entry: CacheEntry) -> None:
        """Store ``entry``, replacing any entry with the same exact key; evict when full."""
        self._purge_expired(entry.created_at)
        old = self._exact.get(entry.exact_key)
        if old is not None:
            self._remove(old)
        while len(self._entries) >= self.max_entries:
            victim = self._policy.victim()
            if victim is None:
                break
            self._remove(victim)
            self.evictions += 1
        label = next(self._labels)
        vector = np.ascontiguousarray(entry.vector, dtype=np.float32)
        # The index keeps its own copy; holding this one too would double the memory (and a row
        # of an embedding batch would pin the whole batch).
        entry = replace(entry, vector=_NO_VECTOR)  # the caller's entry keeps its vector
        self._entries[label] = entry
        self._label_of[entry.id] = label
        self._exact[entry.exact_key] = label
        index = self._partitions.get(entry.partition)
        if index is None:
            index = self._partitions[entry.partition] = VectorIndex(self.dim, self._hnsw_threshold)
        index.add(label, vector)
        self._policy.added(label)
        if entry.expires_at > 0:
            heapq.heappush(self._expiry, (entry.expires_at, label))
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            # Tuples of evicted / deleted / replaced entries: rebuild from the live ones (amortized O(1)).
            self._expiry = [(e.expires_at, lb) for lb, e in self._entries.items() if e.expires_at > 0]
            heapq.heapify(self._expiry)

    async def record_hit(self, entry: CacheEntry) -> None:
        """Count the hit and update LRU / LFU order."""
        label = self._label_of.get(entry.id)
        if label is not None:
            entry.hits += 1
            self._policy.used(label)

    async def count(self) -> int:
        """Number of live entries."""
        self._purge_expired(time.time())
        return len(self._entries)

    @property
    def known_entries(self) -> int:
        """Live entries now (for metrics)."""
        self._purge_expired(time.time())
        return len(self._entries)

    async def start(self) -> None:
        """Nothing to start."""

    def status(self) -> tuple[str, str]:
        """Always ready."""
        return "ready", f"memory backend: {self.known_entries} entries"

    async def close(self) -> None:
        """Nothing to release."""

    # --- documents beside the entries (verification evidence) ----------------------------

    async def save_evidence(self, owner: str, document: str, now: float) -> None:
        """Keep ``owner``'s document (in this process: replicas share nothing here)."""
        self._evidence[owner] = (now, document)

    async def load_evidence(self, since: float) -> dict[str, str]:
        """Every owner's document written at ``since`` or later; older ones are dropped."""
        for owner in [o for o, (at, _) in self._evidence.items() if at < since]:
            del self._evidence[owner]
        return {owner: document for owner, (_, document) in self._evidence.items()}

    # --- bulk operations (admin API) -------------------------------------------------------

    async def entries(
        self, selector: EntryFilter, now: float, batch_size: int = 256, vectors: bool = True
    ) -> AsyncIterator[list[CacheEntry]]:
        """Every live selected entry, in batches, from a snapshot taken at the first batch."""
        self._purge_expired(now)
        snapshot = [(lb, e) for lb, e in self._entries.items() if not e.expired(now) and selector.matches(e)]
        for start in range(0, len(snapshot), batch_size):
            batch = [self._current(lb, e, selector, now) for lb, e in snapshot[start : start + batch_size]]
            yield [self._with_vector(lb, e) if vectors else e for lb, e in filter(None, batch)]
            await asyncio.sleep(0)  # let requests run between batches

    def _current(
        self, label: int, entry: CacheEntry, selector: EntryFilter, now: float
    ) -> tuple[int, CacheEntry] | None:
        """The snapshot's ``entry`` as it is now: itself, the entry that replaced it under its exact
        key since (a refresh: an export must still hold that key), or None if it is gone."""
        if self._entries.get(label) is entry:
            return label, entry
        newer = self._exact.get(entry.exact_key)
        current = self._entries.get(newer) if newer is not None else None
        if current is None or current.expired(now) or not selector.matches(current):
            return None  # evicted or deleted since the snapshot (its vector too)
        return newer, current

    def _with_vector(self, label: int, entry: CacheEntry) -> CacheEntry:
        """A copy of ``entry`` carrying its vector (entries do not keep one; the index does)."""
        index = self._partitions.get(entry.partition)
        vector = index.vector(label) if index is not None else None
        return replace(entry, vector=vector if vector is not None else _NO_VECTOR)

    async def count_matching(self, selector: EntryFilter, now: float) -> int:
        """Number of live selected entries."""
        self._purge_expired(now)
        if selector.everything:
            return len(self._entries)
        return sum(1 for e in self._entries.values() if not e.expired(now) and selector.matches(e))

    async def nearest(
        self, vector: np.ndarray, selector: EntryFilter, limit: int, now: float
    ) -> list[Candidate]:
        """Up to ``limit`` live selected entries of any partition, most similar first."""
        self._purge_expired(now)
        query = np.ascontiguousarray(vector, dtype=np.float32)
        found: list[Candidate] = []
        for index in list(self._partitions.values()):
            # Filter before limiting: ask for every row when the selector narrows inside a partition.
            k = limit if selector.created_before is None else len(index)
            for label, score in index.search(query, k):
                entry = self._entries.get(label)
                if entry is not None and not entry.expired(now) and selector.matches(entry):
                    found.append(Candidate(entry, score))
        found.sort(key=lambda c: c.similarity, reverse=True)
        return found[:limit]

    async def delete_matching(self, selector: EntryFilter) -> int:
        """Delete every selected entry."""
        labels = [label for label, e in self._entries.items() if selector.matches(e)]
        for label in labels:
            self._remove(label)
        return len(labels)

    async def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete entries by id."""
        labels = [self._label_of[i] for i in ids if i in self._label_of]
        for label in labels:
            self._remove(label)
        return len(labels)

    async def delete_version(self, exact_key: str, created_at: float) -> int:
        """Delete the entry under ``exact_key`` only if it was created at ``created_at`` (to the
        millisecond, as ids and Milvus rows keep it): a newer entry stored since stays."""
        label = self._exact.get(exact_key)
        entry = self._entries.get(label) if label is not None else None
        if label is None or entry is None or round(entry.created_at * 1000) != round(created_at * 1000):
            return 0
        self._remove(label)
        return 1

    async def put_many(self, entries: Sequence[CacheEntry]) -> dict[int, str]:
        """Store every entry (memory has no size limit per entry, so none is refused)."""
        for entry in entries:
            await self.put(entry)
        return {}

    def _remove(self, label: int) -> None:
        entry = self._entries.pop(label, None)
        if entry is None:
            return
        self._label_of.pop(entry.id, None)
        if self._exact.get(entry.exact_key) == label:
            del self._exact[entry.exact_key]
        index = self._partitions.get(entry.partition)
        if index is not None:
            index.remove(label)
            if len(index) == 0:
                del self._partitions[entry.partition]
        self._policy.removed(label)

    def _purge_expired(self, now: float) -> None:
        # Entries removed earlier for other reasons are skipped.
        while self._expiry and self._expiry[0][0] <= now:
            _, label = heapq.heappop(self._expiry)
            entry = self._entries.get(label)
            if entry is not None and entry.expired(now):
                self._remove(label)
