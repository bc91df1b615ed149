"""The processors, one focused test per ext_proc phase, and the registry that picks them by path."""

from __future__ import annotations

import json
import time
from typing import Any

import betterproto2
import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue
from envoy_data_plane.envoy.service.ext_proc.v3 import HttpBody, HttpHeaders, ProcessingRequest

from extproc.cache import MemoryBackend, SemanticCache
from extproc.config.settings import CacheSettings
from extproc.dataplane.decision import Decision
from extproc.dataplane.processors import (
    ChatCompletionsProcessor,
    CompletionsProcessor,
    PassThroughProcessor,
    ResponsesProcessor,
    open_processor,
    processor_for,
)
from extproc.dataplane.shared import HEADER, Shared
from extproc.embedding.batcher import Embedder
from extproc.protocol import messages as m
from tests.support.toy import DIM, toy_encode

CHAT = [(":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")]


def make_shared(**overrides: Any) -> tuple[Shared, list[Decision], list[Any]]:
    """A Shared over the memory backend and a toy embedding; decisions and spawned stores collected."""
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
    # No admission control unless a test asks: a first call that imports or starts a thread on
    # a busy machine must not be shed as overloaded (tests/unit/dataplane/test_admission.py).
    overrides.setdefault("max_added_latency_ms", 0)
    decisions: list[Decision] = []
    pending: list[Any] = []
    shared = Shared(
        settings=CacheSettings(**overrides), cache=cache, spawn=pending.append, on_decision=decisions.append
    )
    return shared, decisions, pending


def headers(pairs: list[tuple[str, str]], eos: bool = False) -> dict[str, str]:
    """Header dict as the processor's phase methods receive it."""
    return m.header_dict(HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]))


def chat_body(prompt: str, stream: bool = False) -> bytes:
    """A chat-completions request body."""
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": stream}
    ).encode()


def completion(text: str) -> bytes:
    """A storable JSON completion."""
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
    ).encode()


def first_message(pairs: list[tuple[str, str]]) -> ProcessingRequest:
    """The request-headers message that opens a stream."""
    header_map = HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])
    return ProcessingRequest(request_headers=HttpHeaders(headers=header_map))


async def run_spawned(pending: list[Any]) -> None:
    """Run the background work (stores, comparisons) the processors spawned, in order."""
    while pending:
        await pending.pop(0)


async def miss_and_store(
    shared: Shared, pending: list[Any], prompt: str, text: str
) -> ChatCompletionsProcessor:
    """Run one full miss through a chat processor and let its store finish."""
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body(prompt), True)
    p.on_response_headers(headers([(":status", "200"), ("content-type", "application/json")]), False)
    p.on_response_body(completion(text), True)
    await run_spawned(pending)
    return p


# --- the registry ---------------------------------------------------------------------------


def test_registry_picks_the_chat_processor_by_path() -> None:
    assert processor_for("/v1/chat/completions") is ChatCompletionsProcessor
    assert processor_for("/v1/chat/completions?api-version=1") is ChatCompletionsProcessor
    assert processor_for("/v1/completions") is CompletionsProcessor
    assert processor_for("/v1/responses") is ResponsesProcessor
    assert processor_for("/v1/embeddings") is PassThroughProcessor
    assert processor_for("/healthz") is PassThroughProcessor


def test_open_processor_reads_the_first_message() -> None:
    shared, _, _ = make_shared()
    assert isinstance(open_processor(first_message(CHAT), shared), ChatCompletionsProcessor)
    legacy = [(":method", "POST"), (":path", "/v1/completions")]
    assert isinstance(open_processor(first_message(legacy), shared), CompletionsProcessor)
    other = [(":method", "POST"), (":path", "/v1/embeddings")]
    assert isinstance(open_processor(first_message(other), shared), PassThroughProcessor)
    body_first = ProcessingRequest(request_body=HttpBody(body=b"{}", end_of_stream=True))
    assert isinstance(open_processor(body_first, shared), PassThroughProcessor)


async def test_pass_through_skips_the_stream_and_reports_once() -> None:
    shared, decisions, _ = make_shared()
    p = open_processor(first_message([(":method", "GET"), (":path", "/v1/models")]), shared)
    reply = await p.handle(first_message([(":method", "GET"), (":path", "/v1/models")]))
    assert reply.mode_override == m.SKIP_ALL
    p.on_stream_closed()
    assert [(d.outcome, d.reason) for d in decisions] == [("bypass", "not_chat")]


# --- one test per phase of the chat processor ---------------------------------------------


def test_request_headers_phase() -> None:
    """Ours: accept-encoding (only if sent) is removed so the answer can be stored; not POST: pass."""
    shared, decisions, _ = make_shared()
    reply = ChatCompletionsProcessor(shared).on_request_headers(
        headers([*CHAT, ("accept-encoding", "br")]), False
    )
    assert reply.request_headers.response.header_mutation.remove_headers == ["accept-encoding"]
    assert reply.mode_override is None
    reply = ChatCompletionsProcessor(shared).on_request_headers(headers(CHAT), False)
    assert reply.request_headers.response.header_mutation is None  # nothing to remove: no mutation
    get = [(":method", "GET"), (":path", "/v1/chat/completions")]
    reply = ChatCompletionsProcessor(shared).on_request_headers(headers(get), False)
    assert reply.mode_override == m.SKIP_ALL
    assert decisions[-1].reason == "not_chat"


def test_a_body_declared_too_large_is_let_through_at_the_headers() -> None:
    """Envoy then never buffers it in part (one just over its buffer sometimes stalled there)."""
    shared, decisions, _ = make_shared()
    limit = CacheSettings().max_request_bytes
    for length, passes in ((limit + 1, True), (limit, False), ("12abc", False)):
        p = ChatCompletionsProcessor(shared)
        reply = p.on_request_headers(headers([*CHAT, ("content-length", str(length))]), False)
        assert (reply.mode_override == m.HEADERS_ONLY) == passes, length
        if passes:
            p.on_stream_closed()
            assert (decisions[-1].outcome, decisions[-1].reason) == ("bypass", "request_too_large")


async def test_a_body_bigger_than_envoys_buffer_ends_the_stream() -> None:
    """Envoy hands over its first part (end_of_stream false): passed on, and the processor wants
    nothing more of the stream (Envoy 1.40 sometimes lost the end of such a body otherwise)."""
    shared, decisions, _ = make_shared()
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    reply = await p.on_request_body(chat_body("what is the capital of france")[:20], False)
    assert reply.request_body is not None and p.finished
    p.on_stream_closed()
    assert (decisions[-1].outcome, decisions[-1].reason) == ("bypass", "request_too_large")
    whole = ChatCompletionsProcessor(shared)
    whole.on_request_headers(headers(CHAT), False)
    await whole.on_request_body(chat_body("what is the capital of france"), True)
    assert not whole.finished


async def test_request_body_phase_miss_then_hit() -> None:
    """A miss continues upstream; the same prompt after a store is answered at once."""
    shared, decisions, pending = make_shared()
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    reply = await p.on_request_body(chat_body("what is the capital of france"), True)
    _, kind = betterproto2.which_one_of(reply, "response")
    assert kind is not None and reply.request_body is not None
    assert p.decision.outcome == "miss"
    await run_spawned(pending)
    await miss_and_store(shared, pending, "capital of spain?", "Madrid")
    hit = ChatCompletionsProcessor(shared)
    hit.on_request_headers(headers(CHAT), False)
    reply = await hit.on_request_body(chat_body("capital of spain?"), True)
    assert reply.immediate_response is not None
    assert json.loads(reply.immediate_response.body)["choices"][0]["message"]["content"] == "Madrid"
    marks = {h.header.key: h.header.raw_value for h in reply.immediate_response.headers.set_headers}
    assert marks[HEADER] == b"hit" and marks[f"{HEADER}-match"] == b"exact"
    assert decisions[-1].outcome == "hit"


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/chat/completions", {"echo": True}),
        ("/v1/chat/completions", {"prompt_logprobs": 0}),
        ("/v1/completions", {"echo": True}),
        ("/v1/completions", {"prompt_logprobs": 1}),
    ],
)
async def test_answers_that_quote_their_prompt_hit_only_on_exact_repeats(
    path: str, extra: dict[str, Any]
) -> None:
    """An echoed answer (or the prompt's logprobs) describes its own prompt: a paraphrase served
    from it would quote another user's words."""
    shared, _, pending = make_shared()
    chat = path == "/v1/chat/completions"

    def body(prompt: str) -> bytes:
        fields = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
        return json.dumps({"model": "m", **fields, **extra}).encode()

    stored = completion("v:1,0 -> an answer")
    if not chat:
        stored = json.dumps(
            {
                "id": "x",
                "object": "text_completion",
                "model": "m",
                "choices": [
                    {"index": 0, "text": "v:1,0 -> an answer", "logprobs": None, "finish_reason": "stop"}
                ],
            }
        ).encode()
    route = [(":method", "POST"), (":path", path), ("content-type", "application/json")]
    first = processor_for(path)(shared)
    first.on_request_headers(headers(route), False)
    await first.on_request_body(body("v:1,0"), True)
    first.on_response_headers(headers([(":status", "200"), ("content-type", "application/json")]), False)
    first.on_response_body(stored, True)
    await run_spawned(pending)
    paraphrase = processor_for(path)(shared)
    paraphrase.on_request_headers(headers(route), False)
    assert (await paraphrase.on_request_body(body("v:1,0.01"), True)).immediate_response is None
    assert paraphrase.decision.outcome == "miss" and paraphrase.decision.best_similarity > 0.99
    repeat = processor_for(path)(shared)
    repeat.on_request_headers(headers(route), False)
    assert (await repeat.on_request_body(body("v:1,0"), True)).immediate_response is not None


async def test_response_headers_phase() -> None:
    """A non-2xx answer is marked and not streamed back to us (it will not be stored)."""
    shared, decisions, _ = make_shared()
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("hello there"), True)
    reply = p.on_response_headers(headers([(":status", "503")]), False)
    marks = {
        h.header.key: h.header.raw_value for h in reply.response_headers.response.header_mutation.set_headers
    }
    assert marks[HEADER] == b"miss"
    assert reply.mode_override == m.NO_RESPONSE_BODY
    assert decisions[-1].store == "non_2xx"


async def test_response_body_phase() -> None:
    """Each chunk passes on at once; the whole answer is stored when the stream ends."""
    shared, decisions, pending = make_shared()
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("tell me a joke"), True)
    p.on_response_headers(headers([(":status", "200"), ("content-type", "application/json")]), False)
    body = completion("a joke")
    first = p.on_response_body(body[:10], False)
    assert first.response_body is not None and not pending
    p.on_response_body(body[10:], True)
    assert len(pending) == 1
    await pending.pop()
    assert decisions[-1].store == "stored"
    assert p._query is not None
    stored = await shared.cache.backend.get_exact(p._query.exact_key, time.time())
    assert stored is not None and stored.response["choices"][0]["message"]["content"] == "a joke"


async def test_stream_closed_before_the_answer_completed() -> None:
    """An aborted response is never stored, and the decision is still reported once."""
    shared, decisions, pending = make_shared()
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers(CHAT), False)
    await p.on_request_body(chat_body("a long answer please"), True)
    p.on_response_headers(headers([(":status", "200"), ("content-type", "application/json")]), False)
    p.on_response_body(b'{"choices": [', False)
    p.on_stream_closed()
    p.on_stream_closed()
    assert not pending
    assert [(d.outcome, d.store) for d in decisions] == [("miss", "stream_aborted")]


async def test_a_hit_carries_its_confidence_to_the_header_decision_span_and_metric() -> None:
    from extproc.observability.metrics import Metrics
    from extproc.observability.tracing import span_attributes

    shared, decisions, pending = make_shared()

    class Sure:
        async def score(self, query: str, candidate: str, similarity: float, **vectors: object) -> float:
            return 0.97314

    shared.cache.scorer = Sure()
    await miss_and_store(shared, pending, "v:1,0", "stored")
    hit = ChatCompletionsProcessor(shared)
    hit.on_request_headers(headers(CHAT), False)
    reply = await hit.on_request_body(chat_body("v:1,0.1"), True)
    assert reply.immediate_response is not None
    marks = {h.header.key: h.header.raw_value for h in reply.immediate_response.headers.set_headers}
    assert marks[f"{HEADER}-match"] == b"semantic" and marks[f"{HEADER}-confidence"] == b"0.9731"
    decision = decisions[-1]
    assert decision.outcome == "hit" and decision.confidence == pytest.approx(0.97314)
    assert span_attributes(decision, "memory", 0.9)["semantic_cache.confidence"] == 0.9731
    metrics = Metrics()
    metrics.observe(decision, "memory")
    assert metrics.registry.get_sample_value("semantic_cache_hit_confidence_count") == 1.0
    assert metrics.registry.get_sample_value("semantic_cache_hit_confidence_sum") == pytest.approx(0.97314)


async def test_a_policy_bound_explores_where_the_defaults_serve() -> None:
    """``max_false_hit_rate`` in a policy: that model's semantic candidates need evidence first
    (explored: the request goes upstream); without the policy the same candidate is served."""
    from extproc.config.policies import Policy
    from extproc.dataplane.verification import Verification

    strict = Policy("strict", model="m", overrides=(("max_false_hit_rate", 0.02),))
    shared, decisions, pending = make_shared(policies=(strict,))
    shared.verification = Verification(
        lambda: shared.settings.verification, shared.cache, pending.append, rng=lambda: 1.0
    )
    await miss_and_store(shared, pending, "v:1,0", "stored")
    explored = ChatCompletionsProcessor(shared)
    explored.on_request_headers(headers(CHAT), False)
    reply = await explored.on_request_body(chat_body("v:1,0.1"), True)
    assert reply.immediate_response is None
    assert decisions[-1].policy == "strict" and "bound" in explored.decision.rejected_by
    shared.settings = CacheSettings(max_added_latency_ms=0)  # a live change: the policy is gone
    served = ChatCompletionsProcessor(shared)
    served.on_request_headers(headers(CHAT), False)
    assert (await served.on_request_body(chat_body("v:1,0.1"), True)).immediate_response is not None
