"""Eviction bookkeeping for the memory backend: FIFO, LRU and LFU, each O(1) per operation."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol


class EvictionPolicy(Protocol):
    """Tracks entry ids and names the next one to evict."""

    def added(self, key: int) -> None:
        """A new entry was stored."""
        ...

    def used(self, key: int) -> None:
        """An entry was served."""
        ...

    def removed(self, key: int) -> None:
        """An entry left the cache for another reason (expiry, replacement)."""
        ...

    def victim(self) -> int | None:
        """The id to evict next, or None when empty."""
        ...


class FifoPolicy:
    """Evict the oldest stored entry; hits change nothing."""

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def added(self, key: int) -> None:
        """Append to the queue."""
        self._order[key] = None

    def used(self, key: int) -> None:
        """Hits do not matter to FIFO."""

    def removed(self, key: int) -> None:
        """Drop from the queue."""
        self._order.pop(key, None)

    def victim(self) -> int | None:
        """The oldest entry."""
        return next(iter(self._order), None)


class LruPolicy(FifoPolicy):
    """Evict the least recently stored or served entry."""

    def used(self, key: int) -> None:
        """Move to the most-recent end."""
        if key in self._order:
            self._order.move_to_end(key)


class LfuPolicy:
    """Evict the least frequently served entry; ties go to the least recently used."""

    def __init__(self) -> None:
        self._freq: dict[int, int] = {}
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._min = 0

    def added(self, key: int) -> None:
        """New entries start at frequency 1."""
        self._freq[key] = 1
        self._buckets.setdefault(1, OrderedDict())[key] = None
        self._min = 1

    def used(self, key: int) -> None:
        """Move one frequency bucket up."""
        f = self._freq.get(key)
        if f is None:
            return
        self._unbucket(key, f, next_min=f + 1)
        self._freq[key] = f + 1
        self._buckets.setdefault(f + 1, OrderedDict())[key] = None

    def removed(self, key: int) -> None:
        """Forget the entry."""
        f = self._freq.pop(key, None)
        if f is not None:
            self._unbucket(key, f, next_min=None)

    def _unbucket(self, key: int, f: int, next_min: int | None) -> None:
        """Take ``key`` out of bucket ``f``; if that empties the lowest bucket, the lowest
        becomes ``next_min`` (or the lowest left, when None)."""
        bucket = self._buckets[f]
        del bucket[key]
        if not bucket:
            del self._buckets[f]
            if self._min == f:
                self._min = min(self._buckets, default=0) if next_min is None else next_min

    def victim(self) -> int | None:
        """First entry of the lowest-frequency bucket."""
        if not self._freq:
            return None
        if self._min not in self._buckets:
            self._min = min(self._buckets)
        return next(iter(self._buckets[self._min]))


def make_policy(name: str) -> EvictionPolicy:
    """``fifo`` | ``lru`` | ``lfu`` to a policy object."""
    policies: dict[str, type[EvictionPolicy]] = {"fifo": FifoPolicy, "lru": LruPolicy, "lfu": LfuPolicy}
    try:
        return policies[name]()
    except KeyError:
        raise ValueError(f"eviction_policy must be fifo, lru or lfu, got {name!r}") from None
