"""SemanticCache: exact match first, then embedding search with threshold and guards."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from extproc.cache.guards.base import LONG_PROMPT_CHARS, Guard
from extproc.cache.schema import CacheBackend, CacheEntry, CacheQuery, LookupResult
from extproc.embedding.batcher import Embedder
from extproc.errors import EmbeddingFailed, Overloaded
from extproc.observability.tracing import tracer

LONG_PROMPT = "long_prompt"
"""Rejection of a query or candidate longer than the embedding model reads (exact hits only)."""
UNREADABLE = "unreadable"
"""A candidate rejected because the two prompts differ in what the model cannot read."""


class Scorer(Protocol):
    """Gives the calibrated confidence that a candidate answers the query (the learned verifier)."""

    identity: str
    """Names what its confidences mean (two processes share evidence only under one identity)."""

    async def score(
        self,
        query: str,
        candidate: str,
        similarity: float,
        query_vector: np.ndarray | None = None,
        candidate_vector: np.ndarray | None = None,
    ) -> float:
        """P(same meaning) of ``query`` and ``candidate`` whose embeddings (when known) have
        ``similarity``."""
        ...


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time in milliseconds to ``into[key]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + (time.perf_counter() - started) * 1000


def too_old(entry: CacheEntry, now: float, max_age: float | None) -> bool:
    """True when ``entry`` was stored ``max_age`` seconds ago or more (never with None)."""
    return max_age is not None and now - entry.created_at >= max_age


async def _within(judging: Any, deadline: float | None, embedder: Embedder) -> Any:
    """Await ``judging``, or raise :class:`Overloaded` when ``deadline`` passes first."""
    if deadline is None:
        return await judging
    try:
        return await asyncio.wait_for(judging, max(0.0, deadline - time.perf_counter()))
    except TimeoutError:
        raise Overloaded(f"candidate not judged within the budget (backlog {embedder.backlog})") from None


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
        scorer: Scorer | None = None,
        min_confidence: float = 0.0,
    ) -> None:
        self.backend = backend
        self.embedder = embedder
        self.similarity_threshold = similarity_threshold
        self.top_k = top_k
        self.ttl_seconds = ttl_seconds
        self.guards = list(guards)
        self.scorer = scorer
        """Scores candidates that passed the guards (the learned verifier); None: no confidence."""
        self.min_confidence = min_confidence

    async def check(
        self,
        query: CacheQuery,
        threshold: float | None = None,
        vector: np.ndarray | None = None,
        max_wait: float | None = None,
        max_age: float | None = None,
        min_confidence: float | None = None,
        explain: bool = False,
    ) -> LookupResult:
        """Find a stored answer for ``query``: exact key first, then nearest prompts.

        Candidates come best first; the first at or above the threshold that every guard
        accepts and the verifier scores at ``min_confidence`` or more is the hit.  ``vector``
        skips embedding when the caller already has it; ``explain`` scores every candidate
        (into ``scored``) instead of stopping at the hit, for ``eval``'s sweeps.  When the
        embedder predicts a wait over ``max_wait`` seconds, only the (cheap) exact lookup runs
        and :class:`~extproc.errors.Overloaded` is raised on a miss; the same when the
        embedding is not done ``max_wait`` seconds after the exact lookup.  ``max_age`` (seconds)
        passes over entries stored longer ago (rejection ``max_age``).
        """
        now = time.time()
        timings: dict[str, float] = {}
        with timed(timings, "exact_ms"), tracer.start_as_current_span("semantic_cache.exact_lookup") as span:
            entry = await self.backend.get_exact(query.exact_key, now)
            span.set_attribute("semantic_cache.found", entry is not None)
        if entry is not None and too_old(entry, now, max_age):
            entry = None  # a newer paraphrase may still be young enough
        if entry is not None and entry.prompt == query.prompt:
            await self.backend.record_hit(entry)
            return LookupResult(
                entry=entry,
                similarity=1.0,
                match="exact",
                best_similarity=1.0,
                confidence=1.0,
                timings=timings,
            )
        if not await self.embedder.fits(query.prompt):
            # Exact repeats only (see check_vector): no pass on the request's path for it; its
            # store embeds it later, behind the lookups.
            return LookupResult(vector=vector, timings=timings, rejections=[LONG_PROMPT])
        # The wait counts from here: the exact lookup is the backend's time (lookup_timeout_ms).
        deadline = None if max_wait is None else time.perf_counter() + max_wait
        if vector is None:
            vector = await self._embed_within(query.prompt, deadline, timings)
        result = await self._nearest(
            query, vector, threshold, now, max_age, min_confidence, explain, deadline=deadline
        )
        result.timings.update(timings)
        return result

    async def _embed_within(
        self, prompt: str, deadline: float | None, timings: dict[str, float]
    ) -> np.ndarray:
        """The query's embedding, or :class:`Overloaded` when the wait would pass ``deadline``
        (predicted before queueing, enforced while waiting: a pass may run longer than fitted)."""
        left = None if deadline is None else deadline - time.perf_counter()
        # Judging a candidate may need one more pass (the word vectors of a candidate not embedded
        # recently; the query's come with its own pass): part of the wait.
        # A probe goes in whatever the prediction: its pass is what corrects one that sheds all.
        predicted = self.embedder.expected_wait() + self._judge_pass()
        if left is not None and predicted > left and not self.embedder.probe_due():
            raise Overloaded(f"embedding backlog {self.embedder.backlog}")
        with timed(timings, "embed_ms"), tracer.start_as_current_span("semantic_cache.embed"):
            try:
                return await asyncio.wait_for(self.embedder.embed(prompt), left)
            except TimeoutError:
                raise Overloaded(
                    f"embedding not done within the budget (backlog {self.embedder.backlog})"
                ) from None
            except Exception as exc:
                raise EmbeddingFailed(f"embedding failed: {type(exc).__name__}") from exc

    async def check_vector(
        self,
        query: CacheQuery,
        vector: np.ndarray,
        threshold: float | None = None,
        now: float | None = None,
        max_age: float | None = None,
        min_confidence: float | None = None,
        explain: bool = False,
        *,
        deadline: float | None = None,
    ) -> LookupResult:
        """The semantic half of :meth:`check`, for callers that already have the embedding;
        judging candidates past ``deadline`` (``perf_counter`` time) raises
        :class:`~extproc.errors.Overloaded` (its word-vector passes queue with the embeddings)."""
        if not await self.embedder.fits(query.prompt):
            # Past the model's window the vector stands for the prompt's head alone: one long
            # document with another question after it embeds identically (cosine 1.0, and the
            # verifier, reading the same vectors, is sure). Such prompts hit on exact repeats only.
            return LookupResult(vector=vector, rejections=[LONG_PROMPT])
        return await self._nearest(
            query, vector, threshold, now, max_age, min_confidence, explain, deadline=deadline
        )

    async def _nearest(
        self,
        query: CacheQuery,
        vector: np.ndarray,
        threshold: float | None,
        now: float | None,
        max_age: float | None,
        min_confidence: float | None,
        explain: bool,
        *,
        deadline: float | None,
    ) -> LookupResult:
        """:meth:`check_vector` for a prompt known to fit the model's window."""
        now = time.time() if now is None else now
        limit = self.similarity_threshold if threshold is None else threshold
        floor = self.min_confidence if min_confidence is None else min_confidence
        timings: dict[str, float] = {}
        searching = time.perf_counter()
        with timed(timings, "search_ms"), tracer.start_as_current_span("semantic_cache.lookup") as span:
            candidates = await self.backend.search(query.partition, vector, self.top_k, now)
            span.set_attribute("semantic_cache.candidates", len(candidates))
            if candidates:
                span.set_attribute("semantic_cache.best_similarity", round(candidates[0].similarity, 4))
        if deadline is not None:  # the search is the backend's time (lookup_timeout_ms), not overload
            deadline += time.perf_counter() - searching
        result = LookupResult(vector=vector, candidates=len(candidates), timings=timings)
        if candidates:
            result.best_similarity = candidates[0].similarity
        # What the model cannot read of the query (emoji, symbols), read once for every candidate.
        unreadable = await self.embedder.unreadable(query.prompt) if result.best_similarity >= limit else ()
        for candidate in candidates:
            if not candidate.similarity >= limit:  # NaN too: a broken vector is never a match
                break
            entry = candidate.entry
            if entry.partition != query.partition:
                continue  # defence in depth: backends already filter by partition
            if too_old(entry, now, max_age):
                result.reject(candidate, "max_age")
                continue
            if not await self.embedder.fits(entry.prompt):
                result.reject(candidate, LONG_PROMPT)  # its vector is its head's (above)
                continue
            # One vector for two different emoji or symbols; unknown (None) is never a match.
            if unreadable is None or unreadable != await self.embedder.unreadable(entry.prompt):
                result.reject(candidate, UNREADABLE)
                continue
            judging = self.judge(
                query.prompt,
                entry.prompt,
                candidate.similarity,
                query_vector=vector,
                candidate_vector=candidate.vector if candidate.vector is not None else entry.vector,
            )
            with timed(timings, "verify_ms"):
                rejected, confidence = await _within(judging, deadline, self.embedder)
            if rejected:
                result.reject(candidate, *rejected)
                continue
            if explain:
                result.scored.append((entry, candidate.similarity, confidence))
            if confidence is not None and confidence < floor:
                result.reject(candidate, "confidence")
                continue
            if result.entry is None:
                await self.backend.record_hit(entry)
                result.entry, result.similarity, result.match = entry, candidate.similarity, "semantic"
                result.confidence = confidence
            if not explain:
                return result
        return result

    def _judge_pass(self) -> float:
        """Predicted seconds of the forward pass that judging a candidate adds (0 without one)."""
        return self.embedder.cost.seconds(1) if self.scorer is not None and self.embedder.has_words else 0.0

    async def judge(
        self,
        prompt: str,
        candidate: str,
        similarity: float,
        *,
        query_vector: np.ndarray | None = None,
        candidate_vector: np.ndarray | None = None,
    ) -> tuple[list[str], float | None]:
        """The guards that veto ``candidate`` for ``prompt`` and, if none does, the verifier's
        confidence (None without one): the decision on one candidate, for the cache and ``eval``.
        The two embeddings feed a verifier that reads them (it embeds a prompt whose vector is
        not given)."""
        rejected = await self._rejections(prompt, candidate)
        if rejected or self.scorer is None:
            return rejected, None
        return rejected, await self.scorer.score(
            prompt, candidate, similarity, query_vector=query_vector, candidate_vector=candidate_vector
        )

    async def _rejections(self, prompt: str, candidate: str) -> list[str]:
        """Names of the guards that veto ``candidate`` for ``prompt`` (cheap ones run first)."""
        rejected: list[str] = []
        long = len(prompt) + len(candidate) > LONG_PROMPT_CHARS
        for guard in self.guards:
            is_async = inspect.iscoroutinefunction(guard.reject)
            if rejected and is_async:
                continue  # already vetoed: spare the model call
            if long and not is_async:  # text rules cost ~1 ms per KB: keep them off the event loop
                verdict = await asyncio.to_thread(guard.reject, prompt, candidate)
            else:
                verdict = guard.reject(prompt, candidate)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if verdict:
                rejected.append(guard.name)
        return rejected

    async def store(
        self,
        query: CacheQuery,
        response: dict[str, Any],
        vector: np.ndarray | None = None,
        max_wait: float | None = None,
        ttl_seconds: int | None = None,
    ) -> CacheEntry:
        """Store ``response`` as the answer to ``query`` (embedding it if not done yet).

        ``ttl_seconds`` replaces the cache's TTL for this entry (0 = never expires).

        A store that must embed waits behind every queued lookup, and is dropped
        (:class:`~extproc.errors.Overloaded`) when the backlog already exceeds ``max_wait``.
        """
        if vector is None:
            if max_wait is not None and self.embedder.expected_wait() > max_wait:
                raise Overloaded(f"embedding backlog {self.embedder.backlog}")
            try:
                vector = await self.embedder.embed(query.prompt, deferred=True)
            except Exception as exc:  # the model's failure, not the backend's (as in a lookup)
                raise EmbeddingFailed(f"embedding failed: {type(exc).__name__}") from exc
        now = time.time()
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
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
            expires_at=now + ttl if ttl > 0 else 0.0,
        )
        with tracer.start_as_current_span("semantic_cache.store") as span:
            span.set_attribute("semantic_cache.backend", self.backend.name)
            await self.backend.put(entry)
        return entry

    async def entry(self, exact_key: str) -> CacheEntry | None:
        """The live entry stored under ``exact_key`` (feedback and verification name entries so)."""
        return await self.backend.get_exact(exact_key, time.time())

    async def forget(self, exact_key: str, created_at: float | None = None) -> bool:
        """Delete the entry stored under ``exact_key`` (a wrong answer); True if one went.

        ``created_at``: only if it is still the entry created then (the one judged or named), never
        a newer one stored under the key since."""
        if created_at is not None:
            conditional = getattr(self.backend, "delete_version", None)
            if conditional is not None:
                return bool(await conditional(exact_key, created_at))
            # No conditional delete here: read, compare, delete (a store in between is lost).
            current = await self.backend.get_exact(exact_key, time.time())
            if current is None or round(current.created_at * 1000) != round(created_at * 1000):
                return False
        delete = getattr(self.backend, "delete_ids", None)  # every backend has the bulk operations
        if delete is None:
            return False
        return bool(await delete([exact_key]))

    async def close(self) -> None:
        """Close the backend and the embedding worker."""
        await self.backend.close()
        self.embedder.close()
