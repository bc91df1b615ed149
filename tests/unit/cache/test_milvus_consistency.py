"""The Milvus backend's helpers for one row per key: per-key write locks, distinct candidates,
filters that Milvus can parse, and telling a refused expression from a lost connection."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from extproc.cache.backends.milvus.bulk import expression, quote
from extproc.cache.backends.milvus.consistency import distinct, id_filters
from extproc.cache.backends.milvus.failures import duplicate_rows, is_data_error
from extproc.cache.backends.milvus.locks import KeyLocks
from extproc.cache.schema import CacheEntry, Candidate, EntryFilter
from extproc.errors import DataRejected


async def test_writes_of_one_key_take_turns_and_no_lock_outlives_its_users() -> None:
    locks = KeyLocks()
    inside: dict[str, int] = {}
    most: dict[str, int] = {}

    async def write(keys: list[str]) -> None:
        async with locks.hold(keys):
            for key in keys:
                inside[key] = inside.get(key, 0) + 1
                most[key] = max(most.get(key, 0), inside[key])
            await asyncio.sleep(0.01)
            for key in keys:
                inside[key] -= 1

    # Overlapping batches in opposite orders: sorted acquisition, so no deadlock.
    await asyncio.wait_for(
        asyncio.gather(*(write(["a", "b"]) for _ in range(5)), *(write(["b", "a", "c"]) for _ in range(5))), 5
    )
    assert most == {"a": 1, "b": 1, "c": 1}
    assert len(locks) == 0

    holder = asyncio.create_task(write(["x"]))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(write(["x"]))
    await asyncio.sleep(0)
    waiter.cancel()  # a cancelled waiter gives its place back
    await asyncio.gather(holder, waiter, return_exceptions=True)
    assert len(locks) == 0


def candidate(key: str, similarity: float) -> Candidate:
    """A candidate for id ``key``."""
    entry = CacheEntry(
        id=key,
        model="m",
        scope="s",
        fingerprint="f",
        partition="p",
        exact_key=key,
        prompt=key,
        response={},
        vector=np.zeros(2, dtype=np.float32),
        created_at=0.0,
        expires_at=0.0,
    )
    return Candidate(entry, similarity)


def test_distinct_keeps_the_best_row_of_each_id() -> None:
    got = distinct([candidate("a", 0.5), candidate("b", 0.9), candidate("a", 0.95), candidate("c", 0.1)])
    assert [(c.entry.id, c.similarity) for c in got] == [("a", 0.95), ("b", 0.9), ("c", 0.1)]


@pytest.mark.parametrize("value", ["a\x00b", "a\x01", "\x1f", "tab\there", "line\nbreak"])
def test_control_characters_never_reach_a_milvus_filter(value: str) -> None:
    with pytest.raises(DataRejected, match="model holds a control character"):
        expression(EntryFilter(model=value))
    with pytest.raises(DataRejected, match="control character"):
        quote(value)


def test_other_text_is_quoted_as_json() -> None:
    assert quote('a"b\\c\x7f\u00e9') == '"a\\"b\\\\c\x7f\u00e9"'
    assert expression(EntryFilter(scope="t")) == 'scope == "t"'
    assert id_filters(['"a"', '"b"']) == ['id in ["a", "b"]']


class MilvusException(Exception):
    """Stands in for pymilvus' (the failure classes go by class name, code and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def test_milvus_lites_refused_escape_is_a_data_error_not_a_connection_failure() -> None:
    lite = MilvusException(6, 'unknown escape sequence \\u at column 12\n  model == "a\\u0000b"')
    assert is_data_error(lite)
    assert not is_data_error(MilvusException(2, "Fail connecting to server on localhost:19530"))


def test_a_search_failing_on_a_duplicated_id_is_recognised() -> None:
    failed = MilvusException(
        65535, "incomplete query result, missing id 0e1f, len(searchIDs) = 5, len(queryIDs) = 4"
    )
    assert duplicate_rows(failed) and not is_data_error(failed)
    assert not duplicate_rows(MilvusException(2, "Fail connecting to server"))


def test_session_lookups_wait_for_deletes_not_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every miss stores: waiting for each store made nearly every lookup wait ~0.2 s."""
    from extproc.cache.backends.milvus import consistency

    monkeypatch.setattr(consistency, "_deleted_at", {})
    eventually = {"consistency_level": "Customized", "guarantee_timestamp": 1}
    assert consistency.lookup_read("c", "Session") == eventually
    consistency._deleted_at["c"] = 42  # what saw_delete records: later lookups wait for it
    after = {"consistency_level": "Customized", "guarantee_timestamp": 42}
    assert consistency.lookup_read("c", "Session") == after
    for level in ("Strong", "Bounded", "Eventually"):
        assert consistency.lookup_read("c", level) == {"consistency_level": level}


def test_recent_stores_are_found_until_milvus_shows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups do not wait for this process's stores: for that moment they are found here."""
    from extproc.cache.backends.milvus import consistency

    def entry(key: str, partition: str = "p", vector: tuple = (1.0, 0.0), expires: float = 0.0) -> CacheEntry:
        v = np.asarray(vector, dtype=np.float32)
        return CacheEntry(key, "m", "s", "f", partition, key, key, {}, v / np.linalg.norm(v), 1.0, expires)

    recent = consistency.RecentStores()
    recent.add(entry("a"))
    recent.add(entry("b", vector=(1.0, 1.0)))
    recent.add(entry("other", partition="q"))
    recent.add(entry("gone", expires=50.0))
    assert recent.get("a", 100.0) is not None and recent.get("gone", 100.0) is None  # expired
    found = recent.search("p", np.asarray([1.0, 0.0], dtype=np.float32), 100.0, 10)
    assert [(c.entry.id, round(c.similarity, 3)) for c in found] == [("a", 1.0), ("b", 0.707)]
    top = recent.search("p", np.asarray([1.0, 0.0], dtype=np.float32), 100.0, 1)
    assert [c.entry.id for c in top] == ["a"]
    recent.drop(["a"])
    assert recent.get("a", 100.0) is None and recent.get("b", 100.0) is not None
    recent.clear()
    assert recent.get("b", 100.0) is None
    recent.add(entry("c"))
    monkeypatch.setattr(consistency, "RECENT_STORE_SECONDS", 0.0)  # Milvus has applied it by now
    assert recent.get("c", 100.0) is None


def test_another_replicas_later_store_wins_over_this_process_recent_one() -> None:
    from extproc.cache.backends.milvus.consistency import RecentStores, newest

    def entry(created: float) -> CacheEntry:
        return CacheEntry("k", "m", "s", "f", "p", "k", "k", {}, np.ones(2, dtype=np.float32), created)

    mine, theirs, older = entry(10.0), entry(11.0), entry(9.0)
    assert newest(theirs, mine) is theirs and newest(older, mine) is mine and newest(mine, mine) is mine
    assert newest(None, mine) is mine and newest(theirs, None) is theirs and newest(None, None) is None
    strong = RecentStores(enabled=False)  # Strong reads show this process's stores already
    strong.add(mine)
    assert strong.get("k", 0.0) is None
