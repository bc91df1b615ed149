"""Shadow verification: re-ask the upstream for a sample of served hits, judge, heal; feedback.

Off the request path by construction: :meth:`Verification.shadow` only decides (sample, budget,
concurrency) and hands the work to the server's background tasks; the client already has its
answer. Shadow requests go to ``verification.upstream_url`` with this component's own HTTP
client, marked ``x-semantic-cache-shadow: 1`` and ``cache-control: no-cache, no-store`` so that,
sent through Envoy, the processor neither serves nor stores nor re-verifies them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.context import Context

from extproc.cache import CacheQuery, SemanticCache
from extproc.cache.schema import CacheEntry
from extproc.cache.volatile import dated_answer
from extproc.config.verification import VerificationSettings, shadow_ssl
from extproc.dataplane.freshness import answer_text
from extproc.dataplane.verification.agreement import agree, identical
from extproc.dataplane.verification.entry_ids import EntryIds, entry_ref
from extproc.dataplane.verification.evidence import EvidenceSync
from extproc.dataplane.verification.outcomes import Outcomes
from extproc.dataplane.verification.request import (
    ENTRY_HEADER,
    FEEDBACK_HEADER,
    SHADOW_HEADER,
    Skip,
    prepare,
    shadow_headers,
)
from extproc.observability.metrics import Metrics
from extproc.observability.tracing import tracer
from extproc.protocol.encoding import INLINE_BYTES

log = logging.getLogger(__name__)

__all__ = ["ENTRY_HEADER", "FEEDBACK_HEADER", "SHADOW_HEADER", "Shadow", "Verification"]

Spawn = Callable[[Coroutine[Any, Any, None]], None]
RESULTS = ("agree", "disagree", "error")
OVERLOAD_WAIT = 1.0
"""Past this predicted embedding wait (s), answers are not embedded for a verdict: lookups first."""


@dataclass
class Shadow:
    """One served semantic hit to re-ask upstream."""

    path: str
    headers: dict[str, str]
    body: bytes
    encoding: str
    """The request body's content-encoding ("" or gzip)."""
    parse: Callable[[bytes, int], dict[str, Any]]
    """The processor's parser of a JSON answer into the stored form (chat, completions…)."""
    n: int
    query: CacheQuery
    entry: CacheEntry
    score: float
    """The confidence (else the similarity) the hit was served at."""
    similarity: float
    ttl_seconds: int
    max_bytes: int = 4 * 1024 * 1024
    """The request's ``max_response_bytes``: a larger fresh answer is an error, never stored."""
    context: Context = field(default_factory=Context)
    """The request span's context: the verification span is its child."""


class Verification:
    """Shadow verification, the δ rule, entry ids and feedback of one server."""

    def __init__(
        self,
        settings: Callable[[], VerificationSettings],
        cache: SemanticCache,
        spawn: Spawn,
        metrics: Metrics | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self.cache = cache
        self.spawn = spawn
        self.metrics = metrics
        self.rng = rng
        first = settings()
        self.ids = EntryIds(first.entry_secret)
        self.outcomes = Outcomes(first.prior_strength)
        if metrics is not None:
            self.outcomes.on_change = metrics.bound_changes.inc
        self.evidence = EvidenceSync(self.outcomes, cache, settings)
        """Shares the bound's evidence with the other replicas through the backend."""
        self.skipped: Counter[str] = Counter()
        self.feedback_counts: Counter[str] = Counter()
        self.inflight = 0
        self.peak_inflight = 0
        """The most shadow requests ever in flight at once (never above max_concurrency)."""
        self.started_at: deque[float] = deque()
        """Monotonic start times of the shadow requests of the last minute (the budget)."""
        self._session: aiohttp.ClientSession | None = None

    @property
    def settings(self) -> VerificationSettings:
        """The settings in force now (a live config change applies to the next hit)."""
        return self._settings()

    # --- the request path: decisions only ------------------------------------------------

    def allows(
        self, model: str, entry: CacheEntry, score: float, similarity: float, delta: float | None = None
    ) -> bool:
        """The δ rule: serve this semantic candidate? (always True when no bound is set).

        ``delta``: the request's δ (a policy's), else the verification section's."""
        if delta is None:
            delta = self.settings.max_false_hit_rate
        if delta <= 0:
            return True
        self.evidence.bounded()  # a policy's δ alone must keep the evidence shared too
        own = entry_ref(entry.exact_key, entry.created_at)
        serve = self.outcomes.upper(model, score, own, similarity) <= delta
        if self.metrics is not None:
            self.metrics.bound_decisions.labels("serve" if serve else "explore").inc()
        return serve

    def shadow(self, job: Shadow) -> bool:
        """Re-ask upstream for this served hit if sampled and within budget; never waits."""
        s = self.settings
        if s.sample_rate <= 0 or self.rng() >= s.sample_rate:
            return False
        if self.inflight >= s.max_concurrency:
            return self._skip("concurrency")
        now = time.monotonic()
        while self.started_at and now - self.started_at[0] >= 60.0:
            self.started_at.popleft()
        if len(self.started_at) >= s.max_per_minute:
            return self._skip("budget")
        self.started_at.append(now)
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        self.spawn(self._run(job))
        return True

    def learn_from_miss(
        self, model: str, candidate: CacheEntry, scores: tuple[float, float], fresh: dict[str, Any]
    ) -> None:
        """An explored candidate's request was answered upstream: compare, learn (in the background).

        ``scores``: the candidate's (confidence or similarity, similarity)."""
        self.spawn(self._explored(model, candidate, scores, fresh))

    # --- background work --------------------------------------------------------------------

    async def _run(self, job: Shadow) -> None:
        result = "error"
        with tracer.start_as_current_span("semantic_cache.verify", context=job.context) as span:
            try:
                result = await self._verify(job, span)
            except Exception as exc:  # the client has its answer: a failure here is only counted
                log.warning("shadow verification failed: %s: %s", type(exc).__name__, exc)
                span.add_event("semantic_cache.verification", {"semantic_cache.verdict": "error"})
            finally:
                self.inflight -= 1
        if result in RESULTS:
            self.outcomes.record_served(job.query.model, result)
            if self.metrics is not None:
                self.metrics.verified(self.outcomes.model_key(job.query.model), result)

    async def _verify(self, job: Shadow, span: trace.Span) -> str:
        """Ask, judge, heal; the result (``agree`` | ``disagree`` | ``error``), or "" when skipped."""
        try:
            body = await prepare(job.body, job.encoding)
        except Skip as skip:  # e.g. tools declared: read exactly here, not guessed from the bytes
            self._skip(skip.args[0])
            if self.started_at:
                self.started_at.pop()  # nothing was sent: the per-minute budget gets its call back
            return ""
        fresh = await self._ask(job, body)
        same_text = identical(job.entry.response, fresh)
        if self.cache.embedder.expected_wait() > OVERLOAD_WAIT and not same_text:
            self._skip("overloaded")  # lookups first: never add embeddings to a long queue
            return "error"
        # Judged by meaning even at temperature 0 with a seed: the cached answer was given to
        # another prompt (only semantic hits are shadowed), so other words are no mistake.
        same, similarity = await agree(
            self.cache.embedder, job.entry.response, fresh, self.settings.answer_similarity
        )
        verdict = "agree" if same else "disagree"
        span.add_event(
            "semantic_cache.verification",
            {
                "semantic_cache.verdict": verdict,
                "semantic_cache.answer_similarity": round(similarity, 4),
                "semantic_cache.exact": same_text,
            },
        )
        own = entry_ref(job.entry.exact_key, job.entry.created_at)
        self.outcomes.learn(job.query.model, own, job.score, not same, job.similarity)
        if not same:
            try:
                await self._heal(job, fresh)
            except Exception as exc:  # the verdict stands; its own wrong keeps it from the bound rule
                log.warning("healing a wrong entry failed: %s: %s", type(exc).__name__, exc)
        return verdict

    async def _ask(self, job: Shadow, body: bytes) -> dict[str, Any]:
        """Send the shadow request; the answer in the stored form (raises on any failure)."""
        s = self.settings
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=shadow_ssl(s)),
                timeout=aiohttp.ClientTimeout(total=s.timeout_ms / 1000),
            )
        url = s.upstream_url.rstrip("/") + job.path
        # Envoy never follows a redirect for the client: neither does its shadow (a 3xx is an
        # error; following one would hand the client's api-key headers to another origin).
        post = self._session.post(url, data=body, headers=shadow_headers(job.headers), allow_redirects=False)
        async with post as response:
            if not 200 <= response.status < 300:
                raise RuntimeError(f"upstream answered {response.status}")
            # As on the request path: an answer over max_response_bytes (inflated) is no answer.
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > job.max_bytes:
                    raise RuntimeError(f"upstream answer over {job.max_bytes} bytes")
                chunks.append(chunk)
            answer = b"".join(chunks)
        if len(answer) > INLINE_BYTES:  # a long answer parses in a thread, as on the request path
            return await asyncio.to_thread(job.parse, answer, job.n)
        return job.parse(answer, job.n)

    async def _delete_wrong(self, entry: CacheEntry, cause: str) -> bool:
        """Delete ``entry``, found wrong, if it is still the one stored under its key (a newer
        entry stored since is another answer, not judged); True if it went."""
        deleted = await self.cache.forget(entry.exact_key, entry.created_at)
        if deleted and self.metrics is not None:
            self.metrics.deleted.labels("verification").inc()
        # Its own wrong outcome stays recorded (under this version only): a replica that still
        # sees it (Milvus consistency) does not serve it by the bound rule meanwhile.
        log.info(
            "%s: entry %s… disagreed and was %s",
            cause,
            entry.exact_key[:12],
            "deleted" if deleted else "already gone or replaced",
        )
        return deleted

    async def _heal(self, job: Shadow, fresh: dict[str, Any]) -> None:
        """The served entry was wrong for this request: delete it; store the fresh answer instead."""
        await self._delete_wrong(job.entry, "shadow verification")
        # A dated answer ("as of today…") is not stored, as on the request path.
        if not self.settings.replace or await dated_answer(answer_text(fresh)):
            return
        vector = await self.cache.embedder.embed(job.query.prompt, deferred=True)
        # The request was a semantic hit, so nothing was under its own key then: an entry there
        # now was stored since (a refresh) and is not overwritten. On Milvus a store between
        # this read and the write below can still be replaced (a window of one round trip).
        if await self.cache.entry(job.query.exact_key) is None:
            await self.cache.store(job.query, fresh, vector, ttl_seconds=job.ttl_seconds)

    async def _explored(
        self, model: str, candidate: CacheEntry, scores: tuple[float, float], fresh: dict[str, Any]
    ) -> None:
        result = "error"
        if self.cache.embedder.expected_wait() > OVERLOAD_WAIT and not identical(candidate.response, fresh):
            self._skip("overloaded")
            return
        try:
            same, _ = await agree(
                self.cache.embedder, candidate.response, fresh, self.settings.answer_similarity
            )
            own = entry_ref(candidate.exact_key, candidate.created_at)
            self.outcomes.learn(model, own, scores[0], not same, scores[1])
            # A candidate found wrong is kept: it answers its own prompt (whose exact repeats
            # still hit), it was wrong for this one. Its own wrong outcome keeps the bound rule
            # from serving it as a paraphrase again (deleting it cost 4.6 points of hit rate in
            # bench/verification_sim.py, its exact repeats gone).
            result = "agree" if same else "disagree"
        except Exception as exc:
            log.warning("learning from an explored candidate failed: %s: %s", type(exc).__name__, exc)
        if self.metrics is not None:
            self.metrics.explorations.labels(result).inc()

    def _skip(self, reason: str) -> bool:
        self.skipped[reason] += 1
        if self.metrics is not None:
            self.metrics.verification_skipped.labels(reason).inc()
        return False

    # --- feedback ------------------------------------------------------------------------

    async def feedback(self, entry_id: str, verdict: str, partition: str | None = None) -> bool:
        """Record a client's verdict on the entry ``entry_id`` names; ``wrong`` deletes it.

        False when the id is not one this deployment issued for the live entry (or, with
        ``partition``, one of that partition): the entry it named may be gone, or replaced by a
        newer one under the same key (whose id differs). The caller cannot tell which.
        """
        named = self.ids.parse(entry_id)
        entry = await self.cache.entry(named[0]) if named is not None else None
        if entry is None or not self.ids.valid(entry_id, entry.partition, entry.created_at):
            return False
        if partition is not None and entry.partition != partition:
            return False
        self.feedback_counts[verdict] += 1
        if self.metrics is not None:
            self.metrics.feedback.labels(verdict).inc()
        if verdict == "wrong":
            # Only that version: a newer entry stored since the read above stays.
            if await self.cache.forget(entry.exact_key, entry.created_at) and self.metrics is not None:
                self.metrics.deleted.labels("feedback").inc()
            self.outcomes.forget(entry_ref(entry.exact_key, entry.created_at))
            log.info("feedback: entry %s… reported wrong and deleted", entry.exact_key[:12])
        return True

    # --- reading -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``admin stats`` shows: per model the false-hit rate and its bound, skips, feedback."""
        s = self.settings
        models = {
            model: {
                "verified": t.judged,
                "agree": t.agree,
                "disagree": t.disagree,
                "error": t.error,
                "false_hit_rate": None if rate is None else round(rate, 4),
                "false_hit_rate_upper": round(upper, 4),
            }
            for model, (rate, upper, t) in sorted(self.outcomes.rates().items())
        }
        return {
            "sample_rate": s.sample_rate,
            "max_false_hit_rate": s.max_false_hit_rate,
            "models": models,
            "in_flight": self.inflight,
            "peak_in_flight": self.peak_inflight,
            "skipped": dict(sorted(self.skipped.items())),
            "feedback": dict(sorted(self.feedback_counts.items())),
            "evidence": {
                "shared": self.evidence.store is not None,
                "other_processes": self.evidence.processes,
                "shared_outcomes": self.outcomes.adopted,
                "own_outcomes": self.outcomes.learned,
                "changes": self.outcomes.changes,
                "problem": self.evidence.problem,
            },
        }

    def start(self) -> None:
        """Begin sharing the evidence (the server calls it once it listens)."""
        self.evidence.start()

    async def close(self) -> None:
        """Write the evidence learned since the last sync; close the HTTP client."""
        await self.evidence.close()
        if self._session is not None:
            await self._session.close()
