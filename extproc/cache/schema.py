"""Data shapes shared by the cache and its backends, and the backend protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class CacheQuery:
    """One lookup: the hard partition, the exact key and the prompt to embed."""

    model: str
    scope: str
    fingerprint: str
    prompt: str
    partition: str
    exact_key: str


@dataclass(slots=True)
class CacheEntry:
    """One stored answer with its identity, prompt and embedding (slots: millions may be held)."""

    id: str
    model: str
    scope: str
    fingerprint: str
    partition: str
    exact_key: str
    prompt: str
    response: dict[str, Any]
    vector: np.ndarray
    created_at: float
    expires_at: float = 0.0
    """Absolute expiry (unix seconds); 0 means never."""
    hits: int = 0

    def expired(self, now: float) -> bool:
        """True once the entry's absolute expiry has passed."""
        return self.expires_at > 0 and now >= self.expires_at


@dataclass(frozen=True)
class Candidate:
    """A search result: an entry and its cosine similarity to the query."""

    entry: CacheEntry
    similarity: float
    vector: np.ndarray | None = None
    """The entry's stored embedding, when the backend returns it (the learned verifier reads it;
    entries themselves may not carry one: the memory backend keeps vectors in its index)."""


@dataclass
class LookupResult:
    """The outcome of :meth:`SemanticCache.check`."""

    entry: CacheEntry | None = None
    similarity: float = 0.0
    match: str | None = None
    """``exact`` or ``semantic`` on a hit."""
    candidates: int = 0
    best_similarity: float = 0.0
    vector: np.ndarray | None = None
    """The query embedding, reused when the response is stored."""
    confidence: float | None = None
    """On a semantic hit, the verifier's calibrated P(same meaning) (1.0 for an exact hit);
    None when no verifier model is configured."""
    rejections: list[str] = field(default_factory=list)
    """Guard names that rejected a candidate above the threshold (``confidence`` for a
    candidate the verifier scored below ``min_confidence``)."""
    rejected_similarity: float = 0.0
    """Similarity of the best candidate a guard rejected (0 when none was)."""
    rejected_prompt: str = ""
    """That candidate's stored prompt (for ``eval --show-errors``; never sent to clients)."""
    scored: list[tuple[CacheEntry, float, float | None]] = field(default_factory=list)
    """With ``explain``: every candidate at or above the threshold that passed the guards, best
    first, as (entry, similarity, confidence)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per step: ``exact_ms``, ``embed_ms``, ``search_ms``."""

    @property
    def hit(self) -> bool:
        """True when an entry was found."""
        return self.entry is not None

    def passed_over(self, reason: str) -> LookupResult:
        """This lookup made a miss: its hit passed over for ``reason`` (kept among the rejections)."""
        return LookupResult(
            vector=self.vector,
            candidates=self.candidates,
            best_similarity=self.best_similarity,
            rejections=[*self.rejections, reason],
            rejected_similarity=self.rejected_similarity or self.similarity,
            timings=self.timings,
        )

    def reject(self, candidate: Candidate, *reasons: str) -> None:
        """Note that ``candidate`` was passed over for ``reasons`` (the first such names the
        similarity and prompt reported)."""
        if not self.rejections:
            self.rejected_similarity, self.rejected_prompt = candidate.similarity, candidate.entry.prompt
        self.rejections.extend(reasons)


class CacheBackend(Protocol):
    """Where entries live.  Backends never parse HTTP and never compute embeddings."""

    name: str

    async def get_exact(self, exact_key: str, now: float) -> CacheEntry | None:
        """The live entry stored under ``exact_key``, if any."""
        ...

    async def search(self, partition: str, vector: np.ndarray, top_k: int, now: float) -> list[Candidate]:
        """Up to ``top_k`` live entries of ``partition``, most similar first."""
        ...

    async def put(self, entry: CacheEntry) -> None:
        """Store ``entry``, replacing any entry with the same exact key."""
        ...

    async def record_hit(self, entry: CacheEntry) -> None:
        """Tell the backend an entry was served (eviction bookkeeping)."""
        ...

    async def count(self) -> int:
        """Number of stored entries (expired ones may still be counted until purged)."""
        ...

    async def start(self) -> None:
        """Begin background work (connecting, sweeping); must return promptly."""
        ...

    def status(self) -> tuple[str, str]:
        """(state, detail): ``ready`` or why the backend cannot serve."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class EvidenceStore(Protocol):
    """Where a backend keeps documents beside its entries for every replica to read: the
    verification evidence (docs/verification.md). Each writer owns one document and replaces it
    whole; the backend never reads inside one."""

    async def save_evidence(self, owner: str, document: str, now: float) -> None:
        """Replace ``owner``'s document (ASCII text) with ``document``, stamped ``now``."""
        ...

    async def load_evidence(self, since: float) -> dict[str, str]:
        """owner -> document of every owner that wrote at ``since`` or later (older ones are dropped)."""
        ...


@dataclass(frozen=True)
class EntryFilter:
    """Which entries an admin operation selects: every given field must match (AND)."""

    model: str | None = None
    scope: str | None = None
    fingerprint: str | None = None
    created_before: float | None = None
    """Unix seconds: only entries stored before this instant."""

    @property
    def everything(self) -> bool:
        """True when no field narrows the selection."""
        return all(v is None for v in (self.model, self.scope, self.fingerprint, self.created_before))

    def matches(self, entry: CacheEntry) -> bool:
        """True when ``entry`` is selected."""
        return (
            (self.model is None or entry.model == self.model)
            and (self.scope is None or entry.scope == self.scope)
            and (self.fingerprint is None or entry.fingerprint == self.fingerprint)
            and (self.created_before is None or entry.created_at < self.created_before)
        )


class BulkBackend(Protocol):
    """The operations behind the admin API (export, import, invalidate, flush)."""

    name: str
    dim: int

    def entries(
        self, selector: EntryFilter, now: float, batch_size: int = 256, vectors: bool = True
    ) -> AsyncIterator[list[CacheEntry]]:
        """Every live selected entry, in batches (with embeddings unless ``vectors`` is False)."""
        ...

    async def count_matching(self, selector: EntryFilter, now: float) -> int:
        """Number of live selected entries."""
        ...

    async def nearest(self, vector: Any, selector: EntryFilter, limit: int, now: float) -> list[Candidate]:
        """Up to ``limit`` live selected entries of any partition, most similar first."""
        ...

    async def delete_matching(self, selector: EntryFilter) -> int:
        """Delete every selected entry; return how many went."""
        ...

    async def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete entries by id; return how many went."""
        ...

    async def put_many(self, entries: Sequence[CacheEntry]) -> dict[int, str]:
        """Store entries as one write; return {index: reason} for those refused before writing."""
        ...
