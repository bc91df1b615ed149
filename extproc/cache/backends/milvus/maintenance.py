"""The background sweep of the Milvus backend: expired entries, then the oldest beyond ``max_entries``.

A mixin of :class:`~extproc.cache.backends.milvus.backend.MilvusBackend`. Every replica sweeps
the shared collection, often at the same moment, so the trim must converge, not add up: it keeps
the newest ``max_entries`` rows *as they are now*, found by a binary search over ``created_at``
for the smallest cutoff ``c`` with at most ``max_entries`` rows at ``c`` or later. Rows older
than ``c - 1`` go wholesale; of the rows created exactly at ``c - 1`` (many, when one import or
one batch shares a millisecond) only as many go as needed, the smallest ids first, so a second
replica sweeping meanwhile picks the same ones or finds nothing left to delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from extproc.cache.backends.milvus.bulk import quote
from extproc.cache.backends.milvus.consistency import (
    QUERY_LIMIT,
    STRONG,
    count_rows,
    delete_counted,
    id_filters,
    saw_delete,
    snapshot,
)
from extproc.errors import BackendUnavailable

if TYPE_CHECKING:
    from extproc.config.milvus import MilvusSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

_BELOW = -(2**63)
"""Virtual bounds of the search: every row is at or after ``_BELOW``, none at or after ``_ABOVE``."""
_ABOVE = 2**63


class MilvusMaintenance:
    """TTL sweeps and ``max_entries`` trimming over the backend's collection."""

    if TYPE_CHECKING:
        settings: MilvusSettings
        max_entries: int
        evictions: int
        expired: int
        known_entries: int
        state: str
        _closed: asyncio.Event
        _sweeping: asyncio.Lock
        _slow: dict[str, Any]

        async def _call(self, fn: Callable[[Any], T], timeout: float) -> T: ...

    async def _sweep_loop(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):  # an interruptible sleep
                await asyncio.wait_for(self._closed.wait(), self.settings.sweep_interval_seconds)
            if self._closed.is_set():
                return
            if self.state != "ready":
                continue
            try:
                await self.sweep(time.time())
            except BackendUnavailable as exc:
                log.debug("Milvus sweep skipped: %s", exc)

    async def sweep(self, now: float) -> None:
        """Delete expired entries, then the oldest ones beyond ``max_entries`` (one sweep at a
        time in a process: the background one and an import's counted the same rows twice)."""
        s = self.settings
        async with self._sweeping:
            self.expired += await self._call(lambda c: self._expire(c, now), s.timeout * 2)
            total, evicted = await self._call(self._trim, s.timeout * 4)
        self.known_entries = max(0, total - evicted)
        self.evictions += evicted
        if evicted:
            log.info("Milvus cache over max_entries=%d: evicted %d oldest entries", self.max_entries, evicted)

    def _expire(self, client: Any, now: float) -> int:
        """Delete the expired rows; how many there were (counted first: see :mod:`.consistency`)."""
        s = self.settings
        n = delete_counted(client, s.collection, f"expires_at <= {int(now * 1000)}", **self._slow)
        if n:
            saw_delete(client, s.collection, s.is_lite)
        return n

    def _trim(self, client: Any) -> tuple[int, int]:
        """(rows before, rows evicted): the oldest rows beyond ``max_entries`` deleted."""
        s, keep = self.settings, self.max_entries
        read = snapshot(client, s.is_lite)
        newer: dict[int, int] = {}

        def rows_from(cutoff: int) -> int:
            if cutoff not in newer:
                flt = f"created_at >= {cutoff}"
                newer[cutoff] = count_rows(client, s.collection, flt, read, **self._slow)
            return newer[cutoff]

        total = count_rows(client, s.collection, "", read, **self._slow)
        if total <= keep:
            return total, 0
        # rows_from() only grows as the cutoff falls, and another replica deleting old rows
        # meanwhile does not change it above that replica's own cutoff: both find the same one.
        lo, hi = _BELOW, _ABOVE
        for probe in (int(time.time() * 1000) + 1, 0):  # usually brackets it: ~41 halvings, not 64
            if lo < probe < hi:
                lo, hi = (lo, probe) if rows_from(probe) <= keep else (probe, hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if rows_from(mid) <= keep else (mid, hi)
        if lo == _BELOW or hi == _ABOVE:
            return total, 0  # nothing to delete by now (or times no INT64 holds)
        evicted = self._delete_older(client, lo)
        evicted += self._delete_ties(client, lo, keep - rows_from(hi), read)
        if evicted:
            saw_delete(client, s.collection, s.is_lite)
        return total, evicted

    def _delete_older(self, client: Any, stamp: int) -> int:
        """Delete every row created before ``stamp``; how many there were just before."""
        return delete_counted(client, self.settings.collection, f"created_at < {stamp}", **self._slow)

    def _delete_ties(self, client: Any, stamp: int, room: int, read: dict[str, Any]) -> int:
        """Of the rows created at ``stamp``, delete all but ``room``: the smallest ids first."""
        s = self.settings
        rows = client.query(
            s.collection,
            filter=f"created_at == {stamp}",
            output_fields=["id"],
            limit=QUERY_LIMIT,
            **read,
            **self._slow,
        )
        per_id = Counter(str(r["id"]) for r in rows)  # an id stored twice at once has two rows
        excess, victims = len(rows) - max(room, 0), []
        for key in sorted(per_id):  # the same order in every replica: they pick the same ids
            if excess <= 0:
                break
            victims.append(key)
            excess -= per_id[key]
        if not victims:
            return 0
        # Counted again now: another replica may have deleted them since the snapshot.
        filters = [f"{f} and created_at == {stamp}" for f in id_filters([quote(v) for v in victims])]
        n = sum(count_rows(client, s.collection, f, STRONG, **self._slow) for f in filters)
        if n:
            # By id (a filtered delete on 2.3 looks the rows up Bounded and can miss some): a store
            # of one of these keys in this very round trip would go with it.
            client.delete(s.collection, ids=victims, **self._slow)
        return n
