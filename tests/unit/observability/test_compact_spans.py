"""The compact console span format: one line per span, written as the span ends."""

from __future__ import annotations

import io

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from extproc.observability.compact_spans import CompactSpanExporter


def test_one_line_per_span_at_once() -> None:
    out = io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(CompactSpanExporter(out)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("semantic_cache.request") as span:
        span.set_attributes({"semantic_cache.decision": "hit", "semantic_cache.similarity": 0.9862})
        with tracer.start_as_current_span("semantic_cache.embed"):
            pass
        assert out.getvalue().count("\n") == 1  # the child is out before the parent ends
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("span semantic_cache.embed ") and "ms trace=" in lines[0]
    assert lines[1].startswith("span semantic_cache.request ")
    assert lines[1].endswith("decision=hit similarity=0.9862")
    trace_ids = {line.split("trace=")[1].split()[0] for line in lines}
    assert len(trace_ids) == 1


def test_a_value_from_a_request_never_starts_a_line_of_its_own() -> None:
    """A model name with a newline forged a second log line ("… flushed the cache"), in the
    plain log format and in compact spans alike."""
    import logging

    from extproc.observability.logs import PlainFormatter

    forged = "m\nWARNING extproc.admin.api: admin API: flushed the memory cache (999 entries)"
    record = logging.LogRecord("x", logging.DEBUG, "f", 1, "decision=miss model=%s", (forged,), None)
    line = PlainFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "\n" not in line and "model=m\\x0aWARNING" in line
    out = io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(CompactSpanExporter(out)))
    with provider.get_tracer("t").start_as_current_span("semantic_cache.request") as span:
        span.set_attribute("semantic_cache.model", forged)
    assert out.getvalue().count("\n") == 1
