"""SemanticCache and the memory backend, with a deterministic toy embedding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from extproc.cache import MemoryBackend, SemanticCache
from extproc.cache.backends.eviction import LfuPolicy, LruPolicy, make_policy
from extproc.cache.backends.vector_index import VectorIndex
from extproc.cache.schema import Candidate
from extproc.embedding.batcher import Embedder
from tests.support.toy import DIM, RejectContaining, answer, make_cache, query, toy_encode


async def test_exact_hit_needs_no_embedding() -> None:
    cache = make_cache()
    await cache.store(query("v:1,0"), answer("a"))
    before = cache.embedder.encoded
    result = await cache.check(query("v:1,0"))
    assert result.match == "exact" and result.similarity == 1.0
    assert cache.embedder.encoded == before


async def test_threshold_and_partitions() -> None:
    cache = make_cache(threshold=0.9)
    await cache.store(query("v:1,0"), answer("a"))
    near = await cache.check(query("v:1,0.2"))  # cos = 0.98
    assert (
        near.match == "semantic"
        and near.entry is not None
        and near.similarity == pytest.approx(0.9806, abs=1e-3)
    )
    assert (await cache.check(query("v:1,1"))).entry is None  # cos = 0.707
    assert (await cache.check(query("v:1,0.2", model="other"))).entry is None
    assert (await cache.check(query("v:1,0.2", scope="tenant-b"))).entry is None
    assert (await cache.check(query("v:1,0.2", fp="g"))).entry is None
    assert (await cache.check(query("v:1,0.2"), threshold=0.99)).entry is None


async def test_candidates_tried_best_first_and_guard_rejection_falls_through() -> None:
    cache = make_cache(threshold=0.9, guards=[RejectContaining("0.05")])
    await cache.store(query("v:1,0.05"), answer("best but rejected"))
    await cache.store(query("v:1,0.3"), answer("second"))
    await cache.store(query("v:1,0.6"), answer("below threshold"))
    result = await cache.check(query("v:1,0"))
    assert result.entry is not None and result.entry.response == answer("second")
    assert result.rejections == ["marker"]
    assert result.candidates == 3
    # when every candidate above the threshold is rejected it is a miss
    cache.guards = [RejectContaining("v:")]
    assert (await cache.check(query("v:1,0.01"))).entry is None


async def test_same_exact_key_replaces() -> None:
    cache = make_cache()
    await cache.store(query("v:1,0"), answer("old"))
    await cache.store(query("v:1,0"), answer("new"))
    assert await cache.backend.count() == 1
    result = await cache.check(query("v:1,0"))
    assert result.entry is not None and result.entry.response == answer("new")


@pytest.mark.parametrize(
    ("policy", "expect_kept"),
    [
        ("fifo", {"v:0,1", "v:0,0,1"}),  # oldest ("v:1,0") goes, hits do not matter
        ("lru", {"v:1,0", "v:0,0,1"}),  # "v:0,1" is least recently used
        ("lfu", {"v:1,0", "v:0,0,1"}),  # "v:0,1" has the fewest hits
    ],
)
async def test_eviction_policies(policy: str, expect_kept: set[str]) -> None:
    cache = make_cache(max_entries=2, policy=policy)
    await cache.store(query("v:1,0"), answer("a"))
    await cache.store(query("v:0,1"), answer("b"))
    assert (await cache.check(query("v:1,0"))).hit  # use the oldest entry
    await cache.store(query("v:0,0,1"), answer("c"))
    assert await cache.backend.count() == 2
    kept = {
        p
        for p in ("v:1,0", "v:0,1", "v:0,0,1")
        if (await cache.backend.get_exact(query(p).exact_key, 0)) is not None
    }
    assert kept == expect_kept


def test_lfu_policy_order() -> None:
    lfu = LfuPolicy()
    for k in (1, 2, 3):
        lfu.added(k)
    lfu.used(1)
    lfu.used(1)
    lfu.used(2)
    assert lfu.victim() == 3
    lfu.removed(3)
    assert lfu.victim() == 2
    lfu.removed(2)
    assert lfu.victim() == 1
    lru = LruPolicy()
    lru.added(1)
    lru.added(2)
    lru.used(1)
    assert lru.victim() == 2
    with pytest.raises(ValueError):
        make_policy("random")


async def test_ttl_is_absolute_and_not_extended_by_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("extproc.cache.semantic.time.time", lambda: clock[0])
    cache = make_cache(ttl=10)
    await cache.store(query("v:1,0"), answer("a"))
    clock[0] = 1009.0
    assert (await cache.check(query("v:1,0"))).hit
    assert (await cache.check(query("v:1,0.1"))).hit
    clock[0] = 1010.0  # 10 s after storing, hits in between do not matter
    assert not (await cache.check(query("v:1,0"))).hit
    assert not (await cache.check(query("v:1,0.1"))).hit
    assert await cache.backend.count() == 0


async def test_ttl_zero_never_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("extproc.cache.semantic.time.time", lambda: clock[0])
    cache = make_cache(ttl=0)
    await cache.store(query("v:1,0"), answer("a"))
    clock[0] = 10**10
    assert (await cache.check(query("v:1,0"))).hit


def built(index: VectorIndex, timeout: float = 30.0) -> None:
    """Wait until no graph is being built, swapping a finished one in (as a search does)."""
    deadline = time.monotonic() + timeout
    while index._journal is not None or index._built is not None:
        assert time.monotonic() < deadline, "the graph build did not finish"
        time.sleep(0.01)
        index.search(np.ones(index.dim, dtype=np.float32) / np.sqrt(index.dim), 1)


def test_vector_index_flat_then_hnsw_agree() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(600, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    flat = VectorIndex(32, hnsw_threshold=10_000)
    hnsw = VectorIndex(32, hnsw_threshold=100)
    for i, v in enumerate(data):
        flat.add(i, v)
        hnsw.add(i, v)
    assert not flat.is_hnsw
    built(hnsw)  # in a thread: the flat rows serve meanwhile
    assert hnsw.is_hnsw
    for i in range(0, 600, 3):  # deletes shrink both the same way
        flat.remove(i)
        hnsw.remove(i)
    assert len(flat) == len(hnsw) == 400
    agree = 0
    for q in data[:100]:
        f, h = flat.search(q, 1), hnsw.search(q, 1)
        assert f[0][0] % 3 != 0 and h[0][0] % 3 != 0
        agree += f[0][0] == h[0][0]
    assert agree >= 98
    for i in range(600, 700):  # adds after deletes (tombstones stay until a rebuild)
        hnsw.add(i, data[i - 600])
    assert len(hnsw) == 500


async def test_micro_batching_shares_forward_passes() -> None:
    calls: list[int] = []

    def slow_encode(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        time.sleep(0.02)
        return toy_encode(texts)

    embedder = Embedder(slow_encode, DIM, max_batch=64)
    vectors = await asyncio.gather(*(embedder.embed(f"text {i}") for i in range(40)))
    assert len(vectors) == 40
    assert all(np.allclose(v, toy_encode([f"text {i}"])[0]) for i, v in enumerate(vectors))
    assert len(calls) < 40 and sum(calls) == 40
    embedder.close()


async def test_embedding_failure_reaches_every_waiter() -> None:
    def broken(texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("model crashed")

    embedder = Embedder(broken, DIM)
    results = await asyncio.gather(*(embedder.embed("x") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    embedder.close()


class ScoreBySecond:
    """A scorer whose confidence is the prompt's second toy coordinate (a stand-in for the
    learned verifier, to test how the cache uses a confidence)."""

    def __init__(self) -> None:
        self.vectors: list[tuple[list[float], list[float]]] = []
        """(query vector, candidate vector) of each call, rounded."""

    async def score(
        self,
        query: str,
        candidate: str,
        similarity: float,
        query_vector: np.ndarray | None = None,
        candidate_vector: np.ndarray | None = None,
    ) -> float:
        if query_vector is not None and candidate_vector is not None:
            self.vectors.append(
                (
                    [round(float(x), 3) for x in query_vector][:2],
                    [round(float(x), 3) for x in candidate_vector][:2],
                )
            )
        return float(candidate.split(",")[1])


async def test_min_confidence_falls_through_to_the_next_candidate_and_explain_scores_all() -> None:
    cache = make_cache(threshold=0.5)
    cache.scorer, cache.min_confidence = ScoreBySecond(), 0.25
    await cache.store(query("v:1,0.05"), answer("best but unsure"))
    await cache.store(query("v:1,0.3"), answer("second, confident"))
    await cache.store(query("v:1,0.6"), answer("third"))
    result = await cache.check(query("v:1,0"))
    assert result.entry is not None and result.entry.response == answer("second, confident")
    assert result.confidence == pytest.approx(0.3) and result.rejections == ["confidence"]
    assert (await cache.check(query("v:1,0"), min_confidence=0.7)).entry is None
    explained = await cache.check(query("v:1,0"), explain=True)
    assert explained.entry is not None and explained.entry.response == answer("second, confident")
    assert [round(c or 0, 2) for _, _, c in explained.scored] == [0.05, 0.3, 0.6]
    exact = await cache.check(query("v:1,0.05"))
    assert exact.match == "exact" and exact.confidence == 1.0


async def test_the_scorer_gets_the_query_vector_and_the_stored_entry_vector() -> None:
    cache = make_cache(threshold=0.5)
    scorer = ScoreBySecond()
    cache.scorer = scorer
    await cache.store(query("v:1,0.5"), answer("stored"))
    assert (await cache.check(query("v:1,0.6"))).hit
    assert scorer.vectors == [([0.857, 0.514], [0.894, 0.447])]  # normalized (1, 0.6) and (1, 0.5)


async def test_judge_is_the_decision_on_one_candidate() -> None:
    cache = make_cache(guards=[RejectContaining("0.05")])
    assert await cache.judge("v:1,0", "v:1,0.3", 0.95) == ([], None)  # no scorer: no confidence
    cache.scorer = ScoreBySecond()
    assert await cache.judge("v:1,0", "v:1,0.3", 0.95) == ([], 0.3)
    assert await cache.judge("v:1,0", "v:1,0.05", 0.99) == (["marker"], None)  # vetoed: not scored


async def test_prompts_longer_than_the_model_reads_hit_only_on_exact_repeats() -> None:
    """Past the window the vector is the head's: one document followed by two different
    questions embeds identically, so neither may answer the other (nor a prompt that is just
    the head); the exact repeat still hits."""
    from extproc.embedding.base import TokenWindow

    def encode(texts: Sequence[str]) -> np.ndarray:
        return toy_encode([t.split(" ", 1)[0] for t in texts])  # reads the first word alone

    encode.window = TokenWindow(8, lambda t: len(t.split()) + 2)  # type: ignore[attr-defined]
    cache = make_cache(threshold=0.5)
    cache.embedder = Embedder(encode, DIM)
    doc = "v:1,0 the quarterly report in six words"
    await cache.store(query(doc + " translate it"), answer("German text"))
    passes = cache.embedder.encoded
    other = await cache.check(query(doc + " count its words"))
    assert other.entry is None and other.rejections == ["long_prompt"] and other.candidates == 0
    assert other.vector is None and cache.embedder.encoded == passes  # no pass on the request path
    given = await cache.check_vector(query(doc + " count its words"), encode([doc])[0])
    assert given.rejections == ["long_prompt"] and given.candidates == 0  # with a vector too
    head = await cache.check(query("v:1,0 the report"))  # fits, but the candidate does not
    assert head.entry is None and head.candidates == 1 and head.rejections == ["long_prompt"]
    repeat = await cache.check(query(doc + " translate it"))
    assert repeat.match == "exact" and repeat.entry is not None
    await cache.store(query("v:1,0 short"), answer("short"))
    short = await cache.check(query("v:1,0 brief"))
    assert short.match == "semantic" and short.entry is not None and short.entry.prompt == "v:1,0 short"


async def test_a_nan_similarity_is_never_a_match() -> None:
    """`nan < threshold` is False: a broken vector passed the threshold test and was served."""
    cache = make_cache(threshold=0.9)
    stored = await cache.store(query("v:1,0"), answer("stored"))
    backend = cache.backend

    async def broken_search(*args: object, **kwargs: object) -> list[Candidate]:
        return [Candidate(stored, float("nan"))]

    backend.search = broken_search  # type: ignore[method-assign]
    result = await cache.check(query("v:0,1"))
    assert result.entry is None


async def test_prompts_differing_in_what_the_model_cannot_read_never_match() -> None:
    """"the 🍎 emoji" and "the 🚗 emoji" embed identically (both read as one unknown token)."""
    from extproc.embedding.base import TokenWindow

    def encode(texts: Sequence[str]) -> np.ndarray:  # one vector whatever the emoji
        return toy_encode(["v:1,0" for _ in texts])

    unknown = lambda t: [c for c in t if ord(c) > 0x2000]  # noqa: E731
    encode.window = TokenWindow(64, lambda t: len(t.split()), unknown)  # type: ignore[attr-defined]
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(encode, DIM), 0.9, 5, 0)
    await cache.store(query("What does the 🍎 emoji mean?"), answer("apple"))
    miss = await cache.check(query("What does the 🚗 emoji mean?"))
    assert miss.entry is None and miss.rejections == ["unreadable"]
    assert (await cache.check(query("what does the 🍎 emoji mean"))).match == "semantic"
    assert (await cache.check(query("What does the emoji mean?"))).rejections == ["unreadable"]
    await cache.store(query("Is 🍎 bigger than 🚗?"), answer("no"))  # the same pieces, swapped
    swapped = await cache.check(query("Is 🚗 bigger than 🍎?"))
    assert swapped.entry is None and set(swapped.rejections) == {"unreadable"}


async def test_a_store_whose_embedding_fails_reports_the_model_not_the_backend() -> None:
    """A store that has to embed and whose model raises is ``embedding_error`` (as a lookup is),
    not ``backend_error``: the backend is fine, and its error metrics must not say otherwise."""
    from extproc.errors import EmbeddingFailed

    def broken(texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("the embedding endpoint answered 500")

    cache = SemanticCache(MemoryBackend(DIM, 10), Embedder(broken, DIM), 0.9)
    with pytest.raises(EmbeddingFailed) as failed:
        await cache.store(query("v:1,0"), answer("a"))
    assert failed.value.reason == "embedding_error"
    assert await cache.backend.count() == 0
    cache.embedder.close()
