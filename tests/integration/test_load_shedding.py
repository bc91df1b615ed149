"""Under load the processor sheds semantic lookups instead of queueing (through the real Envoy)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import StackFactory
from tests.support.admin_helpers import chat, fresh_model

pytestmark = pytest.mark.integration


def sample(stack: object, name: str, **labels: str) -> float:
    """One sample of the stack's processor metrics (0 when absent)."""
    registry = stack.server.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_burst_is_shed_not_queued_and_exact_repeats_still_hit(make_stack: StackFactory) -> None:
    # One text per pass on one worker: a burst of 160 queues for certain, whatever the machine
    # (the lookup's share of 75 ms is 50: a lone pass fits even on a busy machine).
    stack = await make_stack(max_added_latency_ms=75, embedding_batch_size=1, embedding_workers=1)
    model = fresh_model()
    stored = [f"Which river flows through city number {i}?" for i in range(4)]
    for prompt in stored:  # one at a time: each waits for no other embedding
        for _ in range(8):  # on a busy machine even a lone pass may exceed 50 ms: shed, not stored
            outcome = (await stack.chat(chat(model, prompt))).headers["x-semantic-cache"]
            await stack.settle()
            if outcome == "hit":
                break
        assert outcome == "hit", f"{prompt!r} was never stored"
    before = sample(stack, "semantic_cache_bypass_total", reason="overloaded")

    burst = [
        stack.chat(chat(model, f"Unique question {i} about a subject nobody asked {i * 7}"))
        for i in range(160)
    ]
    repeats = [stack.chat(chat(model, stored[i % 4])) for i in range(40)]
    results = await asyncio.gather(*burst, *repeats)
    await stack.settle()  # a shed request's answer may still be stored: it reports after that

    assert all(r.status_code == 200 for r in results)  # shedding never fails a request
    shed = sample(stack, "semantic_cache_bypass_total", reason="overloaded") - before
    assert shed > 0, "the burst never exceeded a 50 ms lookup budget"
    assert sum(r.headers.get("x-semantic-cache-reason") == "overloaded" for r in results[:160]) == shed
    assert all(r.headers["x-semantic-cache"] == "hit" for r in results[160:])  # exact: no embedding
