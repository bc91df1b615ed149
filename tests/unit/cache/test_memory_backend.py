"""The memory backend under churn: exports racing evictions, bookkeeping that must shrink, admin
selections filtered before they are cut, counts of live entries only, HNSW removals."""

from __future__ import annotations

import time

import numpy as np

from extproc.cache.backends.memory import MemoryBackend
from extproc.cache.backends.vector_index import VectorIndex
from extproc.cache.schema import CacheEntry, EntryFilter
from extproc.protocol.openai import exact_key, partition_key
from tests.unit.cache.test_cache import built

DIM = 8


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def entry(
    i: int, created: float, ttl: float = 86400, vector: np.ndarray | None = None, scope: str = "g"
) -> CacheEntry:
    key = exact_key("m", scope, "f", f"prompt {i}")
    return CacheEntry(
        id=key,
        model="m",
        scope=scope,
        fingerprint="f",
        partition=partition_key("m", scope, "f"),
        exact_key=key,
        prompt=f"prompt {i}",
        response={"choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}}]},
        vector=unit(i) if vector is None else vector,
        created_at=created,
        expires_at=created + ttl if ttl else 0.0,
    )


async def test_an_export_under_evicting_traffic_never_writes_an_entry_without_its_vector() -> None:
    backend = MemoryBackend(DIM, max_entries=300)
    now = time.time()
    for i in range(300):
        await backend.put(entry(i, now))
    for e in list(backend._entries.values())[:150]:  # popular: evictions take the newer half
        await backend.record_hit(e)
    exported: list[CacheEntry] = []
    n = 300
    async for batch in backend.entries(EntryFilter(), time.time(), batch_size=50):
        exported += batch
        for _ in range(40):  # misses stored between two batches: each evicts
            await backend.put(entry(n, time.time()))
            n += 1
    assert exported
    assert all(e.vector.shape == (DIM,) for e in exported)
    assert len({e.id for e in exported}) == len(exported)


async def test_an_export_keeps_every_key_refreshed_while_it_runs() -> None:
    """A key stored again between two batches (a refreshed answer) was in neither version of the
    file: 2,900 lines for 3,000 live entries. It now comes in its current version."""
    backend = MemoryBackend(DIM, max_entries=1000)
    now = time.time()
    for i in range(600):
        await backend.put(entry(i, now))
    exported: list[CacheEntry] = []
    async for batch in backend.entries(EntryFilter(), time.time(), batch_size=100):
        if not exported:
            for i in range(300, 400):  # later in the snapshot: refreshed before their batch
                await backend.put(entry(i, now + 1))
            await backend.delete_ids([entry(500, now).id])  # deleted before its batch: gone
        exported += batch
    assert sorted(e.prompt for e in exported) == sorted(f"prompt {i}" for i in range(600) if i != 500)
    assert {e.created_at for e in exported if e.prompt == "prompt 350"} == {now + 1}
    assert all(e.vector.shape == (DIM,) for e in exported)


async def test_the_expiry_bookkeeping_shrinks_with_the_entries() -> None:
    backend = MemoryBackend(DIM, max_entries=100)
    now = time.time()
    for i in range(20_000):  # every put past 100 evicts one
        await backend.put(entry(i, now))
    assert len(backend._expiry) <= 2 * len(backend._entries) + 1024


async def test_a_partitions_vectors_give_memory_back() -> None:
    backend = MemoryBackend(DIM, max_entries=10_000)
    now = time.time()
    for i in range(5000):
        await backend.put(entry(i, now, scope="burst"))
    await backend.put(entry(5000, now, scope="burst"))  # the popular one, kept
    labels = [label for label, e in backend._entries.items() if e.prompt != "prompt 5000"]
    for label in labels:
        backend._remove(label)
    index = backend._partitions[partition_key("m", "burst", "f")]
    assert len(index) == 1 and len(index._labels) <= 128


async def test_invalidate_by_prompt_filters_by_age_before_the_limit() -> None:
    """An old wrong answer with newer, closer paraphrases: the age filter finds it."""
    backend = MemoryBackend(DIM, max_entries=100)
    now = time.time()
    target = unit(1)
    await backend.put(
        entry(0, now - 3600, vector=(target + 0.3 * unit(2)) / np.linalg.norm(target + 0.3 * unit(2)))
    )
    for i in range(1, 11):
        await backend.put(entry(i, now, vector=target))
    found = await backend.nearest(target, EntryFilter(created_before=now - 60), 3, now)
    assert [c.entry.prompt for c in found] == ["prompt 0"]


async def test_counts_are_of_live_entries() -> None:
    backend = MemoryBackend(DIM, max_entries=100)
    now = time.time()
    await backend.put(entry(99, now))
    for i in range(50):
        await backend.put(entry(i, now - 10, ttl=5))  # expired five seconds ago
    assert await backend.count() == 1
    assert backend.known_entries == 1
    assert backend.status()[1] == "memory backend: 1 entries"


def test_an_hnsw_partition_rebuilds_without_its_tombstones() -> None:
    """Removals leave tombstones (reusing a slot repairs links: 30 ms an add); once they
    outnumber the live rows a new graph is built in a thread and swapped in."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = VectorIndex(32, hnsw_threshold=100)
    label = 0
    for v in data[:600]:
        index.add(label, v)
        label += 1
    built(index)
    assert index.is_hnsw and index.rebuilds == 1  # the first graph
    for old in range(0, 2000):  # a full cache: every add evicts the oldest
        index.add(label, data[600 + old % 3400])
        label += 1
        index.remove(old)
        if old % 97 == 0:  # searches meet graphs being built and swapped in
            assert len(index.search(data[old % 600], 5)) == 5
    built(index)
    assert index.rebuilds >= 2
    assert len(index) == 600
    assert index._hnsw is not None and index._hnsw.element_count < 2000  # tombstones dropped
    live = sorted(index._live)
    assert live == list(range(2000, 2600))
    for lab in live[::25]:  # each live row finds itself
        v = index.vector(lab)
        assert v is not None and index.search(v, 1)[0][0] == lab


def test_the_index_answers_exactly_while_graphs_are_built_and_swapped() -> None:
    """Random adds, removes and searches against a plain dict, with builds running in threads
    at any moment: every search returns exactly the live rows (k = all of them)."""
    rng = np.random.default_rng(7)
    index = VectorIndex(16, hnsw_threshold=40)
    index.min_tombstones = 20
    live: dict[int, np.ndarray] = {}
    label = 0
    for step in range(4000):
        if rng.random() < 0.55 or len(live) < 5:
            v = rng.normal(size=16).astype(np.float32)
            v /= np.linalg.norm(v)
            index.add(label, v)
            live[label] = v
            label += 1
        else:
            gone = int(rng.choice(list(live)))
            index.remove(gone)
            del live[gone]
        if step % 7 == 0:
            q = rng.normal(size=16).astype(np.float32)
            found = index.search(q / np.linalg.norm(q), len(live))
            assert {lab for lab, _ in found} == set(live), step
            probe = int(rng.choice(list(live)))
            got = index.vector(probe)
            assert got is not None and np.allclose(got, live[probe], atol=1e-6)
        if step % 500 == 0:
            time.sleep(0.05)  # let a build finish now and then
    built(index)
    assert index.rebuilds >= 2 and len(index) == len(live)
