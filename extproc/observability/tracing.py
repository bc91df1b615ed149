"""OpenTelemetry tracing: setup from the standard OTEL_* variables, context from Envoy, span attributes.

Tracing is configured the standard way (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``…), except that an unset ``OTEL_TRACES_EXPORTER``
means tracing is off: the API's no-op tracer is then used and spans cost next to nothing.

Span attribute names (never prompt or response text, never credentials):

=================================  =========================================================
``semantic_cache.decision``        ``hit`` | ``miss`` | ``bypass``
``semantic_cache.match``           ``exact`` | ``semantic`` (hits)
``semantic_cache.similarity``      cosine similarity of the served entry (hits)
``semantic_cache.confidence``      the verifier's P(same meaning) of the served entry (hits)
``semantic_cache.best_similarity`` best candidate's similarity (lookups)
``semantic_cache.threshold``       the similarity threshold in force
``semantic_cache.backend``         ``memory`` | ``milvus``
``semantic_cache.model``           the request's ``model``
``semantic_cache.bypass_reason``   why the cache stepped aside (``not_chat``, ``no_scope``…)
``semantic_cache.store``           ``stored`` or the store-skip reason (``non_2xx``…)
``semantic_cache.candidates``      candidates examined by the lookup
``semantic_cache.rejected_by``     guards that rejected candidates above the threshold
``semantic_cache.volatile``        why the prompt or answer is time-sensitive (docs/freshness.md)
``semantic_cache.policy``          the policy that applied (docs/policies.md)
``semantic_cache.entry_age_s``     age of the served entry (hits)
``semantic_cache.verifying``       the hit was sampled for shadow verification (docs/verification.md)
``semantic_cache.partition``       16-hex prefix of H(model, scope, fingerprint)
=================================  =========================================================
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from extproc.errors import ConfigError
from extproc.observability.record import DecisionRecord, bypass_reason, miss_reason

log = logging.getLogger(__name__)

TRACER_NAME = "semantic-cache"
tracer = trace.get_tracer(TRACER_NAME)
"""The tracer every module uses (no-op until :func:`setup_tracing` installs a provider)."""


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
        elif name == "compact":
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            from extproc.observability.compact_spans import CompactSpanExporter

            # One line per span as it ends (no 5 s batch delay): for local runs, not production.
            provider.add_span_processor(SimpleSpanProcessor(CompactSpanExporter(sys.stderr)))
        elif name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        else:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console, compact or none"
            )
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


def span_attributes(d: DecisionRecord, backend: str, threshold: float) -> dict[str, Any]:
    """The ``semantic_cache.*`` attributes of a finished request span (see the table above)."""
    attrs: dict[str, Any] = {
        "semantic_cache.decision": d.outcome,
        "semantic_cache.backend": backend,
        "semantic_cache.threshold": threshold,
    }
    optional: dict[str, Any] = {
        "semantic_cache.match": d.match,
        "semantic_cache.model": d.model[:256],
        "semantic_cache.bypass_reason": bypass_reason(d.reason) if d.outcome == "bypass" else miss_reason(d),
        "semantic_cache.store": d.store,
        "semantic_cache.partition": d.partition,
        "semantic_cache.rejected_by": ",".join(dict.fromkeys(d.rejected_by)),  # each guard once
        "semantic_cache.volatile": d.volatile,
        "semantic_cache.policy": d.policy,
    }
    attrs.update({k: v for k, v in optional.items() if v})
    if d.outcome != "bypass" and d.reason != "no_cache":
        attrs["semantic_cache.candidates"] = d.candidates
        attrs["semantic_cache.best_similarity"] = round(d.best_similarity, 4)
    if d.outcome == "hit":
        attrs["semantic_cache.similarity"] = round(d.similarity, 4)
        if d.confidence is not None:
            attrs["semantic_cache.confidence"] = round(d.confidence, 4)
        attrs["semantic_cache.entry_age_s"] = round(d.entry_age_s or 0.0, 3)
        attrs["semantic_cache.verifying"] = d.verifying
    return attrs
