"""What a caching processor does for verification: entry ids on hits, shadows, the δ rule, feedback.

A mixin of the caching processors (chat, completions, responses): the state it reads
(``_headers``, ``_body``, ``_query``, ``_span``…) is theirs. The work itself is the
:class:`~extproc.dataplane.verification.Verification` component's; this only decides and hands over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span

from extproc.cache import CacheQuery, LookupResult
from extproc.cache.schema import CacheEntry
from extproc.dataplane.freshness import Freshness
from extproc.dataplane.verification import ENTRY_HEADER, FEEDBACK_HEADER, Shadow, Verification

if TYPE_CHECKING:
    from extproc.config.settings import CacheSettings
    from extproc.dataplane.decision import Decision
    from extproc.dataplane.shared import Shared

log = logging.getLogger(__name__)


class VerifiedHits:
    """Entry ids, shadow verification, the false-hit bound and client feedback of one request."""

    settings: CacheSettings
    shared: Shared
    decision: Decision
    _headers: dict[str, str]
    _body: bytes = b""
    """The request body as received (a shadow request repeats it)."""
    _request_encoding: str
    _query: CacheQuery | None
    _span: Span
    _fresh: Freshness
    _no_store: bool
    _explored: tuple[CacheEntry, float, float] | None = None
    """The candidate the false-hit bound did not serve: (entry, confidence, similarity)."""
    parse_json: Callable[[bytes, int], dict[str, Any]]
    _parse_response: Callable[[bytes], Awaitable[dict[str, Any]]]

    def _min_confidence(self) -> float | None:
        """The ``min_confidence`` of the lookup: 0 under the false-hit bound (the bound decides)."""
        v = self.shared.verification
        if v is not None and self._delta() > 0:
            return 0.0
        return self.settings.min_confidence if self.decision.policy else None

    def _delta(self) -> float:
        """δ of this request: its policy's ``max_false_hit_rate``, else the verification section's."""
        return self.settings.verification.max_false_hit_rate

    def _bounded(self, lookup: LookupResult) -> LookupResult:
        """The δ rule on a semantic hit: serve it, or make the request a miss that learns (explore)."""
        v = self.shared.verification
        if v is None or lookup.entry is None or lookup.match != "semantic":
            return lookup
        score = lookup.confidence if lookup.confidence is not None else lookup.similarity
        if v.allows(lookup.entry.model, lookup.entry, score, lookup.similarity, self._delta()):
            return lookup
        self._explored = (lookup.entry, score, lookup.similarity)
        return lookup.passed_over("bound")

    def _entry_headers(self, lookup: LookupResult, n: int) -> dict[str, str]:
        """``x-semantic-cache-entry`` of a hit; a sampled semantic hit is also shadowed."""
        v, entry, query = self.shared.verification, lookup.entry, self._query
        if v is None or entry is None or query is None:
            return {}
        if lookup.match == "semantic" and not self._no_store:
            ttl = self.settings.ttl_seconds if self._fresh.ttl is None else self._fresh.ttl
            score = lookup.confidence if lookup.confidence is not None else lookup.similarity
            job = Shadow(
                self._headers.get(":path", ""),
                self._headers,
                self._body,
                self._request_encoding,
                self.parse_json,
                n,
                query,
                entry,
                score,
                lookup.similarity,
                ttl,
                max_bytes=self.settings.max_response_bytes,
                context=trace.set_span_in_context(self._span),
            )
            self.decision.verifying = v.shadow(job)
        return {ENTRY_HEADER: v.ids.issue(entry.partition, entry.exact_key, entry.created_at)}

    def _learned(self, completion: dict[str, Any]) -> dict[str, Any]:
        """``completion``; an explored candidate's request has its upstream answer: compare them
        (in the background)."""
        v = self.shared.verification
        if v is not None and self._explored is not None:
            entry, score, similarity = self._explored
            v.learn_from_miss(entry.model, entry, (score, similarity), completion)
        return completion

    async def _learn(self, body: bytes) -> None:
        """An explored request's answer that is not stored (``no-store``): compared all the same."""
        try:
            self._learned(await self._parse_response(body))
        except Exception as exc:  # not an answer to compare (an error body, a cut stream…)
            log.debug("explored answer not compared: %s", type(exc).__name__)

    def _client_feedback(self, query: CacheQuery) -> None:
        """A ``no-cache`` retry saying ``x-semantic-cache-feedback: wrong``: report the entry it names."""
        v = self.shared.verification
        entry_id = self._headers.get(ENTRY_HEADER, "").strip()
        if v is None or not entry_id or self._headers.get(FEEDBACK_HEADER, "").strip().lower() != "wrong":
            return
        self.shared.spawn(_report_wrong(v, entry_id, query.partition))


async def _report_wrong(v: Verification, entry_id: str, partition: str) -> None:
    """Feedback from the data path: only an entry of the retry's own partition can be named."""
    try:
        if not await v.feedback(entry_id, "wrong", partition):
            log.debug("feedback on the data path named no entry of its partition")
    except Exception as exc:  # the retry goes on regardless
        log.warning("feedback failed: %s: %s", type(exc).__name__, exc)
