"""End to end through the real Envoy binary, a real processor, the real model and a fake LLM."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, StackFactory, start_envoy

pytestmark = pytest.mark.integration


def chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A chat request whose last user message is ``prompt``."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def fresh_model() -> str:
    """A model name no other test uses, so each test has its own partition."""
    return f"m-{uuid.uuid4().hex[:8]}"


def content(r: httpx.Response) -> str:
    """The assistant text of a JSON chat.completion response."""
    return r.json()["choices"][0]["message"]["content"]


def sse_payloads(text: str) -> list[str]:
    """The data: payloads of an SSE body."""
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_paraphrase_miss_then_hit(stack: Stack) -> None:
    model = fresh_model()
    first = await stack.chat(chat(model, "What is the capital of France?"))
    assert first.status_code == 200
    assert first.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    second = await stack.chat(chat(model, "What's the capital city of France?"))
    assert second.status_code == 200
    assert second.headers["x-semantic-cache"] == "hit"
    assert second.headers["x-semantic-cache-match"] == "semantic"
    assert 0.9 <= float(second.headers["x-semantic-cache-similarity"]) < 1.0
    assert content(second) == content(first)
    assert second.json()["id"] != first.json()["id"]
    assert stack.upstream.chat_calls(model) == 1


async def test_exact_repeat_hit(stack: Stack) -> None:
    model = fresh_model()
    first = await stack.chat(chat(model, "How do I reverse a list in Python?"))
    await stack.settle()
    again = await stack.chat(chat(model, "How do I reverse a list in Python?  \r\n"))
    assert again.headers["x-semantic-cache"] == "hit"
    assert again.headers["x-semantic-cache-match"] == "exact"
    assert again.headers["x-semantic-cache-similarity"] == "1.0000"
    assert again.headers["content-type"] == "application/json"
    assert content(again) == content(first)
    assert stack.upstream.chat_calls(model) == 1


async def test_streaming_miss_served_as_sse_and_json(stack: Stack) -> None:
    model = fresh_model()
    body = chat(model, "Explain what a semantic cache does.", stream=True)
    miss = await stack.chat(dict(body, stream_options={"include_usage": True}))
    assert miss.headers["x-semantic-cache"] == "miss"
    streamed = "".join(
        json.loads(p)["choices"][0]["delta"].get("content", "")
        for p in sse_payloads(miss.text)[:-1]
        if json.loads(p)["choices"]
    )
    await stack.settle()

    plain = await stack.chat(body)
    assert plain.headers["x-semantic-cache"] == "hit"
    assert all("usage" not in json.loads(p) for p in sse_payloads(plain.text)[:-1])
    hit = await stack.chat(dict(body, stream_options={"include_usage": True}))
    assert hit.headers["x-semantic-cache"] == "hit"
    assert hit.headers["content-type"] == "text/event-stream"
    payloads = sse_payloads(hit.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == streamed

    as_json = await stack.chat(chat(model, "Explain what a semantic cache does."))
    assert as_json.headers["x-semantic-cache"] == "hit"
    assert content(as_json) == streamed
    assert as_json.json()["object"] == "chat.completion"
    assert stack.upstream.chat_calls(model) == 1


@pytest.mark.parametrize("mode", ["error", "length", "content_filter", "abort", "n2-partial"])
async def test_bad_responses_are_not_stored(stack: Stack, mode: str) -> None:
    for stream in (False, True):
        model = fresh_model()
        body = chat(model, "Tell me a fact about owls", stream=stream)
        before = await stack.entries()
        try:
            r = await stack.chat(body, **{"x-test-mode": mode})
            if mode == "abort":  # a cut body: Envoy resets the stream or answers 502
                assert r.status_code == 502 or not r.text.rstrip().endswith("[DONE]")
        except httpx.HTTPError:
            assert mode == "abort"
        await stack.settle()
        assert await stack.entries() == before
        again = await stack.chat(body)
        assert again.headers["x-semantic-cache"] == "miss"
        await stack.settle()
    if mode == "error":
        err = await stack.chat(chat(fresh_model(), "anything"), **{"x-test-mode": "error"})
        assert err.status_code == 500  # the client sees exactly what the upstream said
        assert err.json()["error"]["message"] == "boom"


async def test_gzip_response_is_stored_as_plain_json(stack: Stack) -> None:
    model = fresh_model()
    body = chat(model, "Which planet is the largest?")
    first = await stack.chat(body, **{"x-test-mode": "gzip", "accept-encoding": "gzip"})
    assert first.status_code == 200
    seen = stack.upstream.seen[-1]
    assert "Accept-Encoding" not in seen.headers  # stripped for a request that may be stored
    await stack.settle()
    hit = await stack.chat(body)
    assert hit.headers["x-semantic-cache"] == "hit"
    assert (
        content(hit)
        == json.loads(gzip.decompress(first.content) if first.content[:2] == b"\x1f\x8b" else first.content)[
            "choices"
        ][0]["message"]["content"]
    )


async def test_identity_partitions_never_hit(stack: Stack) -> None:
    model = fresh_model()
    base = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Arr!"},
            {"role": "user", "content": "What is the boiling point of water?"},
        ],
    }
    await stack.chat(base)
    await stack.settle()
    assert (await stack.chat(base)).headers["x-semantic-cache"] == "hit"
    variants = [
        dict(base, model=fresh_model()),
        dict(base, messages=[{"role": "system", "content": "You are a poet."}, *base["messages"][1:]]),
        dict(
            base, messages=[base["messages"][0], {"role": "user", "content": "Hello"}, *base["messages"][2:]]
        ),
        dict(base, temperature=0.2),
        dict(base, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ]
    for variant in variants:
        r = await stack.chat(variant)
        assert r.headers["x-semantic-cache"] == "miss", variant


TENANT_A_PROMPTS = {
    "What is our refund policy?": ["Can you explain the refund policy?", "what is our refund policy"],
    "Summarise the Q3 board minutes": ["Give me a summary of the Q3 board minutes"],
    "Who is the account manager for Acme?": ["Which account manager handles Acme?"],
}


async def test_scope_by_header_never_crosses_tenants(
    make_stack: StackFactory, backend: dict[str, Any], tmp_path: Path
) -> None:
    # A trusted gateway in front sets x-tenant-id (so this Envoy keeps it) ...
    stack = await make_stack(
        scope_mode="header", scope_header="x-tenant-id", envoy_env={"STRIP_SCOPE_HEADER": "false"}, **backend
    )
    model = fresh_model()
    a = {"x-tenant-id": "tenant-a"}
    b = {"x-tenant-id": "tenant-b", "cache-control": "no-store"}  # B looks up but stores nothing
    for prompt in TENANT_A_PROMPTS:
        await stack.chat(chat(model, prompt), **a)
    await stack.settle()
    for prompt, variants in TENANT_A_PROMPTS.items():
        assert (await stack.chat(chat(model, prompt), **a)).headers["x-semantic-cache"] == "hit"
        for attempt in [prompt, *variants]:  # tenant B: exact copies and paraphrases never hit A's
            r = await stack.chat(chat(model, attempt), **b)
            assert r.headers["x-semantic-cache"] == "miss", attempt
    assert (await stack.chat(chat(model, "What is our refund policy?"))).headers[
        "x-semantic-cache"
    ] == "bypass"

    # ... while on the public Envoy (default STRIP_SCOPE_HEADER) a client cannot pick tenant A.
    public = await start_envoy(tmp_path, stack.server.port, stack.upstream.port)
    try:
        async with httpx.AsyncClient(base_url=public.url, timeout=30) as client:
            for prompt in TENANT_A_PROMPTS:
                r = await client.post("/v1/chat/completions", json=chat(model, prompt), headers=a)
                assert r.status_code == 200 and r.headers["x-semantic-cache"] == "bypass"
                assert "x-tenant-id" not in {k.lower() for k in stack.upstream.seen[-1].headers}
    finally:
        public.stop()


async def test_scope_by_authorization(make_stack: StackFactory, backend: dict[str, Any]) -> None:
    stack = await make_stack(scope_mode="authorization", **backend)
    model = fresh_model()
    body = chat(model, "Summarise my last invoice")
    await stack.chat(body, authorization="Bearer key-a")
    await stack.settle()
    assert (await stack.chat(body, authorization="Bearer key-a")).headers["x-semantic-cache"] == "hit"
    assert (await stack.chat(body, authorization="Bearer key-b")).headers["x-semantic-cache"] == "miss"


async def test_cache_control_directives(stack: Stack) -> None:
    model = fresh_model()
    body = chat(model, "What does HTTP 418 mean?")
    r = await stack.chat(body, **{"cache-control": "no-store"})
    assert r.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    assert (await stack.chat(body, **{"cache-control": "no-cache, no-store"})).headers[
        "x-semantic-cache"
    ] == "bypass"
    r = await stack.chat(body, **{"cache-control": "no-cache"})  # skip lookup, still store
    assert r.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    hit = await stack.chat(body, **{"cache-control": "no-store"})  # lookup allowed
    assert hit.headers["x-semantic-cache"] == "hit"
    assert content(hit) == content(r)
    again = await stack.chat(body, **{"cache-control": "no-cache"})
    assert again.headers["x-semantic-cache"] == "miss"
    assert stack.upstream.chat_calls(model) == 4


async def test_non_chat_and_malformed_pass_through_unchanged(stack: Stack) -> None:
    r = await stack.client.post(
        "/v1/embeddings", content=b'{"input": "x"}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["echo_path"] == "/v1/embeddings"
    assert "x-semantic-cache" not in r.headers
    r = await stack.client.get("/v1/models")
    assert r.json()["method"] == "GET"
    for raw in (b"{not json", b"[1, 2]", b'{"model": "x", "messages": "hi"}', b'{"model": "x"}'):
        r = await stack.client.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == (
            400 if raw[:1] != b"{" or raw == b"{not json" else 200
        )  # the upstream's own answer
        assert r.headers["x-semantic-cache"] == "bypass"
        assert stack.upstream.seen[-1].body == raw


async def test_body_bigger_than_buffer_reaches_upstream(stack: Stack) -> None:
    model = fresh_model()
    big = "word " * 400_000  # 2 MB > the 1 MiB buffer
    raw = json.dumps(chat(model, big)).encode()
    r = await stack.client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    # Usually a bypass (Envoy hands over only the first chunk); when the whole body arrives in one
    # read Envoy may deliver it complete, and the lookup is then an ordinary miss.
    assert r.headers["x-semantic-cache"] in ("bypass", "miss")
    assert stack.upstream.seen[-1].body == raw


async def test_healthz_is_answered_by_envoy(stack: Stack) -> None:
    before = cache_metrics(stack)
    for _ in range(5):  # the kubelet's probes
        r = await stack.client.get("/healthz")
        assert r.status_code == 200 and "x-semantic-cache" not in r.headers
    assert cache_metrics(stack) == before  # never reached the processor: nothing counted
    # A warning at every start means nothing once it is always there: the limit is configured.
    assert "no configured limit to the number of allowed active downstream" not in stack.envoy.log.read_text()


def cache_metrics(stack: Stack) -> dict[str, float]:
    """Every semantic_cache_* counter and histogram count of the processor, by labels."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(stack.server.metrics.registry).decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for s in family.samples
    }


async def test_reason_header_on_bypass_and_guarded_miss(stack: Stack) -> None:
    model = fresh_model()
    r = await stack.chat(chat(model, "What does HTTP 418 mean?"), **{"cache-control": "no-cache, no-store"})
    assert r.headers["x-semantic-cache"] == "bypass"
    assert r.headers["x-semantic-cache-reason"] == "no_cache_no_store"
    bad = await stack.client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.headers["x-semantic-cache-reason"] == "bad_json"
    prompt = "How do I turn on dark mode in Windows 11?"
    first = await stack.chat(chat(model, prompt))
    assert first.headers["x-semantic-cache"] == "miss" and "x-semantic-cache-reason" not in first.headers
    await stack.settle()
    opposite = await stack.chat(chat(model, "How do I turn off dark mode in Windows 11?"))
    assert opposite.headers["x-semantic-cache"] == "miss"
    reason = opposite.headers["x-semantic-cache-reason"]
    guard, similarity = reason.removeprefix("rejected: ").rsplit(" ", 1)
    assert reason.startswith("rejected: ") and "opposites" in guard.split(", ")
    assert stack.server.shared.settings.similarity_threshold <= float(similarity) < 1
    assert "dark mode" not in reason  # never prompt text
    hit = await stack.chat(chat(model, prompt))
    assert hit.headers["x-semantic-cache"] == "hit" and "x-semantic-cache-reason" not in hit.headers


async def test_identical_concurrent_misses_coalesce(stack: Stack) -> None:
    model = fresh_model()
    body = chat(model, "Write a haiku about concurrency")
    headers = {"x-test-mode": "slow", "x-test-delay-ms": "4000"}  # longer than Envoy's message_timeout
    replies = await asyncio.gather(*(stack.chat(body, **headers) for _ in range(6)))
    assert all(r.status_code == 200 for r in replies)
    assert stack.upstream.chat_calls(model) == 1  # one upstream call served all six
    kinds = sorted(r.headers["x-semantic-cache"] for r in replies)
    assert kinds == ["hit"] * 5 + ["miss"]
    assert len({content(r) for r in replies}) == 1


async def test_stream_with_unicode_line_separators_is_stored(stack: Stack) -> None:
    """Issue #20 item 5: U+2028, U+2029 and U+0085 sent raw inside an event do not cut it."""
    model = fresh_model()
    body = chat(model, "Where is the capital?", stream=True, prompt_logprobs=1)
    before = await stack.entries()
    miss = await stack.chat(body, **{"x-test-fixture": "usage_details"})
    assert miss.headers["x-semantic-cache"] == "miss"
    assert "\u2028".encode() in miss.content and "\x85".encode() in miss.content  # raw, as vLLM sends them
    await stack.settle()
    assert await stack.entries() == before + 1
    hit = await stack.chat(chat(model, "Where is the capital?", prompt_logprobs=1))
    assert hit.headers["x-semantic-cache"] == "hit"
    message = hit.json()["choices"][0]["message"]
    assert message["content"] == "Paris\u2028(capital)"
    assert message["reasoning_content"] == "Line one\u2028line two\u2029next\x85done."
    replay = await stack.chat(body)
    assert replay.headers["x-semantic-cache"] == "hit"
    assert "\u2028".encode() not in replay.content  # escaped: no reader can split an event there
    text = "".join(
        json.loads(p)["choices"][0]["delta"].get("content", "")
        for p in sse_payloads(replay.text)[:-1]
        if json.loads(p)["choices"]
    )
    assert text == "Paris\u2028(capital)"
    assert stack.upstream.chat_calls(model) == 1


async def test_stream_with_an_error_event_is_not_stored(stack: Stack) -> None:
    """Issue #20 item 7: an ``event: error`` whose payload has no "error" key, then a normal end."""
    model = fresh_model()
    body = chat(model, "Tell me about error events", stream=True)
    before = await stack.entries()
    r = await stack.chat(body, **{"x-test-mode": "sse-error-event"})
    assert r.headers["x-semantic-cache"] == "miss"
    assert "event: error" in r.text and r.text.rstrip().endswith("data: [DONE]")  # passed on unchanged
    await stack.settle()
    assert await stack.entries() == before
    again = await stack.chat(body)
    assert again.headers["x-semantic-cache"] == "miss"
    assert stack.upstream.chat_calls(model) == 2
