"""The processor's Prometheus metrics: counters and histograms per decision, backend gauges at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from extproc.observability.record import (
    BYPASS_REASONS,
    BackendLike,
    DecisionRecord,
    EmbedderLike,
    bypass_reason,
    hit_ratio,
)

# Latency buckets that resolve 0.1 ms .. 1 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECISION_SERIES = (("hit", "exact"), ("hit", "semantic"), ("miss", "none"), ("bypass", "none"))
VERIFICATION_RESULTS = ("agree", "disagree", "error")
BACKEND_ERRORS = ("backend_unavailable", "backend_error", "store_backend_unavailable", "store_backend_error")
VERIFICATION_SKIPS = ("budget", "concurrency", "side_effects", "overloaded", "unreadable")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    """The processor's Prometheus metrics (one registry per server)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "semantic_cache_requests",
            "Chat requests by decision and match kind.",
            ["decision", "match"],
            registry=r,
        )
        # Series exist from the start, at 0: a counter first seen at 1 loses that event to rate()
        # and increase(), and a pod that never hits would leave the hit ratio with no numerator
        # (no data, so the collapsed-hit-ratio alert could not fire).
        for decision, match in DECISION_SERIES:
            self.requests.labels(decision, match)
        self.bypasses = Counter(
            "semantic_cache_bypass", "Bypassed requests by reason.", ["reason"], registry=r
        )
        for reason in BYPASS_REASONS:  # every documented reason exists from the start, at 0
            self.bypasses.labels(reason)
        self.non_latin = Counter(
            "semantic_cache_non_latin_prompts",
            "Prompts mostly in a script the English-only default model cannot read well.",
            registry=r,
        )
        self.stores = Counter(
            "semantic_cache_store", "Responses stored, or skipped by reason.", ["result"], registry=r
        )
        self.saved_tokens = Counter(
            "semantic_cache_saved_tokens",
            "Tokens hits did not send upstream: the stored usage of the answers served.",
            ["kind"],
            registry=r,
        )
        self.guard_rejections = Counter(
            "semantic_cache_guard_rejections",
            "Candidates above the threshold rejected by a guard.",
            ["guard"],
            registry=r,
        )
        self.backend_errors = Counter(
            "semantic_cache_backend_errors",
            "Failed or unavailable backend calls.",
            ["backend", "reason"],
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "semantic_cache_lookup_seconds",
            "Whole lookup (exact + embed + search).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embed_seconds = Histogram(
            "semantic_cache_embed_seconds",
            "Query embedding, queueing included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search_seconds = Histogram(
            "semantic_cache_backend_search_seconds",
            "Backend vector search.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "semantic_cache_store_seconds",
            "Backend write of one response.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "semantic_cache_embedding_batch_size",
            "Queries per embedding forward pass.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.hit_similarity = Histogram(
            "semantic_cache_hit_similarity",
            "Similarity of served semantic hits.",
            buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0),
            registry=r,
        )
        self.hit_confidence = Histogram(
            "semantic_cache_hit_confidence",
            "Verifier confidence (calibrated P(same meaning)) of served semantic hits.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0),
            registry=r,
        )

        self.verifications = Counter(
            "semantic_cache_verifications",
            "Shadow verifications of served semantic hits by model and result (agree|disagree|error).",
            ["model", "result"],
            registry=r,
        )
        self.verification_skipped = Counter(
            "semantic_cache_verification_skipped",
            "Sampled hits not verified: budget, concurrency, side_effects, overloaded, unreadable.",
            ["reason"],
            registry=r,
        )
        self.explorations = Counter(
            "semantic_cache_explorations",
            "Candidates the false-hit bound did not serve, compared with the upstream's answer.",
            ["result"],
            registry=r,
        )
        self.bound_decisions = Counter(
            "semantic_cache_bound_decisions",
            "Semantic candidates the false-hit bound served or sent upstream to learn (explore).",
            ["decision"],
            registry=r,
        )
        self.bound_changes = Counter(
            "semantic_cache_bound_changes",
            "Groups of the false-hit bound whose recent outcomes contradicted their bound (their "
            "older outcomes stopped counting).",
            registry=r,
        )
        self.feedback = Counter(
            "semantic_cache_feedback",
            "Client feedback on served entries by verdict.",
            ["verdict"],
            registry=r,
        )
        self.deleted = Counter(
            "semantic_cache_wrong_entries_deleted",
            "Entries deleted as wrong answers, by cause (verification|feedback).",
            ["cause"],
            registry=r,
        )
        for counter, values in (
            (self.verification_skipped, VERIFICATION_SKIPS),
            (self.explorations, ("agree", "disagree")),
            (self.bound_decisions, ("serve", "explore")),
            (self.feedback, ("right", "wrong")),
            (self.deleted, ("verification", "feedback")),
            (self.stores, ("stored",)),
            (self.saved_tokens, ("prompt", "completion")),  # rate() sees the first hit's tokens
        ):
            for value in values:
                counter.labels(value)
        self._verified_models: set[str] = set()

    def verified(self, model: str, result: str) -> None:
        """Count one shadow verification of ``model``; a model's first creates its three series at 0."""
        if model not in self._verified_models:
            self._verified_models.add(model)
            for each in VERIFICATION_RESULTS:
                self.verifications.labels(model, each)
        self.verifications.labels(model, result).inc()

    def watch(self, backend: Callable[[], BackendLike], name: str = "") -> None:
        """Also export backend state, entries, evictions and the breaker, read at scrape time;
        the error series of backend ``name`` exist from the start, at 0."""
        self.registry.register(_BackendCollector(backend))
        if name:
            for reason in BACKEND_ERRORS:
                self.backend_errors.labels(name, reason)

    def watch_embedder(self, embedder: Callable[[], EmbedderLike]) -> None:
        """Also export the embedding backlog and the wait it predicts, read at scrape time."""
        self.registry.register(_EmbedderCollector(embedder))

    def watch_loop_lag(self, lag: Callable[[], float]) -> None:
        """Also export the event loop's recent scheduling delay (seconds), read at scrape time."""
        self.registry.register(_LoopLagCollector(lag))

    def watch_hit_ratio(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Also export ``semantic_cache_hit_ratio`` from the decision counts (see :func:`hit_ratio`)."""
        self.registry.register(_HitRatioCollector(counts))

    def watch_config(self, problem: Callable[[], str]) -> None:
        """Also export whether the config file last re-read was valid (``problem()`` is "" when so)."""
        self.registry.register(_ConfigCollector(problem))

    def watch_false_hits(self, rates: Callable[[], Mapping[str, tuple[float | None, float]]]) -> None:
        """Also export per model the verified false-hit rate and its upper bound, read at scrape time."""
        self.registry.register(_FalseHitCollector(rates))

    def observe(self, d: DecisionRecord, backend: str) -> None:
        """Record one finished request."""
        self.requests.labels(d.outcome, d.match or "none").inc()
        if d.outcome == "bypass":
            self.bypasses.labels(bypass_reason(d.reason)).inc()
            if d.reason.startswith("backend"):  # a lookup_timeout is mostly embedding time: not the backend's
                self.backend_errors.labels(backend, d.reason).inc()
        if d.non_latin:
            self.non_latin.inc()
        if d.store:
            self.stores.labels(d.store).inc()
            if d.store.startswith("backend"):
                self.backend_errors.labels(backend, "store_" + d.store).inc()
        if d.match == "semantic":
            self.hit_similarity.observe(d.similarity)
            if d.confidence is not None:
                self.hit_confidence.observe(d.confidence)
        if d.outcome == "hit":
            self.saved_tokens.labels("prompt").inc(d.saved_prompt_tokens)
            self.saved_tokens.labels("completion").inc(d.saved_completion_tokens)
        for guard in d.rejected_by:
            self.guard_rejections.labels(guard).inc()
        t = d.timings
        for key, histogram in (
            ("lookup_ms", self.lookup_seconds),
            ("embed_ms", self.embed_seconds),
            ("search_ms", self.search_seconds),
            ("store_ms", self.store_seconds),
        ):
            if key in t:
                histogram.observe(t[key] / 1000)


class _BackendCollector(Collector):
    """Gauges read from the live backend at scrape time."""

    def __init__(self, backend: Callable[[], BackendLike]) -> None:
        self.backend = backend

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backend = self.backend()
        state, _ = backend.status()
        up = GaugeMetricFamily(
            "semantic_cache_backend_up",
            "1 when the backend serves, 0 while bypassing.",
            labels=["backend", "state"],
        )
        up.add_metric([backend.name, state], 1.0 if state == "ready" else 0.0)
        yield up
        breaker = getattr(backend, "breaker", None)
        if breaker is not None:
            g = GaugeMetricFamily(
                "semantic_cache_circuit_breaker_state",
                "Backend circuit breaker: 0 closed, 1 half-open, 2 open.",
                labels=["backend"],
            )
            g.add_metric([backend.name], BREAKER_STATES.get(breaker.state, 2))
            yield g
            opened = GaugeMetricFamily(
                "semantic_cache_circuit_breaker_opened",
                "Times the breaker has opened since start.",
                labels=["backend"],
            )
            opened.add_metric([backend.name], breaker.opened)
            yield opened
        entries = GaugeMetricFamily(
            "semantic_cache_entries",
            "Entries in the cache (Milvus: as of the last sweep).",
            labels=["backend"],
        )
        entries.add_metric([backend.name], float(getattr(backend, "known_entries", 0)))
        yield entries
        evictions = GaugeMetricFamily(
            "semantic_cache_evictions", "Entries evicted to respect max_entries.", labels=["backend"]
        )
        evictions.add_metric([backend.name], float(getattr(backend, "evictions", 0)))
        yield evictions


class _EmbedderCollector(Collector):
    """Gauges of the embedding queue, read at scrape time (admission control works from them)."""

    def __init__(self, embedder: Callable[[], EmbedderLike]) -> None:
        self.embedder = embedder

    def collect(self) -> Iterable[GaugeMetricFamily]:
        embedder = self.embedder()
        yield GaugeMetricFamily(
            "semantic_cache_embedding_queue", "Texts waiting for an embedding pass.", value=embedder.backlog
        )
        yield GaugeMetricFamily(
            "semantic_cache_embedding_expected_wait_seconds",
            "Predicted wait of a new lookup for its embedding (compared with max_added_latency_ms).",
            value=embedder.expected_wait(),
        )


class _LoopLagCollector(Collector):
    """``semantic_cache_event_loop_lag_seconds``: how late the event loop runs (CPU starvation)."""

    def __init__(self, lag: Callable[[], float]) -> None:
        self.lag = lag

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "semantic_cache_event_loop_lag_seconds",
            "Recent delay of the event loop's callbacks; admission control charges it to every lookup.",
            value=self.lag(),
        )


class _ConfigCollector(Collector):
    """``semantic_cache_config_valid``: 0 while an invalid config file is ignored (last good settings run)."""

    def __init__(self, problem: Callable[[], str]) -> None:
        self.problem = problem

    def collect(self) -> Iterable[GaugeMetricFamily]:
        valid = GaugeMetricFamily(
            "semantic_cache_config_valid",
            "1 when the config file last read is valid; 0 when it is invalid and the last good settings run.",
        )
        valid.add_metric([], 0.0 if self.problem() else 1.0)
        yield valid


class _HitRatioCollector(Collector):
    """``semantic_cache_hit_ratio``: hits / (hits + misses) since start, the one definition."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = self.counts()
        ratio = hit_ratio(counts.get("hit", 0), counts.get("miss", 0))
        gauge = GaugeMetricFamily(
            "semantic_cache_hit_ratio",
            "Hits / (hits + misses) since start: lookups answered from cache; bypasses excluded.",
        )
        gauge.add_metric([], float("nan") if ratio is None else ratio)
        yield gauge


class _FalseHitCollector(Collector):
    """``semantic_cache_false_hit_rate`` and its ``_upper`` bound per model, from shadow verification."""

    def __init__(self, rates: Callable[[], Mapping[str, tuple[float | None, float]]]) -> None:
        self.rates = rates

    def collect(self) -> Iterable[GaugeMetricFamily]:
        rate = GaugeMetricFamily(
            "semantic_cache_false_hit_rate",
            "Verified semantic hits whose answer disagreed with the upstream's, per model (since start).",
            labels=["model"],
        )
        upper = GaugeMetricFamily(
            "semantic_cache_false_hit_rate_upper",
            "95% upper bound (Wilson) of the false-hit rate per model; 1 before the first verdict.",
            labels=["model"],
        )
        for model, (value, bound) in sorted(self.rates().items()):
            rate.add_metric([model], float("nan") if value is None else value)
            upper.add_metric([model], bound)
        yield rate
        yield upper
