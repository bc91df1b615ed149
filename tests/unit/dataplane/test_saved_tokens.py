"""What a hit saved: the x-semantic-cache-saved-tokens header, the decision and the counter."""

from __future__ import annotations

import json
from typing import Any

from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue

from extproc.cache import MemoryBackend, SemanticCache
from extproc.config.settings import CacheSettings
from extproc.dataplane.decision import Decision
from extproc.dataplane.identity import cache_query
from extproc.dataplane.processors import ChatCompletionsProcessor, ResponsesProcessor
from extproc.dataplane.shared import HEADER, Shared
from extproc.embedding.batcher import Embedder
from extproc.observability.metrics import Metrics
from extproc.protocol import messages as m
from extproc.protocol.openai import parse_chat_request
from extproc.protocol.responses import parse_responses_request
from tests.support.toy import DIM, toy_encode

CHAT = [(":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")]
RESPONSES = [(":method", "POST"), (":path", "/v1/responses"), ("content-type", "application/json")]
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


async def serve(
    stored: dict[str, Any], stream: bool, responses: bool = False
) -> tuple[dict[str, bytes], Decision]:
    """Store ``stored`` for a prompt, ask it again, return the hit's headers and its decision.

    A chat request, or with ``responses`` a stateless ``/v1/responses`` one.
    """
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
    decisions: list[Decision] = []
    shared = Shared(settings=CacheSettings(), cache=cache, spawn=lambda _: None, on_decision=decisions.append)
    if responses:
        body = json.dumps({"model": "m", "input": "hi", "store": False, "stream": stream})
        request, p, headers = parse_responses_request(body.encode()), ResponsesProcessor(shared), RESPONSES
    else:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        request, p, headers = parse_chat_request(body.encode()), ChatCompletionsProcessor(shared), CHAT
    await cache.store(cache_query(request, "global", ""), stored)
    p.on_request_headers(
        m.header_dict(HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in headers])),
        False,
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


async def test_a_responses_hit_reports_its_input_and_output_tokens() -> None:
    message = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed"}
    message["content"] = [{"type": "output_text", "text": "hello", "annotations": []}]
    usage = {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18}
    response = {"object": "response", "status": "completed", "model": "m", "output": [message]}
    for stream in (False, True):
        marks, decision = await serve(response | {"usage": usage}, stream, responses=True)
        assert marks[HEADER] == b"hit" and marks[f"{HEADER}-saved-tokens"] == b"18"
        assert (decision.saved_prompt_tokens, decision.saved_completion_tokens) == (12, 6)


def test_saved_tokens_counter() -> None:
    metrics = Metrics()
    metrics.observe(
        Decision(outcome="hit", match="exact", saved_prompt_tokens=120, saved_completion_tokens=30), "memory"
    )
    metrics.observe(Decision(outcome="miss", saved_prompt_tokens=5), "memory")  # only hits count
    value = metrics.registry.get_sample_value
    assert value("semantic_cache_saved_tokens_total", {"kind": "prompt"}) == 120
    assert value("semantic_cache_saved_tokens_total", {"kind": "completion"}) == 30
