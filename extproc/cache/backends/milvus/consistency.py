"""Reading what is really there: counts taken before deleting, snapshots, visible deletes, one row per id.

Milvus' own delete counts cannot be trusted: Milvus Lite always answers 0, and a 2.3 server
answers, for a delete by primary key, the number of keys it was given (deleting an id that does
not exist "deletes" 1). So every delete counts the rows it is about to delete with a Strong
query first and reports that. (A concurrent delete of the same rows can make two callers count
them both; a store landing between the count and the delete is deleted uncounted.)

Deletes return no timestamp on Milvus 2.3, so pymilvus' Session consistency does not wait for
them: a lookup right after a delete could still find the row. After deleting, this process asks
the server for a timestamp and makes it the collection's "last write", so its next Session reads
wait until the delete is applied (other replicas see it within Milvus' staleness bound).

Lookups at ``Session`` wait for this process's deletes but not for its stores
(:func:`lookup_read`; :class:`RecentStores` serves those meanwhile): pymilvus' Session waits for
every write of the process, and every miss stores, so in steady traffic nearly every lookup
waited for Milvus' time tick (~0.2 s, past the processor's whole latency budget).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from extproc.cache.schema import CacheEntry, Candidate

log = logging.getLogger(__name__)

STRONG: dict[str, Any] = {"consistency_level": "Strong"}
"""Read everything written before the call."""
QUERY_LIMIT = 16_384
"""Milvus' largest query limit (limit + offset)."""
ID_BATCH = 1_000
"""Ids per ``id in [...]`` query."""
RECENT_STORE_SECONDS = 1.0
"""How long this process looks up its own stores beside Milvus (a time tick is 0.2 s; past this
the row is in place, or Milvus lags and a miss is the better answer)."""
RECENT_STORES_MAX = 4_096
"""At most this many recent stores are kept (a burst past it: the oldest go first)."""
_deleted_at: dict[str, int] = {}
"""collection -> the timestamp of this process's last delete in it (see :func:`saw_delete`)."""


def snapshot(client: Any, lite: bool) -> dict[str, Any]:
    """Read arguments of one point in time: every read with them sees the same data.

    Strong reads each wait for the server's time tick (~0.2 s on 2.3); reads at one allocated
    timestamp wait once, so a sweep's few dozen counts take about a second, and agree with each
    other although another replica deletes meanwhile. Milvus Lite (one process) reads Strong.
    """
    if lite:
        return dict(STRONG)
    try:
        ts = client._get_connection().alloc_timestamp(timeout=10)
    except Exception as exc:  # a server without AllocTimestamp: each read Strong instead
        log.debug("Milvus AllocTimestamp failed (%s): reading Strong", exc)
        return dict(STRONG)
    return {"consistency_level": "Customized", "guarantee_timestamp": int(ts)}


def saw_delete(client: Any, collection: str, lite: bool) -> None:
    """Make this process' next Session reads of ``collection`` wait for the delete just made."""
    if lite:
        return  # Milvus Lite applies a delete before it returns
    try:
        ts = client._get_connection().alloc_timestamp(timeout=10)
        from pymilvus.client import ts_utils

        ts_utils.update_collection_ts(collection, int(ts))
        _deleted_at[collection] = max(_deleted_at.get(collection, 0), int(ts))
    except Exception as exc:  # only freshness is lost: the delete itself succeeded
        log.debug("Milvus AllocTimestamp after a delete failed: %s", exc)


def lookup_read(collection: str, level: str) -> dict[str, Any]:
    """Consistency arguments of a lookup at ``level``. ``Session``: wait for this process's deletes
    (an entry found wrong and deleted is never served again by it), not for its stores, which
    :class:`RecentStores` serves meanwhile; other levels are Milvus' own."""
    if level != "Session":
        return {"consistency_level": level}
    # 1 is Milvus' "eventually" timestamp: read what is applied, wait for nothing.
    return {"consistency_level": "Customized", "guarantee_timestamp": _deleted_at.get(collection, 1)}


def newest(found: CacheEntry | None, recent: CacheEntry | None) -> CacheEntry | None:
    """Of the entry Milvus shows and the one this process stored under the same key a moment
    ago, the later (another replica may have stored the key again since)."""
    if found is None or recent is None:
        return found or recent
    return found if found.created_at > recent.created_at else recent


class RecentStores:
    """This process's stores of the last RECENT_STORE_SECONDS, looked up beside Milvus.

    A lookup does not wait for them to be applied (:func:`lookup_read`), so for that moment they
    are found here: an exact repeat or a paraphrase right after a store still hits. Deletes and
    imports by this process drop them (by id, or all of them for a delete by filter), before and
    after their call (a store finishing meanwhile must not outlive the delete); a sweep's need not
    (it deletes expired entries, which are never found here, and the oldest ones). A search is one
    matrix product over the partition's recent vectors, kept stacked until the partition changes.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        """False at ``Strong``: every read shows the process's stores already."""
        self._order: OrderedDict[str, tuple[float, str]] = OrderedDict()
        """id -> (when stored, partition), oldest first."""
        self._partitions: dict[str, dict[str, CacheEntry]] = {}
        self._stacked: dict[str, tuple[list[CacheEntry], np.ndarray]] = {}

    def add(self, entry: CacheEntry) -> None:
        """``entry`` was just stored."""
        if not self.enabled:
            return
        self.drop([entry.id])
        self._order[entry.id] = (time.monotonic(), entry.partition)
        self._partitions.setdefault(entry.partition, {})[entry.id] = entry
        self._stacked.pop(entry.partition, None)
        while len(self._order) > RECENT_STORES_MAX:
            self._remove(next(iter(self._order)))

    def drop(self, ids: Iterable[str]) -> None:
        """Those entries were deleted or written again by other means (an import)."""
        for key in ids:
            if key in self._order:
                self._remove(key)

    def clear(self) -> None:
        """Entries were deleted by filter (which of them, only Milvus knows)."""
        self._order.clear()
        self._partitions.clear()
        self._stacked.clear()

    @contextlib.contextmanager
    def forgetting(self, ids: Iterable[str] | None = None) -> Iterator[None]:
        """Around a delete or an import of ``ids`` (None: whatever a filter selects): they are
        dropped before it and again after it, since a store may finish while it runs."""
        keys = None if ids is None else list(ids)
        forget = self.clear if keys is None else lambda: self.drop(keys)
        forget()
        try:
            yield
        finally:
            forget()

    def _remove(self, key: str) -> None:
        _, partition = self._order.pop(key)
        entries = self._partitions.get(partition, {})
        entries.pop(key, None)
        if not entries:
            self._partitions.pop(partition, None)
        self._stacked.pop(partition, None)

    def _prune(self) -> None:
        old = time.monotonic() - RECENT_STORE_SECONDS
        while self._order and next(iter(self._order.values()))[0] < old:
            self._remove(next(iter(self._order)))

    def get(self, key: str, now: float) -> CacheEntry | None:
        """The live entry stored under ``key`` a moment ago, if any."""
        self._prune()
        if key not in self._order:
            return None
        entry = self._partitions[self._order[key][1]][key]
        return entry if _alive(entry, now) else None

    def search(self, partition: str, vector: np.ndarray, now: float, limit: int) -> list[Candidate]:
        """The ``limit`` live recent entries of ``partition`` most similar to ``vector``."""
        self._prune()
        if partition not in self._partitions:
            return []
        stacked = self._stacked.get(partition)
        if stacked is None:
            entries = [e for e in self._partitions[partition].values() if e.vector is not None]
            entries = [e for e in entries if len(e.vector) == len(vector)]
            matrix = np.stack([e.vector for e in entries]) if entries else np.zeros((0, len(vector)))
            stacked = self._stacked[partition] = (entries, matrix.astype(np.float32, copy=False))
        entries, matrix = stacked
        similarity = matrix @ np.asarray(vector, dtype=np.float32)
        order = np.arange(len(entries))
        if len(order) > 4 * limit:  # the best few, past any that expired meanwhile
            order = np.argpartition(-similarity, 4 * limit)[: 4 * limit]
        found = []
        for i in order[np.argsort(-similarity[order])]:
            if _alive(entries[i], now):
                found.append(Candidate(entries[i], float(similarity[i]), entries[i].vector))
                if len(found) == limit:
                    break
        return found


def _alive(entry: CacheEntry, now: float) -> bool:
    return entry.expires_at <= 0 or entry.expires_at > now


def count_rows(client: Any, collection: str, flt: str, read: dict[str, Any], **call: Any) -> int:
    """Rows matching ``flt`` (every duplicate row of an id counts)."""
    rows = client.query(collection, filter=flt, output_fields=["count(*)"], **read, **call)
    return int(rows[0]["count(*)"]) if rows else 0


def delete_counted(client: Any, collection: str, flt: str, **call: Any) -> int:
    """Delete the rows matching ``flt``; how many there were (a Strong count just before)."""
    n = count_rows(client, collection, flt, STRONG, **call)
    if n:
        client.delete(collection, filter=flt, **call)
    return n


def id_filters(quoted: Sequence[str]) -> list[str]:
    """``id in [...]`` filters of at most :data:`ID_BATCH` quoted ids each."""
    return [f"id in [{', '.join(quoted[i : i + ID_BATCH])}]" for i in range(0, len(quoted), ID_BATCH)]


def present_ids(client: Any, collection: str, filters: Iterable[str], **call: Any) -> list[str]:
    """The distinct ids the ``filters`` find now (a Strong read), sorted."""
    found: set[str] = set()
    for flt in filters:
        rows = client.query(collection, filter=flt, output_fields=["id"], limit=QUERY_LIMIT, **STRONG, **call)
        found.update(str(r["id"]) for r in rows)
    return sorted(found)


def distinct(candidates: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per id (the most similar), most similar first.

    Two replicas storing one key at once can leave two rows under it; a search then returns
    both, and without this the duplicate would take the place of another candidate.
    """
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.entry.id not in best or c.similarity > best[c.entry.id].similarity:
            best[c.entry.id] = c
    return sorted(best.values(), key=lambda c: c.similarity, reverse=True)
