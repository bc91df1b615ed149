"""SemanticCache: exact match first, then embedding search with threshold and guards."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from ..embedding import Embedder
from ..telemetry import tracer
from .schema import CacheBackend, CacheEntry, CacheQuery, EmbeddingFailed, LookupResult


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time in milliseconds to ``into[key]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + (time.perf_counter() - started) * 1000


LONG_PROMPT_CHARS = 1000
"""Above this many characters (query + candidate) sync guards run in a worker thread."""


class Guard(Protocol):
    """Vetoes a candidate whose prompt looks like the query but means something else.

    ``reject`` may also be a coroutine (a verifier that needs a model); the cache awaits it.
    """

    name: str

    def reject(self, query: str, candidate: str) -> bool | Awaitable[bool]:
        """True when ``candidate``'s answer must not be served for ``query``."""
        ...


class SemanticCache:
    """The cache API the processor uses: :meth:`check` then :meth:`store`."""

    def __init__(
        self,
        backend: CacheBackend,
        embedder: Embedder,
        similarity_threshold: float,
        top_k: int = 10,
        ttl_seconds: int = 3600,
        guards: Sequence[Guard] = (),
    ) -> None:
        self.backend = backend
        self.embedder = embedder
        self.similarity_threshold = similarity_threshold
        self.top_k = top_k
        self.ttl_seconds = ttl_seconds
        self.guards = list(guards)

    async def check(
        self, query: CacheQuery, threshold: float | None = None, vector: np.ndarray | None = None
    ) -> LookupResult:
        """Find a stored answer for ``query``: exact key first, then nearest prompts.

        Candidates come best first; the first at or above the threshold that every guard
        accepts is the hit.  ``vector`` skips embedding when the caller already has it.
        """
        now = time.time()
        timings: dict[str, float] = {}
        with timed(timings, "exact_ms"), tracer.start_as_current_span("semantic_cache.exact_lookup") as span:
            entry = await self.backend.get_exact(query.exact_key, now)
            span.set_attribute("semantic_cache.found", entry is not None)
        if entry is not None and entry.prompt == query.prompt:
            await self.backend.record_hit(entry)
            return LookupResult(
                entry=entry, similarity=1.0, match="exact", best_similarity=1.0, timings=timings
            )
        if vector is None:
            with timed(timings, "embed_ms"), tracer.start_as_current_span("semantic_cache.embed"):
                try:
                    vector = await self.embedder.embed(query.prompt)
                except Exception as exc:
                    raise EmbeddingFailed(f"embedding failed: {type(exc).__name__}") from exc
        result = await self.check_vector(query, vector, threshold, now)
        result.timings.update(timings)
        return result

    async def check_vector(
        self, query: CacheQuery, vector: np.ndarray, threshold: float | None = None, now: float | None = None
    ) -> LookupResult:
        """The semantic half of :meth:`check`, for callers that already have the embedding."""
        now = time.time() if now is None else now
        limit = self.similarity_threshold if threshold is None else threshold
        timings: dict[str, float] = {}
        with timed(timings, "search_ms"), tracer.start_as_current_span("semantic_cache.lookup") as span:
            candidates = await self.backend.search(query.partition, vector, self.top_k, now)
            span.set_attribute("semantic_cache.candidates", len(candidates))
            if candidates:
                span.set_attribute("semantic_cache.best_similarity", round(candidates[0].similarity, 4))
        result = LookupResult(vector=vector, candidates=len(candidates), timings=timings)
        if candidates:
            result.best_similarity = candidates[0].similarity
        above = [
            c for c in candidates if c.similarity >= limit and c.entry.partition == query.partition
        ]  # the partition test is defence in depth: backends already filter by partition
        verdicts = await self._verdicts(query.prompt, [c.entry.prompt for c in above])
        for candidate, rejected in zip(above, verdicts, strict=False):  # verdicts stop at a hit
            if rejected:
                result.rejections.extend(rejected)
                continue
            entry = candidate.entry
            await self.backend.record_hit(entry)
            result.entry, result.similarity, result.match = entry, candidate.similarity, "semantic"
            return result
        return result

    async def _verdicts(self, prompt: str, candidates: list[str]) -> list[list[str]]:
        """Per candidate (best first), the names of the guards that veto it.

        The text rules run first, one candidate after another (microseconds each).  The guards
        that await a model (word vectors, a verifier) then run only for the candidates every rule
        accepted, all at once, so their model calls share one batched forward pass instead of one
        pass per candidate.  The hit is the first candidate with no veto, as if checked in order.
        """
        sync = [g for g in self.guards if not inspect.iscoroutinefunction(g.reject)]
        model = [g for g in self.guards if inspect.iscoroutinefunction(g.reject)]
        verdicts: list[list[str]] = []
        for candidate in candidates:
            rejected = await self._run_rules(sync, prompt, candidate)
            verdicts.append(rejected)
            if not rejected and not model:
                break  # the hit: later candidates are never looked at
        survivors = [i for i, v in enumerate(verdicts) if not v]
        if model and survivors:
            found = await asyncio.gather(
                *(self._run_model_guards(model, prompt, candidates[i]) for i in survivors)
            )
            for i, rejected in zip(survivors, found, strict=True):
                verdicts[i] = rejected
        return verdicts

    @staticmethod
    async def _run_rules(guards: list[Guard], prompt: str, candidate: str) -> list[str]:
        """Names of the synchronous ``guards`` that veto ``candidate`` (off the loop when long)."""
        long = len(prompt) + len(candidate) > LONG_PROMPT_CHARS
        rejected: list[str] = []
        for guard in guards:
            if long:  # text rules cost ~1 ms per KB: keep them off the event loop
                verdict = await asyncio.to_thread(guard.reject, prompt, candidate)
            else:
                verdict = guard.reject(prompt, candidate)
            if inspect.isawaitable(verdict):  # a sync reject() that still returned an awaitable
                verdict = await verdict
            if verdict:
                rejected.append(guard.name)
        return rejected

    @staticmethod
    async def _run_model_guards(guards: list[Guard], prompt: str, candidate: str) -> list[str]:
        """The first of the async ``guards`` that vetoes ``candidate`` (the rest are spared)."""
        for guard in guards:
            if await guard.reject(prompt, candidate):  # type: ignore[misc]
                return [guard.name]
        return []

    async def store(
        self, query: CacheQuery, response: dict[str, Any], vector: np.ndarray | None = None
    ) -> CacheEntry:
        """Store ``response`` as the answer to ``query`` (embedding it if not done yet)."""
        if vector is None:
            vector = await self.embedder.embed(query.prompt)
        now = time.time()
        entry = CacheEntry(
            id=query.exact_key,
            model=query.model,
            scope=query.scope,
            fingerprint=query.fingerprint,
            partition=query.partition,
            exact_key=query.exact_key,
            prompt=query.prompt,
            response=response,
            vector=vector,
            created_at=now,
            expires_at=now + self.ttl_seconds if self.ttl_seconds > 0 else 0.0,
        )
        with tracer.start_as_current_span("semantic_cache.store") as span:
            span.set_attribute("semantic_cache.backend", self.backend.name)
            await self.backend.put(entry)
        return entry

    async def close(self) -> None:
        """Close the backend and the embedding worker."""
        await self.backend.close()
        self.embedder.close()
