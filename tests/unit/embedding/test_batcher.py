"""The embedder's batching, workers, lookup-before-store order and backlog prediction."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pytest

from extproc.cache import MemoryBackend, SemanticCache
from extproc.embedding.base import WordVectors
from extproc.embedding.batcher import Embedder
from extproc.embedding.cost import CostModel, WaitCorrection
from extproc.errors import Overloaded
from tests.support.toy import DIM, answer, query, toy_encode


class SlowEncoder:
    """The toy encoder taking ``fixed + per_item * n`` seconds per pass; records its batches."""

    thread_safe = True

    def __init__(self, fixed: float = 0.02, per_item: float = 0.002) -> None:
        self.fixed, self.per_item = fixed, per_item
        self.batches: list[list[str]] = []
        self.concurrent = 0
        self.most_concurrent = 0
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.batches.append(list(texts))
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
        time.sleep(self.fixed + self.per_item * len(texts))
        with self._lock:
            self.concurrent -= 1
        return toy_encode(texts)


def test_cost_model_learns_fixed_and_per_item_cost() -> None:
    model = CostModel()
    for n in (1, 8, 32, 1, 16, 64, 4) * 10:
        model.observe(n, 0.004 + 0.0005 * n)
    assert abs(model.fixed - 0.004) < 5e-4
    assert abs(model.per_item - 0.0005) < 5e-5
    assert abs(model.seconds(10) - 0.009) < 1e-3


async def test_concurrent_queries_share_passes_on_every_worker() -> None:
    encoder = SlowEncoder()
    embedder = Embedder(encoder, DIM, max_batch=64, workers=2)
    vectors = await asyncio.gather(*[embedder.embed(f"text {i}") for i in range(40)])
    assert len(vectors) == 40 and encoder.most_concurrent == 2
    assert len(encoder.batches) < 10  # batched, not one pass per text
    embedder.close()


async def test_lookups_go_before_stores() -> None:
    encoder = SlowEncoder(fixed=0.05)
    embedder = Embedder(encoder, DIM, max_batch=2, workers=1)
    first = asyncio.create_task(embedder.embed("busy"))  # occupies the worker
    await asyncio.sleep(0.01)
    stores = [asyncio.create_task(embedder.embed(f"store {i}", deferred=True)) for i in range(2)]
    lookups = [asyncio.create_task(embedder.embed(f"lookup {i}")) for i in range(2)]
    await asyncio.gather(first, *stores, *lookups)
    assert encoder.batches[1] == ["lookup 0", "lookup 1"]
    assert encoder.batches[2] == ["store 0", "store 1"]
    embedder.close()


async def test_expected_wait_grows_with_the_backlog() -> None:
    encoder = SlowEncoder(fixed=0.03, per_item=0.001)
    embedder = Embedder(encoder, DIM, max_batch=4, workers=1)
    for i in range(6):  # teach the cost model
        await embedder.embed(f"warm {i}")
    idle = embedder.expected_wait()
    assert 0.01 < idle < 0.1
    pending = [asyncio.create_task(embedder.embed(f"q {i}")) for i in range(20)]
    await asyncio.sleep(0)
    loaded = embedder.expected_wait()
    assert loaded > 4 * idle  # five more passes of up to 4 ahead of a new query
    await asyncio.gather(*pending)
    embedder.close()


def test_wait_correction_rises_fast_falls_slowly_and_is_clamped() -> None:
    correction = WaitCorrection(up=0.5, down=0.1, low=0.5, high=4.0)
    correction.observe(0.01, 0.03)  # waited three times the prediction
    assert correction.factor == 2.0
    correction.observe(0.01, 0.01)
    assert correction.factor == 1.9  # back down by a tenth of the gap only
    for _ in range(50):
        correction.observe(0.01, 1.0)  # a hundred times: clamped
    assert 3.9 < correction.factor <= 4.0
    correction.observe(0.0, 1.0)  # nothing predicted: nothing learned
    assert 3.9 < correction.factor <= 4.0


async def test_lookups_that_wait_longer_than_predicted_raise_the_prediction() -> None:
    """Waits under a CPU crunch run past the queue model: the prediction follows them, except
    for a lookup that would start at once (so a crunch that is over can be seen to be over)."""
    encoder = SlowEncoder(fixed=0.03, per_item=0.001)
    embedder = Embedder(encoder, DIM, max_batch=4, workers=1)
    for i in range(6):
        await embedder.embed(f"warm {i}")
    assert embedder.expected_wait() == embedder.cost.seconds(1)  # idle: uncorrected
    embedder.correction.factor = 3.0
    assert embedder.expected_wait() == embedder.cost.seconds(1)  # still idle: a pass starts at once
    pending = [asyncio.create_task(embedder.embed(f"q {i}")) for i in range(8)]
    await asyncio.sleep(0)
    assert embedder.expected_wait() == pytest.approx(3.0 * embedder._queue_wait(), rel=0.01)
    await asyncio.gather(*pending)
    assert embedder.correction.factor < 3.0  # those waits were as predicted: the factor falls
    embedder.close()


async def test_overloaded_lookup_still_finds_exact_repeats() -> None:
    encoder = SlowEncoder(fixed=0.05)
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(encoder, DIM, 4, 1), 0.9, 5, 60)
    await cache.store(query("v:1,0"), answer("stored"))
    backlog = [asyncio.create_task(cache.embedder.embed(f"noise {i}")) for i in range(40)]
    await asyncio.sleep(0)
    hit = await cache.check(query("v:1,0"), max_wait=0.01)
    assert hit.match == "exact"
    try:
        await cache.check(query("v:1,0.1"), max_wait=0.01)
    except Overloaded as exc:
        assert exc.reason == "overloaded"
    else:
        raise AssertionError("a semantic lookup ran past the latency budget")
    try:
        await cache.store(query("v:0,1"), answer("later"), max_wait=0.01)
    except Overloaded:
        pass
    else:
        raise AssertionError("a store embedded past the latency budget")
    await asyncio.gather(*backlog)
    cache.embedder.close()


class WordsEncoder:
    """The toy encoder with word vectors, both from one pass (``with_words``) or a pass of their own."""

    thread_safe = True

    def __init__(self) -> None:
        self.word_passes: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return toy_encode(texts)

    def words(self, texts: Sequence[str]) -> list[WordVectors]:
        self.word_passes.append(list(texts))
        return [self._words(t) for t in texts]

    def with_words(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Callable[[], WordVectors]]]:
        return toy_encode(texts), [partial(self._words, t) for t in texts]

    @staticmethod
    def _words(text: str) -> WordVectors:
        words = tuple(text.split())
        return WordVectors(words, np.ones((len(words), DIM), dtype=np.float32))


async def test_a_lookups_word_vectors_come_from_its_own_pass() -> None:
    """The verifier asks for the query's word vectors right after its lookup: no second pass
    for them (nor for a text embedded recently); a text never embedded gets a pass of its own."""
    encoder = WordsEncoder()
    embedder = Embedder(encoder, DIM, max_batch=8, workers=1)
    await embedder.embed("what is the capital of spain")
    words = await embedder.embed_words("what is the capital of spain")
    assert words.words[-1] == "spain" and encoder.word_passes == []
    fresh = await embedder.embed_words("never embedded")
    assert fresh.words == ("never", "embedded") and encoder.word_passes == [["never embedded"]]
    long = "word " * 100  # too long to keep: its words get a pass when asked
    await embedder.embed(long)
    await embedder.embed_words(long)
    assert len(encoder.word_passes) == 2
    embedder.close()


class Labelled(SlowEncoder):
    """A SlowEncoder that records, per pass, which of two encoders (``name``) ran it."""

    def __init__(self, name: str, log: list[str], fixed: float = 0.02) -> None:
        super().__init__(fixed=fixed)
        self.name, self.log = name, log

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.log.append(self.name)
        return super().__call__(texts)


async def test_a_pass_that_runs_alone_goes_to_the_solo_encoder() -> None:
    """One-thread passes side by side serve a burst; a lone query is faster on every core."""
    log: list[str] = []
    embedder = Embedder(Labelled("shared", log), DIM, workers=2, solo=Labelled("solo", log))
    await embedder.embed("alone")
    assert log == ["solo"]
    busy = asyncio.create_task(embedder.embed("first"))
    await asyncio.sleep(0.005)  # running: the next pass is not alone
    await asyncio.gather(busy, embedder.embed("beside it"))
    assert log[1:] == ["solo", "shared"]
    embedder.close()


async def test_under_sustained_overlap_a_lone_pass_stays_on_one_thread() -> None:
    """A pass alone at its start is soon joined when passes keep overlapping: it stays on the
    shared session, and the solo one comes back once traffic is sparse again."""
    log: list[str] = []
    embedder = Embedder(
        Labelled("shared", log, fixed=0.01),
        DIM,
        max_batch=1,
        workers=2,
        solo=Labelled("solo", log, fixed=0.005),  # faster alone, as on an idle machine
    )
    for _ in range(4):  # bursts: every pass but the first starts beside another
        await asyncio.gather(*[embedder.embed(f"burst {i}") for i in range(6)])
    assert embedder.overlap > 0.2
    log.clear()
    await embedder.embed("alone after a burst")
    assert log == ["shared"]
    for i in range(30):
        await embedder.embed(f"sparse {i}")
    assert log[-1] == "solo" and embedder.overlap < 0.2
    embedder.close()


async def test_one_worker_never_uses_a_solo_encoder() -> None:
    log: list[str] = []
    embedder = Embedder(Labelled("shared", log), DIM, workers=1, solo=Labelled("solo", log))
    await embedder.embed("alone")
    assert log == ["shared"]
    embedder.close()


def test_one_stalled_pass_does_not_set_the_fit() -> None:
    """A 200 ms first pass (a scheduler stall, a cold page) against a 6 ms prior: it counts as
    at most four times the prediction, and a few normal passes bring the fit back."""
    model = CostModel()
    model.observe(1, 0.2)
    assert model.seconds(1) <= 4 * 0.006 + 1e-9
    for _ in range(20):
        model.observe(1, 0.004)
    assert model.seconds(1) < 0.008


async def test_a_fit_that_sheds_everything_is_corrected_by_a_probe() -> None:
    """Taught 300 ms per pass (a crunch that is over), the cache would shed every semantic
    lookup at a 50 ms budget, and with no pass nothing would correct it. A probe goes in once
    the embedder has been idle for PROBE_SECONDS; its 20 ms pass restarts the fit."""
    from extproc.embedding import batcher

    encoder = SlowEncoder(fixed=0.02, per_item=0.0)
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(encoder, DIM, 4, 1), 0.9, 5, 60)
    embedder = cache.embedder
    embedder.cost.restart(1, 0.3)
    assert embedder.expected_wait() > 0.05
    with pytest.raises(Overloaded):
        await cache.check(query("v:1,0"), max_wait=0.05)  # a pass ran just now (the start)
    embedder._last_pass -= batcher.PROBE_SECONDS
    assert embedder.probe_due()
    probe = await cache.check(query("v:1,0"), max_wait=0.2)
    assert probe.vector is not None
    assert embedder.cost.seconds(1) < 0.05 and not embedder.probe_due()
    assert (await cache.check(query("v:1,0.1"), max_wait=0.05)).vector is not None
    embedder.close()


async def test_texts_given_up_on_never_hide_the_live_ones_behind_them() -> None:
    """A whole batch of abandoned lookups at the head of the queue: the live lookup and the
    store behind them still get a pass (they used to wait for some unrelated text)."""
    encoder = SlowEncoder(fixed=0.05)
    embedder = Embedder(encoder, DIM, max_batch=4, workers=1)
    busy = asyncio.create_task(embedder.embed("busy"))
    await asyncio.sleep(0.01)
    abandoned = [asyncio.create_task(embedder.embed(f"gone {i}")) for i in range(4)]
    live = asyncio.create_task(embedder.embed("live lookup"))
    store = asyncio.create_task(embedder.embed("a store", deferred=True))
    await asyncio.sleep(0)
    for task in abandoned:
        task.cancel()
    await asyncio.wait_for(asyncio.gather(busy, live, store), 2)
    assert ["live lookup", "a store"] in encoder.batches
    embedder.close()


async def test_embed_many_queues_behind_lookups_and_keeps_the_order() -> None:
    """An import's texts go as stores do: a lookup arriving meanwhile is in the next pass, and
    the import's vectors come back in its order."""
    encoder = SlowEncoder(fixed=0.02)
    embedder = Embedder(encoder, DIM, max_batch=4, workers=1)
    texts = [f"v:1,{i / 10}" for i in range(10)]
    bulk = asyncio.create_task(embedder.embed_many(texts))
    await asyncio.sleep(0.005)
    lookup = asyncio.create_task(embedder.embed("a lookup"))
    vectors = await bulk
    await lookup
    assert np.allclose(vectors, toy_encode(texts))
    assert encoder.batches[1] == ["a lookup"]  # right after the pass that was running
    embedder.close()


async def test_word_vectors_a_lookup_gave_up_on_are_kept_for_the_next() -> None:
    """A lookup past its deadline leaves its candidate's word-vector pass running: its result is
    kept, so the next lookup meeting that candidate needs no pass of its own."""
    from extproc.cache.guards.content import WordVectorCache

    class SlowWords(WordsEncoder):
        def words(self, texts: Sequence[str]) -> list[WordVectors]:
            time.sleep(0.1)
            return super().words(texts)

    encoder = SlowWords()
    embedder = Embedder(encoder, DIM)
    words = WordVectorCache(embedder)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(words.get("a stored candidate"), 0.01)
    await asyncio.sleep(0.3)
    assert (await words.get("a stored candidate")).words == ("a", "stored", "candidate")
    assert encoder.word_passes == [["a stored candidate"]]
    embedder.close()


async def test_closing_answers_every_waiter() -> None:
    """close() cancels the passes waiting for a worker thread (here a word-vector pass queued
    behind a sentence pass): their callers get an error instead of waiting for ever."""
    gate = threading.Event()

    class Slow:
        def __call__(self, texts: Sequence[str]) -> np.ndarray:
            gate.wait(5)
            return toy_encode(texts)

        def words(self, texts: Sequence[str]) -> list[WordVectors]:
            return [WordVectors((), np.zeros((0, DIM), np.float32)) for _ in texts]

    embedder = Embedder(Slow(), DIM, max_batch=8, workers=1)
    sentence = asyncio.ensure_future(embedder.embed("v:1,0"))
    await asyncio.sleep(0.05)  # its pass holds the only worker thread
    words = asyncio.ensure_future(embedder.embed_words("v:0,1"))  # its pass waits for the thread
    await asyncio.sleep(0.05)
    embedder.close()
    gate.set()
    assert (await asyncio.wait_for(sentence, 5)).shape == (DIM,)
    with pytest.raises(RuntimeError, match="workers stopped"):
        await asyncio.wait_for(words, 5)


async def test_a_slow_search_is_not_charged_to_the_latency_budget() -> None:
    """The budget is the embedding's and the judging's: a search well within lookup_timeout_ms
    (a Milvus search after a restart, 70-90 ms) turned a semantic hit into bypass overloaded."""

    class SlowSearch(MemoryBackend):
        async def search(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
            await asyncio.sleep(0.1)
            return await super().search(*args, **kwargs)  # type: ignore[arg-type]

    cache = SemanticCache(SlowSearch(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
    await cache.store(query("v:1,0"), answer("stored"))
    hit = await cache.check(query("v:1,0.1"), max_wait=0.05)
    assert hit.match == "semantic" and hit.entry is not None and hit.timings["search_ms"] >= 100
    cache.embedder.close()


async def test_a_session_made_for_the_workers_starts_its_threads_at_their_priority() -> None:
    """ONNX Runtime's pool threads inherit the priority of the thread creating the session: the
    solo session's ran at the event loop's and took the CPU the workers were meant to yield."""
    import os

    from extproc.embedding.batcher import WORKER_NICE, at_worker_priority

    def nice_of_a_thread_started_here() -> int:
        seen: list[int] = []
        thread = threading.Thread(
            target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        )
        thread.start()
        thread.join()
        return seen[0]

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert await at_worker_priority(nice_of_a_thread_started_here) == min(19, base + WORKER_NICE)


async def test_a_solo_session_slower_than_one_thread_is_left_alone() -> None:
    """On every core a pass waits for its slowest thread: with another process busy on one core
    the solo session took 2.8 times one thread's time, and lone queries still went to it."""
    from extproc.embedding.batcher import LONE_PROBE

    log: list[str] = []
    embedder = Embedder(
        Labelled("shared", log, fixed=0.005), DIM, workers=2, solo=Labelled("solo", log, fixed=0.03)
    )
    for i in range(3 * LONE_PROBE):
        await embedder.embed(f"lone {i}")
    assert embedder.lone[True] > embedder.lone[False]
    later = log[LONE_PROBE:]
    assert later.count("shared") > later.count("solo") >= 1  # still probed now and then
    embedder.close()
