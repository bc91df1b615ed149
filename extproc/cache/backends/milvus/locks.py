"""One writer per exact key in this process: Milvus has no unique primary key.

A store is a delete by primary key then an insert (not upsert: see ``MilvusBackend.put``). Two
stores of one key interleaving as delete, delete, insert, insert leave two rows under the key,
so the writes of one key in this process take turns. Replicas can still interleave (see
docs/milvus.md#duplicate-rows); readers keep one row per id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


class KeyLocks:
    """An asyncio lock per key, held only while someone uses it (the table never grows unbounded)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        """Keys someone holds or waits for."""
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold every key's lock (taken in sorted order, so two holders never deadlock)."""
        wanted = sorted(set(keys))
        for key in wanted:
            lock, users = self._locks.get(key, (asyncio.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        taken: list[asyncio.Lock] = []
        try:
            for key in wanted:
                lock = self._locks[key][0]
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in taken:
                lock.release()
            for key in wanted:
                lock, users = self._locks[key]
                if users > 1:
                    self._locks[key] = (lock, users - 1)
                else:
                    del self._locks[key]  # nobody holds or waits for it
