"""Single-flight: identical concurrent misses send one request upstream, the rest wait for it.

A mixin of the caching processors (chat, completions, responses): the state it reads and
writes (``_leading``, ``_query``, ``_fresh``, ``_send``…) is theirs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from extproc.cache import CacheQuery, LookupResult
from extproc.cache.semantic import too_old
from extproc.config.settings import MAX_COALESCE_WAIT_MS
from extproc.dataplane.freshness import Freshness
from extproc.protocol import messages as m

if TYPE_CHECKING:
    from extproc.config.settings import CacheSettings
    from extproc.dataplane.decision import Decision
    from extproc.dataplane.processors.base import Send
    from extproc.dataplane.shared import Shared


class SingleFlight:
    """Lead a miss, or wait (bounded) for the identical one in flight and serve its answer."""

    settings: CacheSettings
    shared: Shared
    decision: Decision
    _leading: bool
    _query: CacheQuery | None
    _fresh: Freshness
    _send: Send | None

    async def _coalesce(self, query: CacheQuery, follow: bool = True) -> LookupResult | None:
        """None: this request leads (or gave up waiting, or does not ``follow``) and goes upstream;
        else the leader's stored answer as an exact hit."""
        inflight = self.shared.inflight
        if inflight.lead(query.exact_key):
            self._leading = True
            return None
        if not follow:
            return None
        # Envoy ignores a timeout override past its max_message_timeout (65 s as shipped) and
        # would give up on this stream after message_timeout (3 s): the wait stays below it.
        wait = min(self.settings.coalesce_wait_ms, MAX_COALESCE_WAIT_MS) / 1000
        if self._send is not None:  # keep Envoy from giving up on us while we wait
            await self._send(m.extend_timeout(wait + 1.0))
        if not await inflight.wait(query.exact_key, wait):
            return None
        now = time.time()
        try:
            entry = await self.shared.cache.backend.get_exact(query.exact_key, now)
        except Exception:
            return None
        # The leader may have stored nothing (an error, a cut stream): what is there is then the
        # entry this request's own lookup passed over (older than its max-age), not an answer.
        if entry is None or entry.prompt != query.prompt or too_old(entry, now, self._fresh.max_age):
            return None
        self.decision.reason = "coalesced"
        return LookupResult(entry=entry, similarity=1.0, match="exact", best_similarity=1.0)

    def _release(self) -> None:
        """Hand the single-flight lead back (once): waiters stop waiting for this answer."""
        if self._leading and self._query is not None:
            self._leading = False
            self.shared.inflight.done(self._query.exact_key)
