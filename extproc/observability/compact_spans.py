"""A span exporter for local runs: one line per span on stderr, written when the span ends."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from extproc.observability.logs import one_line

PREFIX = "semantic_cache."


def format_span(span: ReadableSpan) -> str:
    """``span NAME 5.70ms trace=… decision=hit similarity=0.9862 …`` (our attribute prefix dropped)."""
    start, end = span.start_time or 0, span.end_time or 0
    ctx = span.get_span_context()
    trace_id = f"{ctx.trace_id:032x}"[:16] if ctx is not None else "-"
    parts = [f"span {span.name} {(end - start) / 1e6:.2f}ms trace={trace_id}"]
    for key, value in (span.attributes or {}).items():
        parts.append(f"{key.removeprefix(PREFIX)}={_value(value)}")
    if not span.status.is_ok:
        parts.append(f"status={span.status.status_code.name}")
    return " ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return one_line(",".join(str(v) for v in value))
    return one_line(str(value))


class CompactSpanExporter(SpanExporter):
    """Writes :func:`format_span` lines; paired with a SimpleSpanProcessor, so nothing waits."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write one line per span."""
        for span in spans:
            self.out.write(format_span(span) + "\n")
        self.out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""
