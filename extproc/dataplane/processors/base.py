"""The processor base: one object per ext_proc stream, one method per phase, one reply per message.

A concrete processor overrides the phases it cares about; the base answers every other phase
with "continue", owns the request's span and :class:`~extproc.dataplane.decision.Decision`, and
reports the decision exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import betterproto2
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from extproc.dataplane.decision import Decision
from extproc.dataplane.shared import Shared
from extproc.observability.tracing import parent_context, span_attributes, tracer
from extproc.protocol import messages as m

log = logging.getLogger(__name__)

Send = Callable[[m.ProcessingResponse], Awaitable[None]]
"""Writes an extra message on the stream (e.g. a timeout extension) before the phase's reply."""


class Processor:
    """Handles the messages of one HTTP request / response."""

    def __init__(
        self,
        shared: Shared,
        metadata: Sequence[tuple[str, Any]] | None = None,
        send: Send | None = None,
    ) -> None:
        self.shared = shared
        self.settings = shared.settings
        self.arrived = time.perf_counter() - shared.loop_lag.seconds
        """When the request's first message was likely received (the loop's recent lag before it)."""
        self.decision = Decision()
        self._metadata = metadata
        self._send = send
        self._span: Span = INVALID_SPAN
        self._reported = False
        self._header_size = (0, 0)
        """(count, bytes) of the headers of the current phase: Envoy's limits apply to them."""
        self.finished = False
        """Nothing more is wanted of this stream: the server ends it after the current reply, and
        Envoy passes the rest of the request and its response on without the processor. Set on a
        body bigger than Envoy's buffer: when the body's end came while Envoy 1.40 waited for the
        reply to its first part, the end was sometimes lost and the request stalled until the idle
        timeout unless the stream ended (the response then carries no x-semantic-cache header)."""

    async def handle(self, request: m.ProcessingRequest) -> m.ProcessingResponse:
        """Dispatch one ext_proc message to its phase method."""
        phase, value = betterproto2.which_one_of(request, "request")
        try:
            if phase in ("request_headers", "response_headers"):
                self._header_size = m.header_size(value.headers)
            if phase == "request_headers":
                return self.on_request_headers(m.header_dict(value.headers), value.end_of_stream)
            if phase == "request_body":
                return await self.on_request_body(value.body, value.end_of_stream)
            if phase == "response_headers":
                return self.on_response_headers(m.header_dict(value.headers), value.end_of_stream)
            if phase == "response_body":
                return self.on_response_body(value.body, value.end_of_stream)
        except asyncio.CancelledError:
            # The stream ended while this phase was deciding (the client left, or Envoy stopped
            # waiting): nothing was decided, whatever the phase had noted so far ("miss").
            self.decision.outcome, self.decision.reason = "bypass", ""
            raise
        except Exception:  # a bug must never break the request: continue unchanged
            log.exception("processor error in %s; passing the request through", phase)
            self._mark_bypass("internal_error")
            return m.continue_phase(phase)
        return m.continue_phase(phase or "request_trailers")

    # --- phases (override what the path needs) ---------------------------------------------

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> m.ProcessingResponse:
        """Request headers: start the span and let the request continue."""
        self._start_span(headers)
        return m.request_headers()

    async def on_request_body(self, body: bytes, end_of_stream: bool) -> m.ProcessingResponse:
        """Request body: continue unchanged."""
        return m.request_body()

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> m.ProcessingResponse:
        """Response headers: continue unchanged."""
        return m.response_headers()

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> m.ProcessingResponse:
        """Response body: continue unchanged."""
        return m.response_body()

    def on_stream_closed(self) -> None:
        """The stream ended: report the decision if nothing else did."""
        self._report()

    # --- shared bookkeeping ------------------------------------------------------------------

    def _start_span(self, headers: dict[str, str]) -> None:
        self._span = tracer.start_span(
            "semantic_cache.request", context=parent_context(self._metadata, headers), kind=SpanKind.SERVER
        )

    def _pass_through(self, reason: str) -> m.ProcessingResponse:
        """Not ours: skip every later phase of this stream."""
        self._mark_bypass(reason)
        self._report()
        return m.request_headers(mode=m.SKIP_ALL)

    def _mark_bypass(self, reason: str) -> None:
        self.decision.outcome, self.decision.reason = "bypass", reason

    def _report(self) -> None:
        """End the span and hand the decision on, exactly once per stream."""
        if self._reported:
            return
        self._reported = True
        try:
            self._release()
            self._end_span()
            self.shared.on_decision(self.decision)
        except Exception:  # reporting must never break a request
            log.exception("decision reporting failed")

    def _release(self) -> None:
        """Give back what this stream holds (a single-flight lead…); called once, on report."""

    def _threshold_in_force(self) -> float:
        """The similarity threshold this request ran under (a policy's, else the cache's)."""
        if self.decision.policy:
            return self.settings.similarity_threshold
        return self.shared.cache.similarity_threshold

    def _end_span(self) -> None:
        if self._span.is_recording():
            cache = self.shared.cache
            self._span.set_attributes(
                span_attributes(self.decision, cache.backend.name, self._threshold_in_force())
            )
        self._span.end()


class PassThroughProcessor(Processor):
    """Every path no processor is registered for: one bypass decision, no later phases."""

    reason = "not_chat"

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> m.ProcessingResponse:
        """Skip the rest of the stream."""
        self._start_span(headers)
        return self._pass_through(self.reason)
