"""What a hit saved: the x-semantic-cache-saved-tokens header, the decision and the counter."""

from __future__ import annotations

import json
from typing import Any

from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue

from extproc.cache import MemoryBackend, SemanticCache
from extproc.config.settings import CacheSettings
from extproc.dataplane.decision import Decision
from extproc.dataplane.identity import cache_query
from extproc.dataplane.processors import ChatCompletionsProcessor
from extproc.dataplane.shared import HEADER, Shared
from extproc.embedding.batcher import Embedder
from extproc.observability.metrics import Metrics
from extproc.protocol import messages as m
from extproc.protocol.openai import parse_chat_request
from tests.support.toy import DIM, toy_encode

CHAT = [(":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")]
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


async def serve(stored: dict[str, Any], stream: bool) -> tuple[dict[str, bytes], Decision]:
    """Store ``stored`` for a prompt, ask it again, return the hit's headers and its decision."""
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
    decisions: list[Decision] = []
    shared = Shared(settings=CacheSettings(), cache=cache, spawn=lambda _: None, on_decision=decisions.append)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    await cache.store(cache_query(parse_chat_request(body.encode()), "global", ""), stored)
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(
        m.header_dict(HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in CHAT])), False
    )
    reply = await p.on_request_body(body.encode(), True)
    assert reply.immediate_response is not None
    return {
        h.header.key: h.header.raw_value for h in reply.immediate_response.headers.set_headers
    }, decisions[-1]


def answer(**extra: Any) -> dict[str, Any]:
    """A stored completion."""
    choice = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    return {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice], **extra}


async def test_hit_reports_the_stored_usage_as_saved_tokens() -> None:
    for stream in (False, True):
        marks, decision = await serve(answer(usage=USAGE), stream)
        assert marks[HEADER] == b"hit" and marks[f"{HEADER}-saved-tokens"] == b"150"
        assert (decision.saved_prompt_tokens, decision.saved_completion_tokens) == (120, 30)


async def test_entry_without_usage_claims_nothing() -> None:
    marks, decision = await serve(answer(), False)
    assert f"{HEADER}-saved-tokens" not in marks
    assert (decision.saved_prompt_tokens, decision.saved_completion_tokens) == (0, 0)


def test_saved_tokens_counter() -> None:
    metrics = Metrics()
    metrics.observe(
        Decision(outcome="hit", match="exact", saved_prompt_tokens=120, saved_completion_tokens=30), "memory"
    )
    metrics.observe(Decision(outcome="miss", saved_prompt_tokens=5), "memory")  # only hits count
    value = metrics.registry.get_sample_value
    assert value("semantic_cache_saved_tokens_total", {"kind": "prompt"}) == 120
    assert value("semantic_cache_saved_tokens_total", {"kind": "completion"}) == 30
