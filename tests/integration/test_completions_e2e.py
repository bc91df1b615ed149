"""POST /v1/completions through the real Envoy with the openai SDK: miss then hit, JSON and stream."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    """The memory stack that never sheds load (an overloaded bypass would hide the hit)."""
    return await make_stack(max_added_latency_ms=0)


def sdk(stack: Stack) -> openai.AsyncOpenAI:
    """The official client pointed at Envoy."""
    return openai.AsyncOpenAI(base_url=stack.envoy.url + "/v1", api_key="unused", max_retries=0)


async def test_completions_miss_then_hit_json_and_stream(stack: Stack) -> None:
    client, model = sdk(stack), f"legacy-{uuid.uuid4().hex[:8]}"
    first = await client.completions.with_raw_response.create(
        model=model, prompt="Write a haiku about caching."
    )
    assert first.headers["x-semantic-cache"] == "miss"
    text = first.parse().choices[0].text
    await stack.settle()
    hit = await client.completions.with_raw_response.create(
        model=model, prompt="Compose a haiku about caching."
    )
    assert hit.headers["x-semantic-cache"] == "hit" and "age" in hit.headers
    served = hit.parse()
    assert served.object == "text_completion" and served.choices[0].text == text
    assert served.choices[0].finish_reason == "stop" and served.id != first.parse().id
    stream = await client.completions.create(
        model=model,
        prompt="Write a haiku about caching.",
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == text and usage is not None and usage.total_tokens == 7
    assert stack.upstream.chat_calls(model, "/v1/completions") == 1


async def test_a_streamed_miss_is_stored_and_chat_never_shares_it(stack: Stack) -> None:
    client, model = sdk(stack), f"legacy-{uuid.uuid4().hex[:8]}"
    stream = await client.completions.create(model=model, prompt="Name three prime numbers.", stream=True)
    streamed = "".join([c.text async for chunk in stream for c in chunk.choices])
    await stack.settle()
    again = await client.completions.with_raw_response.create(model=model, prompt="Name three prime numbers.")
    assert again.headers["x-semantic-cache"] == "hit" and again.parse().choices[0].text == streamed
    chat = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Name three prime numbers."}]
    )
    assert chat.headers["x-semantic-cache"] == "miss"  # another endpoint, another partition
    assert chat.parse().object == "chat.completion"


async def test_responses_stateless_miss_then_hit_json_and_stream(stack: Stack) -> None:
    client, model = sdk(stack), f"resp-{uuid.uuid4().hex[:8]}"
    first = await client.responses.with_raw_response.create(
        model=model, input="Explain what a semantic cache does.", store=False
    )
    assert first.headers["x-semantic-cache"] == "miss"
    text = first.parse().output_text
    await stack.settle()
    hit = await client.responses.with_raw_response.create(
        model=model, input=[{"role": "user", "content": "Explain what a semantic cache does."}], store=False
    )
    assert hit.headers["x-semantic-cache"] == "hit"
    served = hit.parse()
    assert served.output_text == text and served.status == "completed" and served.id != first.parse().id
    stream = await client.responses.create(
        model=model, input="Explain what a semantic cache is for.", store=False, stream=True
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert stack.upstream.chat_calls(model, "/v1/responses") == 1


async def test_stateful_responses_pass_through(stack: Stack) -> None:
    client, model = sdk(stack), f"resp-{uuid.uuid4().hex[:8]}"
    for _ in range(2):  # store defaults to true: server-side state, never from cache
        stored = await client.responses.with_raw_response.create(model=model, input="Say hi.")
        assert stored.headers["x-semantic-cache"] == "bypass"
    await stack.settle()
    follow = await client.responses.with_raw_response.create(
        model=model, input="Say hi.", store=False, previous_response_id="resp_1"
    )
    assert follow.headers["x-semantic-cache"] == "bypass"
    assert stack.upstream.chat_calls(model, "/v1/responses") == 3
