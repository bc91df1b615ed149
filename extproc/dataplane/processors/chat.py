"""The chat-completions processor: request headers → request body → response headers → body.

Looks the prompt up on the request body and answers a hit at once; on a miss it lets the request
go upstream, captures the response and stores it in the background.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

from extproc.cache import CacheQuery, LookupResult
from extproc.dataplane.decision import lookup_failure_reason
from extproc.dataplane.identity import cache_control, cache_query
from extproc.dataplane.processors.base import Processor, Send
from extproc.dataplane.shared import HEADER, MAX_SCOPE_CHARS, Shared
from extproc.errors import NotCacheable, NotStorable, OutcomeError
from extproc.protocol import messages as m
from extproc.protocol.completion import saved_tokens
from extproc.protocol.openai import (
    ChatRequest,
    parse_chat_request,
    parse_json_completion,
    parse_sse_completion,
    render_completion,
    render_sse,
    scope_from_authorization,
)

log = logging.getLogger(__name__)


class ChatCompletionsProcessor(Processor):
    """Caches ``POST /v1/chat/completions``: one method per phase."""

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

    # --- request -------------------------------------------------------------------------

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> m.ProcessingResponse:
        """Decide whether this request is ours; strip accept-encoding if it may be stored."""
        self._start_span(headers)
        if headers.get(":method") != "POST":
            return self._pass_through("not_chat")
        if not self.settings.enabled:
            return self._bypass("disabled")
        if end_of_stream:
            return self._bypass("no_body")
        self._no_cache, self._no_store = cache_control(headers.get("cache-control", ""))
        if self._no_cache and self._no_store:
            return self._bypass("no_cache_no_store")
        scope = self._scope_of(headers)
        if scope is None:
            return self._bypass("no_scope")
        self._scope = scope
        revision_header = self.settings.revision_header.lower()
        revision = headers.get(revision_header, "").strip() if revision_header else ""
        self._revision = revision or self.settings.revision
        self._request_encoding = headers.get("content-encoding", "").strip().lower()
        remove = () if self._no_store else ("accept-encoding",)
        return m.request_headers(m.mutation(remove=remove))

    def _scope_of(self, headers: dict[str, str]) -> str | None:
        mode = self.settings.scope_mode
        if mode == "header":
            value = headers.get(self.settings.scope_header.lower(), "").strip()
            return f"header:{value}" if 0 < len(value) <= MAX_SCOPE_CHARS else None
        if mode == "authorization":
            return scope_from_authorization(headers.get("authorization"))
        return "global"

    async def on_request_body(self, body: bytes, end_of_stream: bool) -> m.ProcessingResponse:
        """Look the prompt up: answer a hit at once, otherwise let the request go upstream."""
        if not end_of_stream:  # BUFFERED_PARTIAL: bigger than Envoy's buffer
            self._mark_bypass("request_too_large")
            return m.request_body()
        try:
            body = self._decode_request(body)
            chat = parse_chat_request(body, self.settings.fingerprint_ignore_fields)
        except NotCacheable as exc:
            self._mark_bypass(exc.reason)
            return m.request_body()
        self._request = chat
        self.decision.model = chat.model
        query = cache_query(chat, self._scope, self._revision)
        self._query = query
        self.decision.partition = query.partition[:16]
        self.decision.outcome = "miss"
        self._storing = not self._no_store
        if self._no_cache:
            self.decision.reason = "no_cache"
            return m.request_body()
        started = time.perf_counter()
        try:
            timeout = self.settings.lookup_timeout_ms / 1000
            with trace.use_span(self._span, end_on_exit=False):
                self._lookup = await asyncio.wait_for(self.shared.cache.check(query), timeout)
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
            self._storing = False
            self._mark_bypass(reason)
            return m.request_body()
        finally:
            self.decision.timings["lookup_ms"] = (time.perf_counter() - started) * 1000
        lookup = self._lookup
        d = self.decision
        d.candidates, d.best_similarity, d.rejected_by = (
            lookup.candidates,
            lookup.best_similarity,
            lookup.rejections,
        )
        d.timings.update(lookup.timings)
        if lookup.entry is None and self._storing:
            lookup = await self._coalesce(query) or lookup
        if lookup.entry is None:
            return m.request_body()
        d.entry_age_s = max(0.0, time.time() - lookup.entry.created_at)
        return self._serve_hit(chat, lookup)

    async def _coalesce(self, query: CacheQuery) -> LookupResult | None:
        """Single-flight: lead this miss, or wait (bounded) for the identical one in flight."""
        inflight = self.shared.inflight
        if inflight.lead(query.exact_key):
            self._leading = True
            return None
        wait = self.settings.coalesce_wait_ms / 1000
        if self._send is not None:  # keep Envoy from giving up on us while we wait
            await self._send(m.extend_timeout(wait + 1.0))
        if not await inflight.wait(query.exact_key, wait):
            return None
        try:
            entry = await self.shared.cache.backend.get_exact(query.exact_key, time.time())
        except Exception:
            return None
        if entry is None:
            return None
        self.decision.reason = "coalesced"
        return LookupResult(entry=entry, similarity=1.0, match="exact", best_similarity=1.0)

    def _decode_request(self, body: bytes) -> bytes:
        encoding = self._request_encoding
        if encoding in ("", "identity"):
            return body
        if encoding in ("gzip", "x-gzip"):
            try:
                return gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise NotCacheable("bad_encoding") from exc
        raise NotCacheable("unsupported_encoding")

    def _serve_hit(self, chat: ChatRequest, lookup: LookupResult) -> m.ProcessingResponse:
        assert lookup.entry is not None
        self.decision.outcome, self.decision.match = "hit", lookup.match
        self.decision.similarity = lookup.similarity
        stored = lookup.entry.response
        if chat.stream:
            body, content_type = render_sse(stored, chat.include_usage), "text/event-stream"
        else:
            body, content_type = render_completion(stored), "application/json"
        saved = self._saved_tokens(stored)  # before _report(): the metric reads the decision
        self._report()
        return m.immediate(
            200,
            body,
            {
                "content-type": content_type,
                HEADER: "hit",
                f"{HEADER}-similarity": f"{lookup.similarity:.4f}",
                f"{HEADER}-match": lookup.match or "semantic",
                **saved,
            },
        )

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
        marks = m.mutation({HEADER: self.decision.outcome})
        if self._storing and not 200 <= self._status < 300:
            self._skip_store("non_2xx")
        elif self._storing and end_of_stream:
            self._skip_store("empty_body")
        elif self._storing and self._content_encoding not in ("", "identity", "gzip"):
            self._skip_store("encoded_response")
        if not self._storing:
            self._report()
            return m.response_headers(marks, m.NO_RESPONSE_BODY)
        return m.response_headers(marks)

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> m.ProcessingResponse:
        """Pass each chunk on at once; keep a copy to store when the response completes."""
        if self._storing:
            self._size += len(chunk)
            if self._size > self.settings.max_response_bytes:
                self._skip_store("too_large")
                self._chunks.clear()
            else:
                self._chunks.append(chunk)
        if end_of_stream and not self._captured:
            self._captured = True
            if self._storing:
                body, self._chunks = b"".join(self._chunks), []
                self.shared.spawn(self._store(body))
            else:
                self._report()
        return m.response_body()

    async def _store(self, body: bytes) -> None:
        with trace.use_span(self._span, end_on_exit=False):
            await self._parse_and_store(body)
        self._report()

    async def _parse_and_store(self, body: bytes) -> None:
        query, lookup = self._query, self._lookup
        assert query is not None
        try:
            if self._content_encoding == "gzip":
                body = gzip.decompress(body)
            expected = self._request.n if self._request is not None else 1
            if "text/event-stream" in self._content_type:
                completion = parse_sse_completion(body, expected)
            else:
                completion = parse_json_completion(body, expected)
        except NotStorable as exc:
            self._skip_store(exc.reason)
        except (OSError, EOFError, zlib.error):
            self._skip_store("unparseable")
        else:
            started = time.perf_counter()
            try:
                vector = lookup.vector if lookup is not None else None
                await self.shared.cache.store(query, completion, vector)
                self.decision.store = "stored"
            except OutcomeError as exc:
                self._skip_store(exc.reason)
            except Exception:
                log.warning("cache store failed", exc_info=True)
                self._skip_store("backend_error")
            self.decision.timings["store_ms"] = (time.perf_counter() - started) * 1000

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

    def _skip_store(self, reason: str) -> None:
        self._storing = False
        if not self.decision.store:
            self.decision.store = reason

    def _release(self) -> None:
        if self._leading and self._query is not None:
            self.shared.inflight.done(self._query.exact_key)
