"""Warnings a client can cause (malformed trace headers) reach the log once a minute, not per request."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from extproc.observability.logs import CLIENT_INPUT_LOGGERS, OncePerInterval, setup_logging
from extproc.observability.tracing import parent_context

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Collect(logging.Handler):
    """Keeps the formatted messages it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The root logger set up as the processor sets it up, collecting messages."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("INFO")
    collect = Collect()
    root.addHandler(collect)
    try:
        yield collect.messages
    finally:
        root.handlers[:], root.level = saved
        for name in CLIENT_INPUT_LOGGERS:
            logger = logging.getLogger(name)
            logger.filters = [f for f in logger.filters if not isinstance(f, OncePerInterval)]


def test_hostile_trace_headers_log_once_shortened(logged: list[str]) -> None:
    for i in range(200):
        parent_context(None, {"traceparent": VALID + "-" + "x" * (600 + i)})
        parent_context(None, {"traceparent": VALID, "tracestate": f"k=v,{'%s' * 3}bad member {i}"})
    # Once per logger and minute, never the whole header, and a later one counts what it skipped.
    assert len(logged) == 2, logged
    assert all(len(m) < 300 and "from a request's trace headers" in m for m in logged)
    assert "x" * 250 not in "".join(logged)


def test_the_count_of_dropped_records_rides_on_the_next_one() -> None:
    allow = OncePerInterval(interval=0.0)
    first = logging.LogRecord("t", logging.WARNING, __file__, 1, "bad %s", ("header",), None)
    assert allow.filter(first) and first.getMessage() == "bad header (from a request's trace headers)"
    slow = OncePerInterval(interval=3600.0)
    records = [logging.LogRecord("t", logging.WARNING, __file__, 1, "bad 100%", None, None) for _ in range(4)]
    assert [slow.filter(r) for r in records] == [True, False, False, False]
    slow._next = 0.0  # the hour is over
    later = logging.LogRecord("t", logging.WARNING, __file__, 1, "bad again", None, None)
    assert slow.filter(later)
    assert later.getMessage() == "bad again (from a request's trace headers; 3 more like it not logged)"


def test_a_valid_trace_context_is_still_read(logged: list[str]) -> None:
    from opentelemetry import trace

    context = parent_context(None, {"traceparent": VALID})
    span = trace.get_current_span(context).get_span_context()
    assert format(span.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert logged == []
