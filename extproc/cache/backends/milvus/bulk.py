"""Bulk operations of the Milvus backend (export, import, invalidate, flush) for the admin API.

A mixin of :class:`~extproc.cache.backends.milvus.backend.MilvusBackend`: every call goes through
the backend's deadline and circuit breaker, and deletes act on the shared collection, so every
replica pointing at it stops serving the deleted entries (there is no per-process layer to clear).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from extproc.cache.backends.milvus.rows import milliseconds, utf8
from extproc.cache.backends.milvus.schema import REQUIRED_FIELDS
from extproc.cache.schema import CacheEntry, Candidate, EntryFilter
from extproc.errors import DataRejected, EntryTooLarge

if TYPE_CHECKING:
    from extproc.config.milvus import MilvusSettings

T = TypeVar("T")
FIELDS = list(REQUIRED_FIELDS)
ALL_ROWS = 'id != ""'


def quote(value: str) -> str:
    """A Milvus expression string literal (double quotes, backslash escapes)."""
    return json.dumps(value, ensure_ascii=False)


def expression(selector: EntryFilter, now: float | None = None) -> str:
    """The boolean expression selecting ``selector``'s entries (live ones only when ``now`` is given).

    Values Milvus cannot parse (text that is not valid Unicode, a time beyond INT64) raise
    :class:`DataRejected` here, before any call.
    """
    parts = []
    for name, value in (
        ("model", selector.model),
        ("scope", selector.scope),
        ("fingerprint", selector.fingerprint),
    ):
        if value is not None:
            utf8(name, value)
            parts.append(f"{name} == {quote(value)}")
    if selector.created_before is not None:
        parts.append(f"created_at < {milliseconds('created_before', selector.created_before)}")
    if now is not None:
        parts.append(f"expires_at > {int(now * 1000)}")
    return " and ".join(parts) or ALL_ROWS


class MilvusBulkOps:
    """Export / import / invalidate / flush over the backend's collection."""

    if TYPE_CHECKING:
        settings: MilvusSettings
        dim: int
        _slow: dict[str, Any]

        async def _call(self, fn: Callable[[Any], T], timeout: float) -> T: ...

        def _entry(self, row: dict[str, Any], vector: np.ndarray | None = None) -> CacheEntry: ...

        def row(self, entry: CacheEntry) -> dict[str, Any]: ...

        def _similarity(self, distance: float) -> float: ...

    async def entries(
        self, selector: EntryFilter, now: float, batch_size: int = 256, vectors: bool = True
    ) -> AsyncIterator[list[CacheEntry]]:
        """Every live selected entry, in batches, read with Strong consistency."""
        s = self.settings
        fields = [*FIELDS, s.vector_field] if vectors else FIELDS
        flt = expression(selector, now)

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
            rows = iterator.next()
            return [
                self._entry(r, np.asarray(r[s.vector_field], dtype=np.float32) if vectors else None)
                for r in rows
            ]

        try:
            while batch := await self._call(next_batch, s.timeout):
                yield batch
        finally:
            iterator.close()

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
        params = {"metric_type": s.metric_type, "params": dict(s.search_params)}

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
            return [
                Candidate(self._entry(h["entity"] | {"id": h["id"]}), self._similarity(float(h["distance"])))
                for h in hits
            ]

        found = await self._call(run, s.timeout)
        found.sort(key=lambda c: c.similarity, reverse=True)
        return found

    async def delete_matching(self, selector: EntryFilter) -> int:
        """Delete every selected entry (expired ones included) from the shared collection."""
        s = self.settings
        flt = expression(selector)
        result = await self._call(lambda c: c.delete(s.collection, filter=flt, **self._slow), s.timeout * 4)
        return int(result.get("delete_count", 0)) if isinstance(result, dict) else 0

    async def delete_ids(self, ids: Sequence[str]) -> int:
        """Delete entries by id (the exact key)."""
        if not ids:
            return 0
        s = self.settings
        result = await self._call(lambda c: c.delete(s.collection, ids=list(ids), **self._slow), s.timeout)
        return int(result.get("delete_count", 0)) if isinstance(result, dict) else 0

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

        await self._call(write, s.timeout * 2)
