"""Bulk operations of the Milvus backend (export, import, invalidate, flush) for the admin API.

A mixin of :class:`~extproc.cache.backends.milvus.backend.MilvusBackend`: every call goes through
the backend's deadline and circuit breaker, and deletes act on the shared collection, so every
replica pointing at it stops serving the deleted entries (there is no per-process layer to clear).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from extproc.cache.backends.milvus.consistency import (
    STRONG,
    count_rows,
    delete_counted,
    distinct,
    id_filters,
    present_ids,
    saw_delete,
)
from extproc.cache.backends.milvus.rows import milliseconds, utf8
from extproc.cache.backends.milvus.schema import REQUIRED_FIELDS
from extproc.cache.schema import CacheEntry, Candidate, EntryFilter
from extproc.errors import DataRejected, EntryTooLarge

if TYPE_CHECKING:
    from extproc.cache.backends.milvus.consistency import RecentStores
    from extproc.cache.backends.milvus.locks import KeyLocks
    from extproc.config.milvus import MilvusSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
FIELDS = list(REQUIRED_FIELDS)
ALL_ROWS = 'id != ""'
ID_SCAN_BATCH = 4_096
"""Ids per page of an export's catch-up scan (ids only: small rows)."""
CATCH_UP_TRIES = 3
"""Reads by id of the keys an export's scan missed (each retry after CATCH_UP_PAUSE)."""
CATCH_UP_PAUSE = 0.2


def _digest(key: str) -> int:
    """A 64-bit digest of an id (collisions among a billion ids: about one in 40)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def quote(value: str, name: str = "value") -> str:
    """A Milvus expression string literal (double quotes, backslash escapes).

    Raises :class:`DataRejected` for a C0 control character (U+0000-U+001F): JSON writes it as
    ``\\u00XX``, an escape Milvus Lite's expression parser refuses, and no other is safe to use.
    """
    if any(ch < " " for ch in value):
        raise DataRejected(f"{name} holds a control character (U+0000-U+001F); Milvus cannot select by it")
    return json.dumps(value, ensure_ascii=False)


def expression(selector: EntryFilter, now: float | None = None) -> str:
    """The boolean expression selecting ``selector``'s entries (live ones only when ``now`` is given).

    Values Milvus cannot parse (text that is not valid Unicode or holds a control character, a
    time beyond INT64) raise :class:`DataRejected` here, before any call.
    """
    parts = []
    for name, value in (
        ("model", selector.model),
        ("scope", selector.scope),
        ("fingerprint", selector.fingerprint),
    ):
        if value is not None:
            utf8(name, value)
            parts.append(f"{name} == {quote(value, name)}")
    if selector.created_before is not None:
        parts.append(f"created_at < {milliseconds('created_before', selector.created_before)}")
    if now is not None:
        parts.append(f"expires_at > {int(now * 1000)}")
    return " and ".join(parts) or ALL_ROWS


class MilvusBulkOps:
    """Export / import / invalidate / flush over the backend's collection."""

    if TYPE_CHECKING:
        settings: MilvusSettings
        _recent: RecentStores
        dim: int
        _slow: dict[str, Any]
        _writing: KeyLocks

        async def _call(self, fn: Callable[[Any], T], timeout: float) -> T: ...

        def _entry(self, row: dict[str, Any], vector: np.ndarray | None = None) -> CacheEntry: ...

        def row(self, entry: CacheEntry) -> dict[str, Any]: ...

        def _similarity(self, distance: float) -> float: ...

    async def entries(
        self, selector: EntryFilter, now: float, batch_size: int = 256, vectors: bool = True
    ) -> AsyncIterator[list[CacheEntry]]:
        """Every live selected entry, in batches, read with Strong consistency.

        A store is a delete then an insert (docs/milvus.md#a-key-being-stored-again), so a key
        stored again while the scan passes it is briefly absent. After the scan, the ids still
        selected are listed (ids only) and the ones the scan did not return are read by id and
        yielded: a key live all along is in the export although it was refreshed meanwhile.
        """
        s = self.settings
        fields = [*FIELDS, s.vector_field] if vectors else FIELDS
        flt = expression(selector, now)
        seen = array("Q")  # 8-byte digests of the ids yielded: 8 MB per million entries

        def open_iterator(client: Any) -> Any:
            return client.query_iterator(
                s.collection,
                batch_size=batch_size,
                filter=flt,
                output_fields=fields,
                timeout=s.timeout,
                consistency_level="Strong",
            )

        iterator = await self._call(open_iterator, s.timeout)

        def next_batch(_: Any) -> list[CacheEntry]:
            return [self._entry_of(r, vectors) for r in iterator.next()]

        try:
            while batch := await self._call(next_batch, s.timeout):
                seen.extend(_digest(e.id) for e in batch)
                yield batch
        finally:
            iterator.close()
        missed = await self._missed_ids(flt, np.unique(np.frombuffer(seen, dtype=np.uint64)))
        for attempt in range(CATCH_UP_TRIES):
            if not missed:
                return
            if attempt:
                await asyncio.sleep(CATCH_UP_PAUSE)  # a store's delete-to-insert gap is milliseconds
            found = await self._read_ids(flt, missed, fields, vectors)
            if found:
                yield found
            got = {e.id for e in found}
            missed = [key for key in missed if key not in got]
        log.warning("export: %d entries were being stored again throughout; not exported", len(missed))

    def _entry_of(self, row: dict[str, Any], vectors: bool) -> CacheEntry:
        vector = np.asarray(row[self.settings.vector_field], dtype=np.float32) if vectors else None
        return self._entry(row, vector)

    async def _missed_ids(self, flt: str, seen: np.ndarray) -> list[str]:
        """The ids ``flt`` selects now whose digest is not in ``seen`` (sorted digests)."""
        s = self.settings

        def open_iterator(client: Any) -> Any:
            return client.query_iterator(
                s.collection,
                batch_size=ID_SCAN_BATCH,
                filter=flt,
                output_fields=["id"],
                timeout=s.timeout,
                consistency_level="Strong",
            )

        iterator = await self._call(open_iterator, s.timeout)
        missed: list[str] = []

        def next_ids(_: Any) -> list[str]:
            return [str(r["id"]) for r in iterator.next()]

        try:
            while ids := await self._call(next_ids, s.timeout):
                digests = np.fromiter((_digest(key) for key in ids), dtype=np.uint64, count=len(ids))
                at = np.minimum(np.searchsorted(seen, digests), max(len(seen) - 1, 0))
                known = seen[at] == digests if len(seen) else np.zeros(len(ids), dtype=bool)
                missed.extend(key for key, k in zip(ids, known, strict=True) if not k)
        finally:
            iterator.close()
        return list(dict.fromkeys(missed))

    async def _read_ids(self, flt: str, ids: list[str], fields: list[str], vectors: bool) -> list[CacheEntry]:
        """The selected entries under ``ids`` (one per id), read by id."""
        s = self.settings
        filters = [f"({flt}) and {f}" for f in id_filters([quote(key, "id") for key in ids])]

        def read(client: Any) -> list[CacheEntry]:
            rows: dict[str, dict[str, Any]] = {}
            for f in filters:
                for r in client.query(s.collection, filter=f, output_fields=fields, **STRONG, **self._slow):
                    rows.setdefault(str(r["id"]), r)
            return [self._entry_of(r, vectors) for r in rows.values()]

        return await self._call(read, s.timeout * 2)

    async def count_matching(self, selector: EntryFilter, now: float) -> int:
        """Number of live selected entries."""
        s = self.settings
        flt = expression(selector, now)

        def count(client: Any) -> int:
            rows = client.query(
                s.collection, filter=flt, output_fields=["count(*)"], consistency_level="Strong", **self._slow
            )
            return int(rows[0]["count(*)"]) if rows else 0

        return await self._call(count, s.timeout)

    async def nearest(
        self, vector: np.ndarray, selector: EntryFilter, limit: int, now: float
    ) -> list[Candidate]:
        """Up to ``limit`` live selected entries of any partition, most similar first."""
        s = self.settings
        flt = expression(selector, now)
        params = s.search_request(limit)

        def run(client: Any) -> list[Candidate]:
            hits = client.search(
                s.collection,
                data=[np.asarray(vector, dtype=np.float32).tolist()],
                anns_field=s.vector_field,
                limit=limit,
                filter=flt,
                search_params=params,
                output_fields=FIELDS,
                consistency_level="Strong",
                **self._slow,
            )[0]
            return distinct(
                Candidate(self._entry(h["entity"] | {"id": h["id"]}), self._similarity(float(h["distance"])))
                for h in hits
            )

        return await self._call(run, s.timeout)

    async def delete_matching(self, selector: EntryFilter) -> int:
        """Delete every selected entry (expired ones included) from the shared collection; how
        many rows there were (counted first: Milvus' own count is wrong, see :mod:`.consistency`)."""
        s = self.settings
        flt = expression(selector)

        def delete(client: Any) -> int:
            n = delete_counted(client, s.collection, flt, **self._slow)
            if n:
                saw_delete(client, s.collection, s.is_lite)
            return n

        with self._recent.forgetting():
            return await self._call(delete, s.timeout * 4)

    async def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete entries by id (the exact key); how many of them were there."""
        if not ids:
            return 0
        s = self.settings
        keys = list(dict.fromkeys(ids))
        for key in keys:
            utf8("id", key)
        filters = id_filters([quote(key, "id") for key in keys])

        def delete(client: Any) -> int:
            present = present_ids(client, s.collection, filters, **self._slow)
            if present:
                client.delete(s.collection, ids=present, **self._slow)
                saw_delete(client, s.collection, s.is_lite)
            return len(present)

        with self._recent.forgetting(keys):
            return await self._call(delete, s.timeout * 2)

    async def delete_version(self, exact_key: str, created_at: float) -> int:
        """Delete the entry under ``exact_key`` only if it was created at ``created_at`` (ms): a
        newer entry stored under the key since stays. 1 if it was there, else 0."""
        s = self.settings
        utf8("id", exact_key)
        flt = f"id in [{quote(exact_key, 'id')}] and created_at == {milliseconds('created_at', created_at)}"

        def there(client: Any) -> bool:
            return bool(count_rows(client, s.collection, flt, STRONG, **self._slow))

        def delete(client: Any) -> int:
            if not there(client):
                return 0
            client.delete(s.collection, filter=flt, consistency_level="Strong", **self._slow)
            if there(client):
                # Milvus 2.3 finds the rows of a filtered delete with a Bounded-consistency query
                # (it ignores the level asked for), which can miss a row written moments ago: it
                # goes by id then (a store landing in that one round trip would go with it).
                client.delete(s.collection, ids=[exact_key], **self._slow)
            saw_delete(client, s.collection, s.is_lite)
            return 1

        with self._recent.forgetting([exact_key]):  # whichever version: Milvus has the newer one
            return await self._call(delete, s.timeout * 2)

    async def put_many(self, entries: Sequence[CacheEntry]) -> dict[int, str]:
        """Write entries in one delete + one insert; entries Milvus cannot hold are refused."""
        rejected: dict[int, str] = {}
        rows: dict[int, dict[str, Any]] = {}
        for i, entry in enumerate(entries):
            try:
                rows[i] = self.row(entry)
            except EntryTooLarge as exc:
                rejected[i] = f"too large for Milvus: {exc}"
            except DataRejected as exc:
                rejected[i] = f"refused by Milvus: {exc}"
        if not rows:
            return rejected
        try:
            await self._write_rows(list(rows.values()))
        except DataRejected:
            # A value the checks let through was refused: find it row by row, write the others.
            for i, row in rows.items():
                try:
                    await self._write_rows([row])
                except DataRejected as exc:
                    rejected[i] = f"refused by Milvus: {exc}"
        return rejected

    async def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        s = self.settings
        ids = [r["id"] for r in rows]

        def write(client: Any) -> None:
            # Delete first, then insert (not upsert: see MilvusBackend.put).
            client.delete(s.collection, ids=ids, **self._slow)
            client.insert(s.collection, rows, **self._slow)

        async with self._writing.hold(ids):
            with self._recent.forgetting(ids):  # an import replaces them: Milvus has the version
                await self._call(write, s.timeout * 2)
