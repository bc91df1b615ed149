"""Shadow verification: re-ask the upstream for a sample of served hits, judge, heal; feedback.

Off the request path by construction: :meth:`Verification.shadow` only decides (sample, budget,
concurrency) and hands the work to the server's background tasks; the client already has its
answer. Shadow requests go to ``verification.upstream_url`` with this component's own HTTP
client, marked ``x-semantic-cache-shadow: 1`` and ``cache-control: no-cache, no-store`` so that,
sent through Envoy, the processor neither serves nor stores nor re-verifies them.
"""

from __future__ import annotations

import json
import logging
import random
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.context import Context

from extproc.cache import CacheQuery, SemanticCache
from extproc.cache.schema import CacheEntry
from extproc.cache.volatile import volatile_answer
from extproc.config.verification import VerificationSettings
from extproc.dataplane.freshness import answer_text
from extproc.dataplane.verification.agreement import agree, deterministic
from extproc.dataplane.verification.entry_ids import EntryIds
from extproc.dataplane.verification.evidence import EvidenceSync
from extproc.dataplane.verification.outcomes import Outcomes
from extproc.observability.metrics import Metrics
from extproc.observability.tracing import tracer
from extproc.protocol.encoding import GZIP, gunzip_bounded

log = logging.getLogger(__name__)

HEADER = "x-semantic-cache"
"""The prefix of the cache's headers (``shared.HEADER``; not imported: ``Shared`` holds this component)."""
Spawn = Callable[[Coroutine[Any, Any, None]], None]

SHADOW_HEADER = f"{HEADER}-shadow"
"""Marks a shadow request (the processor bypasses it: it also says no-cache, no-store)."""
ENTRY_HEADER = f"{HEADER}-entry"
"""The opaque id of the entry a hit served (and that feedback names)."""
FEEDBACK_HEADER = f"{HEADER}-feedback"
"""``wrong`` on a ``cache-control: no-cache`` retry: the entry named by ENTRY_HEADER was wrong."""
DROPPED_HEADERS = frozenset(
    {"host", "content-length", "content-encoding", "accept-encoding", "cache-control", "connection",
     "transfer-encoding", "keep-alive", "te", "trailer", "upgrade", "expect"}
)  # fmt: skip
"""Client headers a shadow request does not repeat (the body is re-encoded, caching is refused;
``x-envoy-*`` and ``x-semantic-cache-*`` are dropped too)."""
SIDE_EFFECTS = ("tools", "functions", "tool_choice")
"""Request fields that declare tools: the upstream may act on them, so never repeated."""
MAX_SHADOW_BYTES = 4 * 1024 * 1024
"""The largest request body (decompressed) a shadow request repeats."""
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
        serve = self.outcomes.upper(model, score, entry.exact_key, similarity) <= delta
        if self.metrics is not None:
            self.metrics.bound_decisions.labels("serve" if serve else "explore").inc()
        return serve

    def shadow(self, job: Shadow) -> bool:
        """Re-ask upstream for this served hit if sampled and within budget; never waits."""
        s = self.settings
        if s.sample_rate <= 0 or self.rng() >= s.sample_rate:
            return False
        if not job.encoding and any(f'"{name}"'.encode() in job.body for name in SIDE_EFFECTS):
            return self._skip("side_effects")  # a cheap, conservative look: exact one in the task
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
                self.metrics.verifications.labels(self.outcomes.model_key(job.query.model), result).inc()

    async def _verify(self, job: Shadow, span: trace.Span) -> str:
        """Ask, judge, heal; the result (``agree`` | ``disagree`` | ``error``), or "" when skipped."""
        request = self._request_body(job)
        if request is None:
            return ""
        exact = deterministic(request)
        fresh = await self._ask(job, request)
        if self.cache.embedder.expected_wait() > OVERLOAD_WAIT and not exact:
            self._skip("overloaded")  # lookups first: never add embeddings to a long queue
            return "error"
        same, similarity = await agree(
            self.cache.embedder, job.entry.response, fresh, self.settings.answer_similarity, exact
        )
        verdict = "agree" if same else "disagree"
        span.add_event(
            "semantic_cache.verification",
            {
                "semantic_cache.verdict": verdict,
                "semantic_cache.answer_similarity": round(similarity, 4),
                "semantic_cache.exact": exact,
            },
        )
        self.outcomes.learn(job.query.model, job.entry.exact_key, job.score, not same, job.similarity)
        if not same:
            await self._heal(job, fresh)
        return verdict

    def _request_body(self, job: Shadow) -> dict[str, Any] | None:
        """The request as JSON, non-streaming; None (skipped) when it declares tools."""
        raw = job.body
        if job.encoding in GZIP:
            try:
                inflated = gunzip_bounded(raw, MAX_SHADOW_BYTES)
            except (EOFError, zlib.error):
                inflated = None
            if inflated is None:
                self._skip("unreadable")
                return None
            raw = inflated
        request = json.loads(raw)
        if any(request.get(name) for name in SIDE_EFFECTS):
            self._skip("side_effects")
            return None
        request["stream"] = False  # a stream is verified as one JSON answer
        request.pop("stream_options", None)
        return dict(request)

    async def _ask(self, job: Shadow, request: dict[str, Any]) -> dict[str, Any]:
        """Send the shadow request; the answer in the stored form (raises on any failure)."""
        s = self.settings
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=s.timeout_ms / 1000))
        headers = {
            k: v
            for k, v in job.headers.items()
            if not k.startswith((":", HEADER, "x-envoy-")) and k not in DROPPED_HEADERS
        }
        headers |= {
            "content-type": "application/json",
            "cache-control": "no-cache, no-store",
            SHADOW_HEADER: "1",
        }
        url = s.upstream_url.rstrip("/") + job.path
        async with self._session.post(url, data=json.dumps(request).encode(), headers=headers) as response:
            body = await response.read()
            if not 200 <= response.status < 300:
                raise RuntimeError(f"upstream answered {response.status}")
        return job.parse(body, job.n)

    async def _heal(self, job: Shadow, fresh: dict[str, Any]) -> None:
        """The served entry was wrong for this request: delete it; store the fresh answer instead."""
        key = job.entry.exact_key
        if await self.cache.forget(key) and self.metrics is not None:
            self.metrics.deleted.labels("verification").inc()
        self.outcomes.forget(key)
        log.info("shadow verification: entry %s… disagreed and was deleted", key[:12])
        # A dated answer ("as of today…") is not stored, as on the request path.
        if self.settings.replace and not volatile_answer(answer_text(fresh)):
            await self.cache.store(job.query, fresh, ttl_seconds=job.ttl_seconds)

    async def _explored(
        self, model: str, candidate: CacheEntry, scores: tuple[float, float], fresh: dict[str, Any]
    ) -> None:
        result = "error"
        if self.cache.embedder.expected_wait() > OVERLOAD_WAIT:
            self._skip("overloaded")
            return
        try:
            same, _ = await agree(
                self.cache.embedder, candidate.response, fresh, self.settings.answer_similarity
            )
            self.outcomes.learn(model, candidate.exact_key, scores[0], not same, scores[1])
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

        False when the id is not one this deployment issued for a live entry (or, with
        ``partition``, one of that partition): the caller cannot tell which.
        """
        key = self.ids.exact_key(entry_id)
        entry = await self.cache.entry(key) if key is not None else None
        if entry is None or not self.ids.valid(entry_id, entry.partition):
            return False
        if partition is not None and entry.partition != partition:
            return False
        self.feedback_counts[verdict] += 1
        if self.metrics is not None:
            self.metrics.feedback.labels(verdict).inc()
        if verdict == "wrong":
            assert key is not None
            if await self.cache.forget(key) and self.metrics is not None:
                self.metrics.deleted.labels("feedback").inc()
            self.outcomes.forget(key)
            log.info("feedback: entry %s… reported wrong and deleted", key[:12])
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
