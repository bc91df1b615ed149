"""vLLM's response shapes through the real Envoy and processor, hits read by the openai SDK.

For each shape in tests/data/vllm/ (reasoning, tool calls, n=2, logprobs, usage details) and each
backend: an answer stored from JSON and one stored from a stream are each served as JSON and
as SSE, and must equal what the upstream gave apart from ``id`` and ``created``.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from extproc.dataplane.identity import cache_query
from extproc.protocol.openai import parse_chat_request
from tests.conftest import Stack
from tests.support.vllm import FIXTURES, accumulate, without_id

pytestmark = pytest.mark.integration


def sdk(stack: Stack) -> openai.AsyncOpenAI:
    """The openai client, pointed at Envoy."""
    return openai.AsyncOpenAI(base_url=f"{stack.envoy.url}/v1", api_key="test", max_retries=0, timeout=30)


async def ask(
    stack: Stack, model: str, name: str, stream: bool, **extra: Any
) -> tuple[httpx.Headers, dict[str, Any] | list[dict[str, Any]]]:
    """One chat request through Envoy for fixture ``name``: the response headers, and the
    completion (``to_dict()``) or the chunks (``to_dict()`` each) as the SDK read them."""
    async with sdk(stack) as client:
        create = client.chat.completions.with_raw_response.create
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"Question for the {name} shape"}],
            "extra_body": FIXTURES[name]["request"],
            "extra_headers": {"x-test-fixture": name},
            **extra,
        }
        if stream:
            raw = await create(stream=True, stream_options={"include_usage": True}, **kwargs)
            chunks = [chunk.to_dict() async for chunk in raw.parse()]
            return raw.headers, chunks
        raw = await create(**kwargs)
        return raw.headers, raw.parse().to_dict()


def saved(completion: dict[str, Any]) -> str:
    """The saved-tokens header a hit on ``completion`` must carry."""
    usage = completion["usage"]
    return str(usage["prompt_tokens"] + usage["completion_tokens"])


@pytest.mark.parametrize("name", sorted(FIXTURES))
async def test_json_answer_is_served_as_json_and_as_sse(stack: Stack, name: str) -> None:
    original = FIXTURES[name]["json"]
    model = f"m-{uuid.uuid4().hex[:8]}"
    headers, miss = await ask(stack, model, name, stream=False)
    assert headers["x-semantic-cache"] == "miss" and miss == original
    await stack.settle()

    headers, as_json = await ask(stack, model, name, stream=False)
    assert headers["x-semantic-cache"] == "hit"
    assert headers["x-semantic-cache-saved-tokens"] == saved(original)
    assert isinstance(as_json, dict) and without_id(as_json) == without_id(original)

    headers, chunks = await ask(stack, model, name, stream=True)
    assert headers["x-semantic-cache"] == "hit" and headers["content-type"] == "text/event-stream"
    assert isinstance(chunks, list) and without_id(accumulate(chunks)) == without_id(original)
    assert stack.upstream.chat_calls(model) == 1


@pytest.mark.parametrize("name", sorted(FIXTURES))
async def test_streamed_answer_is_served_as_json_and_as_sse(stack: Stack, name: str) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    headers, miss = await ask(stack, model, name, stream=True)
    assert headers["x-semantic-cache"] == "miss" and isinstance(miss, list)
    original = accumulate(miss)  # what the client of the miss read
    assert original == accumulate(FIXTURES[name]["stream"])
    await stack.settle()

    headers, as_json = await ask(stack, model, name, stream=False)
    assert headers["x-semantic-cache"] == "hit"
    assert headers["x-semantic-cache-saved-tokens"] == saved(original)
    assert isinstance(as_json, dict) and without_id(as_json) == without_id(original)

    headers, chunks = await ask(stack, model, name, stream=True)
    assert headers["x-semantic-cache"] == "hit"
    assert isinstance(chunks, list) and without_id(accumulate(chunks)) == without_id(original)
    assert stack.upstream.chat_calls(model) == 1


async def test_reasoning_answer_stored_from_a_stream_keeps_its_reasoning(stack: Stack) -> None:
    """DeepSeek-R1 through vLLM's reasoning parser: streamed once, then served both ways."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    stream = FIXTURES["reasoning"]["stream"]
    thought = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in stream if c["choices"])
    answer = "".join(c["choices"][0]["delta"].get("content", "") for c in stream if c["choices"])
    await ask(stack, model, "reasoning", stream=True)
    await stack.settle()
    messages = [{"role": "user", "content": "Question for the reasoning shape"}]
    async with sdk(stack) as client:
        same = {"model": model, "messages": messages, "extra_body": FIXTURES["reasoning"]["request"]}
        hit = await client.chat.completions.create(**same)
        message = hit.choices[0].message
        assert message.model_extra is not None and message.model_extra["reasoning_content"] == thought
        assert message.content == answer

        replay = await client.chat.completions.create(stream=True, **same)
        kinds: list[str] = []
        reasoning = text = ""
        async for chunk in replay:
            for choice in chunk.choices:
                extra = choice.delta.model_extra or {}
                if extra.get("reasoning_content"):
                    kinds.append("reasoning")
                    reasoning += extra["reasoning_content"]
                if choice.delta.content:
                    kinds.append("content")
                    text += choice.delta.content
    assert (reasoning, text) == (thought, answer)
    assert kinds == sorted(kinds, key=lambda k: k == "content")  # all reasoning deltas come first
    assert stack.upstream.chat_calls(model) == 1


OLD_SHAPES = {
    # what earlier versions stored from a stream: defaulted content and tool-call fields, no usage
    "stream": {
        "id": "chatcmpl-old",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
    },
    # an OpenAI JSON answer as it came
    "json": {
        "id": "chatcmpl-old2",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    },
}


@pytest.mark.parametrize("shape", sorted(OLD_SHAPES))
async def test_entries_stored_by_earlier_versions_are_served(stack: Stack, shape: str) -> None:
    old = OLD_SHAPES[shape]
    model = f"m-{uuid.uuid4().hex[:8]}"
    messages = [{"role": "user", "content": "An entry from an older version"}]
    request = {"model": model, "messages": messages}
    query = cache_query(parse_chat_request(httpx.Request("POST", "/", json=request).content), "global", "")
    await stack.server.shared.cache.store(query, old)
    await stack.settle()
    async with sdk(stack) as client:
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=messages)  # type: ignore[arg-type]
        assert raw.headers["x-semantic-cache"] == "hit"
        assert without_id(raw.parse().to_dict()) == without_id(old)
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c.to_dict() async for c in stream]
    replayed = accumulate(chunks)
    assert replayed.pop("usage") == old.get(
        "usage", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    )
    assert without_id(replayed) == without_id({k: v for k, v in old.items() if k != "usage"})
    assert stack.upstream.chat_calls(model) == 0
