"""OpenTelemetry tracing, Prometheus metrics and log formatting.

Tracing is configured the standard way (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``…), except that an unset ``OTEL_TRACES_EXPORTER``
means tracing is off: the API's no-op tracer is then used and spans cost next to nothing.

Span attribute names (never prompt or response text, never credentials):

=================================  =========================================================
``semantic_cache.decision``        ``hit`` | ``miss`` | ``bypass``
``semantic_cache.match``           ``exact`` | ``semantic`` (hits)
``semantic_cache.similarity``      cosine similarity of the served entry (hits)
``semantic_cache.best_similarity`` best candidate's similarity (lookups)
``semantic_cache.threshold``       the similarity threshold in force
``semantic_cache.backend``         ``memory`` | ``milvus``
``semantic_cache.model``           the request's ``model``
``semantic_cache.bypass_reason``   why the cache stepped aside (``not_chat``, ``no_scope``…)
``semantic_cache.store``           ``stored`` or the store-skip reason (``non_2xx``…)
``semantic_cache.candidates``      candidates examined by the lookup
``semantic_cache.rejected_by``     guards that rejected candidates above the threshold
``semantic_cache.entry_age_s``     age of the served entry (hits)
``semantic_cache.partition``       16-hex prefix of H(model, scope, fingerprint)
=================================  =========================================================
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .config import ConfigError

if TYPE_CHECKING:
    from .processor import Decision, Shared

log = logging.getLogger(__name__)

TRACER_NAME = "semantic-cache"
tracer = trace.get_tracer(TRACER_NAME)
"""The tracer every module uses (no-op until :func:`setup_tracing` installs a provider)."""

# Latency buckets that resolve 0.1 ms .. 1 s.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def setup_tracing(env: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider when ``OTEL_TRACES_EXPORTER`` asks for one; True if on."""
    env = os.environ if env is None else env
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "semantic-cache")})
    )
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none")
    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: exporters=%s endpoint=%s",
        ",".join(names),
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "default"),
    )
    return True


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


def shutdown_tracing() -> None:
    """Flush and stop the span processors (at shutdown)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def parent_context(
    metadata: Iterable[tuple[str, Any]] | None, headers: Mapping[str, str] | None = None
) -> otel_context.Context:
    """The trace context Envoy passed in the gRPC metadata, else the request's ``traceparent``."""
    carrier = {k.lower(): v for k, v in (metadata or ()) if isinstance(v, str)}
    if "traceparent" not in carrier and headers:
        carrier = {k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}
    return propagate.extract(carrier) if carrier else otel_context.Context()


def span_attributes(d: Decision, backend: str, threshold: float) -> dict[str, Any]:
    """The ``semantic_cache.*`` attributes of a finished request span (see the table above)."""
    attrs: dict[str, Any] = {
        "semantic_cache.decision": d.outcome,
        "semantic_cache.backend": backend,
        "semantic_cache.threshold": threshold,
    }
    optional: dict[str, Any] = {
        "semantic_cache.match": d.match,
        "semantic_cache.model": d.model[:256],
        "semantic_cache.bypass_reason": d.reason if d.outcome == "bypass" else "",
        "semantic_cache.store": d.store,
        "semantic_cache.partition": d.partition,
        "semantic_cache.rejected_by": ",".join(d.rejected_by),
    }
    attrs.update({k: v for k, v in optional.items() if v})
    if d.outcome != "bypass" and d.reason != "no_cache":
        attrs["semantic_cache.candidates"] = d.candidates
        attrs["semantic_cache.best_similarity"] = round(d.best_similarity, 4)
    if d.outcome == "hit":
        attrs["semantic_cache.similarity"] = round(d.similarity, 4)
        attrs["semantic_cache.entry_age_s"] = round(d.entry_age_s or 0.0, 3)
    return attrs


# --- metrics ------------------------------------------------------------------------------


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
        self.bypasses = Counter(
            "semantic_cache_bypass", "Bypassed requests by reason.", ["reason"], registry=r
        )
        self.stores = Counter(
            "semantic_cache_store", "Responses stored, or skipped by reason.", ["result"], registry=r
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
            buckets=(0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0),
            registry=r,
        )

    def watch(self, shared: Shared) -> None:
        """Also export backend state, entries, evictions and the breaker, read at scrape time."""
        self.registry.register(_BackendCollector(shared))

    def observe(self, d: Decision, backend: str) -> None:
        """Record one finished request."""
        self.requests.labels(d.outcome, d.match or "none").inc()
        if d.outcome == "bypass":
            self.bypasses.labels(d.reason or "unknown").inc()
            if d.reason.startswith("backend") or d.reason == "lookup_timeout":
                self.backend_errors.labels(backend, d.reason).inc()
        if d.store:
            self.stores.labels(d.store).inc()
            if d.store.startswith("backend"):
                self.backend_errors.labels(backend, "store_" + d.store).inc()
        if d.match == "semantic":
            self.hit_similarity.observe(d.similarity)
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

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def collect(self) -> Iterable[GaugeMetricFamily]:
        backend = self.shared.cache.backend
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


# --- logs ---------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str | None = None) -> None:
    """Plain text by default; JSON with ``SEMANTIC_CACHE_LOG_FORMAT=json``."""
    fmt = (fmt or os.environ.get("SEMANTIC_CACHE_LOG_FORMAT", "plain")).lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("sentence_transformers", "transformers", "httpx", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
