"""The chat-completions processor: request headers → request body → response headers → body.

Looks the prompt up on the request body and answers a hit at once; on a miss it lets the request
go upstream, captures the response and stores it in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from extproc.cache import CacheQuery, LookupResult
from extproc.cache.guards.scripts import mostly_non_latin
from extproc.cache.volatile import dated_answer, volatile_prompt
from extproc.dataplane.admission import embedding_budget
from extproc.dataplane.decision import lookup_failure_reason, reason_header
from extproc.dataplane.freshness import Freshness, answer_text, parse_freshness, upstream_lifetime
from extproc.dataplane.identity import cache_query, canonical_query
from extproc.dataplane.policy import route_name, route_settings
from extproc.dataplane.processors.base import Processor, Send
from extproc.dataplane.processors.settings import RequestSettings
from extproc.dataplane.processors.single_flight import SingleFlight
from extproc.dataplane.processors.verify import VerifiedHits
from extproc.dataplane.shared import HEADER, Shared
from extproc.errors import NotCacheable, NotStorable, OutcomeError
from extproc.protocol import encoding
from extproc.protocol import messages as m
from extproc.protocol.completion import saved_tokens
from extproc.protocol.encoding import GZIP, IDENTITY, INLINE_BYTES, gunzip_bounded, json_media_type
from extproc.protocol.openai import (
    ChatRequest,
    parse_chat_request,
    parse_json_completion,
    parse_sse_completion,
    render_completion,
    render_sse,
)

log = logging.getLogger(__name__)


class ChatCompletionsProcessor(RequestSettings, SingleFlight, VerifiedHits, Processor):
    """Caches ``POST /v1/chat/completions``: one method per phase.

    The wire format is five functions (class attributes), so another OpenAI endpoint with the
    same request / response life (``/v1/completions``) is a subclass that swaps them.
    """

    parse_request = staticmethod(parse_chat_request)
    parse_json = staticmethod(parse_json_completion)
    parse_sse = staticmethod(parse_sse_completion)
    render_json = staticmethod(render_completion)
    render_stream = staticmethod(render_sse)

    def __init__(
        self,
        shared: Shared,
        metadata: Sequence[tuple[str, Any]] | None = None,
        send: Send | None = None,
    ) -> None:
        super().__init__(shared, metadata, send)
        self._leading = False
        self._query: CacheQuery | None = None
        self._request: ChatRequest | None = None
        self._lookup: LookupResult | None = None
        self._no_cache = False
        self._no_store = False
        self._fresh = Freshness()
        self._scope = "global"
        self._revision = ""
        self._request_encoding = ""
        self._storing = False
        self._status = 0
        self._content_type = ""
        self._content_encoding = ""
        self._chunks: list[bytes] = []
        self._size = 0
        self._captured = False
        self._learning = False
        self._query_string = ""
        self._route = route_name(metadata)
        self._headers: dict[str, str] = {}

    # --- request -------------------------------------------------------------------------

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> m.ProcessingResponse:
        """Decide whether this request is ours; strip accept-encoding if it may be stored."""
        self._start_span(headers)
        if headers.get(":method") != "POST":
            return self._pass_through("not_chat")
        self._query_string = canonical_query(headers.get(":path", ""))
        self._headers = headers
        # The model is in the body: bypass here only when every policy the request may fall
        # under says so (the same reason); the policy itself is applied once the model is known.
        if self.shared.paused:  # the pass-through switch: before any policy
            return self._bypass("disabled")
        if not json_media_type(headers.get("content-type", "")):
            return self._bypass("not_json")
        possible = route_settings(self.shared.settings, self._route)
        self.settings = possible[-1][0]
        reasons = {self._policy_bypass(settings, headers) for settings, _ in possible}
        if len(reasons) == 1 and (reason := reasons.pop()):
            self.decision.policy = possible[0][1] if len(possible) == 1 else ""
            return self._bypass(reason)
        if end_of_stream:
            return self._bypass("no_body")
        if encoding.declared_length(headers) > max(settings.max_request_bytes for settings, _ in possible):
            # Never into Envoy's partial buffering: a body just over its buffer sometimes stalled there.
            return self._bypass("request_too_large")
        self._fresh = parse_freshness(headers.get("cache-control", ""))
        self._no_cache, self._no_store = self._fresh.no_cache, self._fresh.no_store
        if self._no_cache and self._no_store:
            return self._bypass("no_cache_no_store")
        revision_header = self.settings.revision_header.lower()
        revision = headers.get(revision_header, "").strip() if revision_header else ""
        self._revision = revision or self.settings.revision
        self._request_encoding = headers.get("content-encoding", "").strip().lower()
        # Mutate only what is there: Envoy re-checks its header limits after any mutation and
        # fails the request with a 500 when the map is at them (it adds headers of its own).
        remove = () if self._no_store or "accept-encoding" not in headers else ("accept-encoding",)
        if remove and m.near_header_limits(self._header_size):
            remove = ()  # a compressed answer is still stored (gzip) or skipped, never a 500
        return m.request_headers(m.mutation(remove=remove))

    async def on_request_body(self, body: bytes, end_of_stream: bool) -> m.ProcessingResponse:
        """Look the prompt up: answer a hit at once, otherwise let the request go upstream."""
        if not end_of_stream:  # BUFFERED_PARTIAL: bigger than Envoy's buffer (a chunked body)
            self._mark_bypass("request_too_large")
            self.finished = True  # Envoy 1.40 sometimes lost the end of such a body: see Processor.finished
            return m.request_body()
        try:
            chat = await self._parse_request(body)
        except NotCacheable as exc:
            self._mark_bypass(exc.reason)
            return m.request_body()
        self._request, self._body = chat, body
        self.decision.model = chat.model
        self.decision.non_latin = mostly_non_latin(chat.prompt)
        if not self._apply_policy(chat.model):
            return m.request_body()
        query = cache_query(chat, self._scope, self._revision, self._query_string, self._route)
        self._query = query
        self.decision.partition = query.partition[:16]
        self.decision.outcome = "miss"
        self._storing = not self._no_store
        asked_no_cache = self._no_cache
        self._check_volatile(volatile_prompt(chat.prompt, *chat.earlier))
        if self._no_cache:
            self._client_feedback(query)
            self.decision.reason = "no_cache" if asked_no_cache else "volatile"
            return m.request_body()
        started = time.perf_counter()
        max_wait = embedding_budget(
            self.settings.max_added_latency_ms, started - self.arrived, self.shared.loop_lag.seconds
        )
        try:
            timeout = self.settings.lookup_timeout_ms / 1000
            with trace.use_span(self._span, end_on_exit=False):
                lookup = self.shared.cache.check(
                    query,
                    threshold=self._threshold(),
                    min_confidence=self._min_confidence(),
                    max_wait=max_wait,
                    max_age=self._fresh.max_age,
                )
                self._lookup = await asyncio.wait_for(lookup, timeout)
        except Exception as exc:  # never fail the request because of the cache
            reason = lookup_failure_reason(exc)
            # Backend outages are logged once per state change by the backend itself.
            level = logging.WARNING if reason in ("backend_error", "embedding_error") else logging.DEBUG
            log.log(
                level,
                "cache lookup failed (%s): %s",
                reason,
                type(exc).__name__,
                exc_info=reason == "backend_error",
            )
            self._mark_bypass(reason)
            self._storing = False
            if reason == "overloaded" and not self._no_store:
                # Storing the answer would embed it: the very work that was just shed, and
                # CPU taken from the requests still being served.  Stores go first under load.
                self.decision.store = "overloaded"
            return m.request_body()
        finally:
            self.decision.timings["lookup_ms"] = (time.perf_counter() - started) * 1000
            self.decision.timings["before_lookup_ms"] = (started - self.arrived) * 1000
        lookup = self._lookup = self._bounded(self._lookup)
        d = self.decision
        d.candidates, d.best_similarity, d.rejected_by = (
            lookup.candidates,
            lookup.best_similarity,
            lookup.rejections,
        )
        d.rejected_similarity = lookup.rejected_similarity
        d.timings.update(lookup.timings)
        if lookup.entry is None and self._storing:
            # A stream never waits: its first token comes in a fraction of a second from the
            # upstream, the leader's whole answer (or none, if it cannot be stored) only at its end.
            lookup = await self._coalesce(query, follow=not chat.stream) or lookup
        if lookup.entry is None:
            return m.request_body()
        d.entry_age_s = max(0.0, time.time() - lookup.entry.created_at)
        return await self._serve_hit(chat, lookup)

    async def _parse_request(self, body: bytes) -> ChatRequest:
        """Decode and parse the body; a compressed or large one off the event loop, bounded."""
        encoding = self._request_encoding
        if encoding not in IDENTITY and encoding not in GZIP:
            raise NotCacheable("unsupported_encoding")
        if len(body) > self.settings.max_request_bytes:
            raise NotCacheable("request_too_large")
        if encoding in IDENTITY and len(body) <= INLINE_BYTES:
            return self.parse_request(body, self.settings.fingerprint_ignore_fields)
        return await asyncio.to_thread(self._decode_and_parse, body)

    def _decode_and_parse(self, body: bytes) -> ChatRequest:
        """(worker thread) Inflate at most ``max_request_bytes``, then parse."""
        if self._request_encoding in GZIP:
            try:
                decoded = gunzip_bounded(body, self.settings.max_request_bytes)
            except (EOFError, zlib.error) as exc:
                raise NotCacheable("bad_encoding") from exc
            if decoded is None:  # a decompression bomb, or just too big: never inflated whole
                raise NotCacheable("request_too_large")
            body = decoded
        return self.parse_request(body, self.settings.fingerprint_ignore_fields)

    async def _serve_hit(self, chat: ChatRequest, lookup: LookupResult) -> m.ProcessingResponse:
        assert lookup.entry is not None
        self.decision.outcome, self.decision.match = "hit", lookup.match
        self.decision.similarity = lookup.similarity
        self.decision.confidence = lookup.confidence
        stored = lookup.entry.response
        content_type = "text/event-stream" if chat.stream else "application/json"
        if len(answer_text(stored)) > INLINE_BYTES // 4:  # rendering costs ms per 100 KB: not on the loop
            body = await asyncio.to_thread(self._render, stored, chat)
        else:
            body = self._render(stored, chat)
        saved = self._saved_tokens(stored) | self._entry_headers(lookup, chat.n)  # before _report()
        self._report()
        return m.immediate(
            200,
            body,
            {
                "content-type": content_type,
                HEADER: "hit",
                f"{HEADER}-similarity": f"{lookup.similarity:.4f}",
                f"{HEADER}-match": lookup.match or "semantic",
                **(
                    {f"{HEADER}-confidence": f"{lookup.confidence:.4f}"}
                    if lookup.confidence is not None
                    else {}
                ),
                **saved,
                "age": str(int(self.decision.entry_age_s or 0)),  # RFC 9111 §5.1
            },
        )

    def _render(self, stored: dict[str, Any], chat: ChatRequest) -> bytes:
        """(maybe a worker thread) The stored answer as the request asked for it."""
        return self.render_stream(stored, chat.include_usage) if chat.stream else self.render_json(stored)

    def _saved_tokens(self, stored: dict[str, Any]) -> dict[str, str]:
        """Note what a hit saved (the stored usage) on the decision; its header, if the entry has usage."""
        saved = saved_tokens(stored)
        if saved is None:
            return {}
        self.decision.saved_prompt_tokens = saved.prompt
        self.decision.saved_completion_tokens = saved.completion
        return {f"{HEADER}-saved-tokens": str(saved.total)}

    # --- response ------------------------------------------------------------------------

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> m.ProcessingResponse:
        """Mark the response; keep streaming its body to us only if it may be stored."""
        try:
            self._status = int(headers.get(":status", "0"))
        except ValueError:
            self._status = 0
        self._content_type = headers.get("content-type", "").lower()
        self._content_encoding = headers.get("content-encoding", "").strip().lower()
        mark = {HEADER: self.decision.outcome}
        reason = reason_header(self.decision) if self.settings.reason_header else None
        if reason:
            mark[f"{HEADER}-reason"] = reason
        marks = None if m.near_header_limits(self._header_size, mark) else m.mutation(mark)
        if self._storing and not 200 <= self._status < 300:
            self._skip_store("non_2xx")
        elif self._storing and end_of_stream:
            self._skip_store("empty_body")
        elif self._storing and self._content_encoding not in ("", "identity", "gzip"):
            self._skip_store("encoded_response")
        elif self._storing and self.settings.upstream_cache_control:
            lifetime = upstream_lifetime(headers)
            if lifetime == 0:  # no-store, private, max-age=0, or already as old as it may be
                self._skip_store("upstream_no_store")
            elif lifetime is not None:
                self._fresh.limit_ttl(lifetime, self.settings.ttl_seconds)
        # An explored candidate's request learns from its answer even when nothing is stored.
        self._learning = self._explored is not None and 200 <= self._status < 300 and not end_of_stream
        if not self._storing:
            self._report()
            if not self._learning:
                return m.response_headers(marks, m.NO_RESPONSE_BODY)
        return m.response_headers(marks)

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> m.ProcessingResponse:
        """Pass each chunk on at once; keep a copy to store when the response completes."""
        if self._storing or self._learning:
            self._size += len(chunk)
            if self._size > self.settings.max_response_bytes:
                self._skip_store("too_large")
                self._learning = False
                self._chunks.clear()
            else:
                self._chunks.append(chunk)
        if end_of_stream and not self._captured:
            self._captured = True
            body, self._chunks = b"".join(self._chunks), []
            if self._storing:
                self.shared.spawn(self._store(body))
            elif self._learning:
                self.shared.spawn(self._learn(body))
            else:
                self._report()
        return m.response_body()

    async def _store(self, body: bytes) -> None:
        """Parse and store the captured answer; whatever happens, report (and release) once."""
        try:
            with trace.use_span(self._span, end_on_exit=False):
                await self._parse_and_store(body)
        except Exception:  # a bug here must not keep identical misses waiting
            log.exception("storing a response failed; it is not stored")
            self._skip_store("internal_error")
        finally:
            self._report()

    async def _parse_and_store(self, body: bytes) -> None:
        query, lookup = self._query, self._lookup
        assert query is not None
        try:
            completion = self._learned(await self._parse_response(body))
        except NotStorable as exc:
            self._skip_store(exc.reason)
        except Exception:  # an answer of a shape we do not know: never an exception
            log.debug("unparseable response", exc_info=True)
            self._skip_store("unparseable")
        else:
            started = time.perf_counter()
            try:
                vector = lookup.vector if lookup is not None else None
                budget = self.settings.max_added_latency_ms / 1000 or None
                self._check_volatile(await dated_answer(answer_text(completion)))
                if not self._storing:
                    return
                ttl = self.settings.ttl_seconds if self._fresh.ttl is None else self._fresh.ttl
                await self.shared.cache.store(query, completion, vector, max_wait=budget, ttl_seconds=ttl)
                self.decision.store = "stored"
            except OutcomeError as exc:
                self._skip_store(exc.reason)
            except Exception:
                log.warning("cache store failed", exc_info=True)
                self._skip_store("backend_error")
            self.decision.timings["store_ms"] = (time.perf_counter() - started) * 1000

    async def _parse_response(self, body: bytes) -> dict[str, Any]:
        """The completion in a captured body; inflated (bounded) and parsed off the loop if big."""
        expected = self._request.n if self._request is not None else 1
        stream = "text/event-stream" in self._content_type
        gzipped = self._content_encoding == "gzip"
        if not gzipped and len(body) <= INLINE_BYTES:
            return self.parse_sse(body, expected) if stream else self.parse_json(body, expected)

        def decode_and_parse() -> dict[str, Any]:
            raw = body
            if gzipped:
                try:
                    inflated = gunzip_bounded(body, self.settings.max_response_bytes)
                except (EOFError, zlib.error) as exc:
                    raise NotStorable("unparseable") from exc
                if inflated is None:
                    raise NotStorable("too_large")
                raw = inflated
            return self.parse_sse(raw, expected) if stream else self.parse_json(raw, expected)

        return await asyncio.to_thread(decode_and_parse)

    def on_stream_closed(self) -> None:
        """The stream ended; a response still being captured was aborted."""
        if self._storing and not self._captured:
            self._skip_store("stream_aborted")
            self._chunks.clear()
        if not self._storing:
            self._report()

    # --- helpers -------------------------------------------------------------------------

    def _bypass(self, reason: str) -> m.ProcessingResponse:
        self._mark_bypass(reason)
        return m.request_headers(mode=m.HEADERS_ONLY)

    def _mark_bypass(self, reason: str) -> None:
        super()._mark_bypass(reason)
        self._storing = False
        self._release()

    def _skip_store(self, reason: str) -> None:
        self._storing = False
        if not self.decision.store:
            self.decision.store = reason
        self._release()  # identical misses waiting for this answer go upstream now
