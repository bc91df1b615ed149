"""Freshness through the real Envoy: max-age, the Age header, per-request TTL, volatile prompts."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from extproc.cache.schema import EntryFilter
from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

# Never shed lookups (max_added_latency_ms 0): on a busy machine an "overloaded" bypass would
# hide what these tests look at.
CALM = {"max_added_latency_ms": 0}


@pytest.fixture
async def stack(make_stack: StackFactory, backend: dict[str, Any]) -> Stack:
    """The stack of each backend (memory, Milvus) that never sheds load."""
    return await make_stack(**CALM, **backend)


def chat(model: str, prompt: str) -> dict[str, Any]:
    """A one-message chat request."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def fresh_model() -> str:
    """A model name of this test alone (its own partition)."""
    return f"fresh-{uuid.uuid4().hex[:8]}"


async def lifetimes(stack: Stack, model: str) -> list[float]:
    """expires_at - created_at of every live entry of ``model`` (0 = never expires)."""
    out: list[float] = []
    async for batch in stack.server.shared.cache.backend.entries(EntryFilter(model=model), time.time()):
        out += [e.expires_at - e.created_at if e.expires_at else 0.0 for e in batch]
    return out


async def test_age_header_and_max_age(stack: Stack) -> None:
    model = fresh_model()
    prompt = "How do hash tables handle collisions?"
    assert (await stack.chat(chat(model, prompt))).headers["x-semantic-cache"] == "miss"
    await stack.settle()
    hit = await stack.chat(chat(model, prompt))
    assert hit.headers["x-semantic-cache"] == "hit"
    assert int(hit.headers["age"]) >= 0
    await asyncio.sleep(1.1)  # the entry is now more than a second old
    young_only = await stack.chat(chat(model, prompt), **{"cache-control": "max-age=1"})
    assert young_only.headers["x-semantic-cache"] == "miss"
    assert stack.upstream.chat_calls(model) == 2
    await stack.settle()  # the fresh answer replaced the old one
    again = await stack.chat(
        chat(model, "How do hash tables deal with collisions?"), **{"cache-control": "max-age=60"}
    )
    assert again.headers["x-semantic-cache"] == "hit"
    assert (
        again.json()["choices"][0]["message"]["content"]
        == young_only.json()["choices"][0]["message"]["content"]
    )
    never = await stack.chat(chat(model, prompt), **{"cache-control": "max-age=0"})
    assert never.headers["x-semantic-cache"] == "miss"
    assert stack.upstream.chat_calls(model) == 3


async def test_requested_ttl_is_clamped(make_stack: StackFactory, backend: dict[str, Any]) -> None:
    stack = await make_stack(max_ttl_seconds=600, **CALM, **backend)
    model = fresh_model()
    await stack.chat(chat(model, "What is a B-tree?"), **{"x-semantic-cache-ttl": "30"})
    await stack.chat(chat(model, "What is a trie?"), **{"x-semantic-cache-ttl": "99999"})
    await stack.chat(chat(model, "What is a heap?"))
    await stack.settle()
    assert sorted(round(t) for t in await lifetimes(stack, model)) == [30, 600, 3600]


async def test_volatile_prompts_are_not_cached(stack: Stack) -> None:
    model = fresh_model()
    prompt = "What's the weather in Paris today?"
    first = await stack.chat(chat(model, prompt))
    await stack.settle()
    second = await stack.chat(chat(model, prompt))
    assert first.headers["x-semantic-cache"] == second.headers["x-semantic-cache"] == "miss"
    assert stack.upstream.chat_calls(model) == 2
    assert await lifetimes(stack, model) == []


async def test_dated_answers_are_not_stored(stack: Stack) -> None:
    model = fresh_model()
    await stack.chat(chat(model, "How big is the S&P 500 index?"), **{"x-test-mode": "dated"})
    await stack.settle()
    assert await lifetimes(stack, model) == []
    again = await stack.chat(chat(model, "How big is the S&P 500 index?"))
    assert again.headers["x-semantic-cache"] == "miss"


async def test_volatile_ttl_keeps_them_briefly(make_stack: StackFactory) -> None:
    stack = await make_stack(volatile_ttl_seconds=60, **CALM)
    model = fresh_model()
    prompt = "What is the current price of gold?"
    await stack.chat(chat(model, prompt))
    await stack.settle()
    assert [round(t) for t in await lifetimes(stack, model)] == [60]
    hit = await stack.chat(chat(model, prompt))
    assert hit.headers["x-semantic-cache"] == "hit"
