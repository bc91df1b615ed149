"""Admission control: what is left of the latency budget for a lookup's embedding."""

from __future__ import annotations

import asyncio

import pytest

from extproc.dataplane.admission import LOOKUP_SHARE, embedding_budget


def test_no_budget_means_no_admission_control() -> None:
    assert embedding_budget(0, elapsed=3.0, loop_lag=1.0) is None


def test_the_budget_counts_from_arrival_and_charges_the_loop_lag() -> None:
    lookup = 0.150 * LOOKUP_SHARE  # the rest of the budget is the response path's
    assert 0.05 < lookup < 0.150
    assert embedding_budget(150, elapsed=0.040, loop_lag=0.010) == pytest.approx(lookup - 0.050)
    assert embedding_budget(150, elapsed=0.2, loop_lag=0.05) < 0  # spent


async def test_an_embedding_that_outlasts_the_budget_is_given_up() -> None:
    """A pass slower than predicted: the lookup stops waiting at the budget (overloaded)."""
    import numpy as np

    from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
    from extproc.embedding.batcher import Embedder
    from extproc.errors import Overloaded

    def slow(texts: list[str]) -> np.ndarray:
        import time

        time.sleep(0.3)
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    cache = SemanticCache(MemoryBackend(4, 10), Embedder(slow, 4), 0.9, 5, 60)
    query = CacheQuery(
        model="m", scope="", fingerprint="f", partition="p", exact_key="k", prompt="a new question"
    )
    with pytest.raises(Overloaded):
        await cache.check(query, max_wait=0.05)  # predicted ~5 ms (nothing fitted yet), takes 300
    assert cache.embedder.encoded == 0  # given up while the pass was still running
    await asyncio.sleep(0.35)
    cache.embedder.close()


async def test_a_request_that_waited_past_the_budget_gets_only_the_exact_lookup() -> None:
    """Time spent before the processor saw the body (a starved loop) counts against the budget."""
    from extproc.dataplane.processors import ChatCompletionsProcessor
    from tests.unit.dataplane.test_processors import CHAT, chat_body, headers, make_shared, miss_and_store

    shared, _, pending = make_shared(max_added_latency_ms=100)
    await miss_and_store(shared, pending, "capital of spain?", "Madrid")
    encoded = shared.cache.embedder.encoded

    late_exact = ChatCompletionsProcessor(shared)
    late_exact.arrived -= 0.5  # its first message was received half a second ago
    late_exact.on_request_headers(headers(CHAT), False)
    reply = await late_exact.on_request_body(chat_body("capital of spain?"), True)
    assert reply.immediate_response is not None  # the exact key needs no embedding: still a hit

    late_new = ChatCompletionsProcessor(shared)
    late_new.arrived -= 0.5
    late_new.on_request_headers(headers(CHAT), False)
    reply = await late_new.on_request_body(chat_body("capital city of spain?"), True)
    assert reply.request_body is not None and late_new.decision.outcome == "bypass"
    assert late_new.decision.reason == "overloaded"
    assert shared.cache.embedder.encoded == encoded  # shed before embedding anything

    on_time = ChatCompletionsProcessor(shared)
    on_time.on_request_headers(headers(CHAT), False)
    await on_time.on_request_body(chat_body("capital city of spain?"), True)
    assert on_time.decision.reason != "overloaded" and shared.cache.embedder.encoded == encoded + 1


async def test_judging_a_candidate_past_the_budget_is_given_up() -> None:
    """The verifier's word-vector pass queues with the embeddings: it is bounded by the same
    deadline, so an admitted lookup cannot overrun the budget while its candidate is judged."""
    import numpy as np

    from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
    from extproc.embedding.batcher import Embedder
    from extproc.errors import Overloaded

    class SlowScorer:
        identity = "slow"

        async def score(self, query: str, candidate: str, similarity: float, **_: object) -> float:
            await asyncio.sleep(0.3)
            return 0.99

    def encode(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    cache = SemanticCache(MemoryBackend(4, 10), Embedder(encode, 4), 0.9, 5, 60, scorer=SlowScorer())
    stored = CacheQuery(model="m", scope="", fingerprint="f", partition="p", exact_key="a", prompt="one")
    await cache.store(stored, {"choices": []})
    query = CacheQuery(model="m", scope="", fingerprint="f", partition="p", exact_key="b", prompt="two")
    with pytest.raises(Overloaded, match="judged"):
        await cache.check(query, max_wait=0.1)
    assert (await cache.check(query)).match == "semantic"  # no budget: judged however long it takes
    cache.embedder.close()
