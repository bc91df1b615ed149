"""What disabled tracing costs a cache hit: the processor's hit path with the OpenTelemetry no-op
tracer, against the same path with every tracing call replaced by a bare stub.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import numpy as np
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue
from envoy_data_plane.envoy.service.ext_proc.v3 import HttpBody, HttpHeaders, ProcessingRequest

from extproc.cache import MemoryBackend, SemanticCache
from extproc.cache import semantic as semantic_module
from extproc.config.settings import CacheSettings
from extproc.dataplane.processors import base as processor_base
from extproc.dataplane.processors import chat as processor_chat
from extproc.dataplane.processors.chat import ChatCompletionsProcessor
from extproc.dataplane.shared import Shared
from extproc.embedding.base import EncodeFn
from extproc.embedding.batcher import Embedder

from .workload import chat_body


class _NullSpan:
    def set_attribute(self, *_: Any) -> None:
        pass

    def set_attributes(self, *_: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False

    def end(self) -> None:
        pass


_SPAN = _NullSpan()


class _NullTracer:
    def start_span(self, *_: Any, **__: Any) -> _NullSpan:
        return _SPAN

    @contextlib.contextmanager
    def start_as_current_span(self, *_: Any, **__: Any) -> Iterator[_NullSpan]:
        yield _SPAN


class _NullTrace:
    @staticmethod
    @contextlib.contextmanager
    def use_span(*_: Any, **__: Any) -> Iterator[None]:
        yield


def _messages(model: str, prompt: str) -> tuple[ProcessingRequest, ProcessingRequest]:
    headers = [(":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")]
    head = ProcessingRequest(
        request_headers=HttpHeaders(
            headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]),
            end_of_stream=False,
        )
    )
    body = ProcessingRequest(request_body=HttpBody(body=chat_body(model, prompt), end_of_stream=True))
    return head, body


async def _per_request_us(
    shared: Shared, messages: list[tuple[ProcessingRequest, ProcessingRequest]]
) -> float:
    started = time.perf_counter()
    for head, body in messages:
        p = ChatCompletionsProcessor(shared, ())
        await p.handle(head)
        reply = await p.handle(body)
        assert reply.immediate_response is not None, "expected a hit"
    return (time.perf_counter() - started) / len(messages) * 1e6


async def _measure(
    encode: EncodeFn, dim: int, stored: str, query: str, rounds: int, n: int
) -> dict[str, Any]:
    # The model's time is not what is measured here and its noise would swamp the spans' cost:
    # the two prompts' embeddings are computed once and served from memory.
    known = dict(zip((stored, query), encode([stored, query]), strict=True))

    def remembered(texts: Sequence[str]) -> np.ndarray:
        return np.stack([known[t] for t in texts])

    settings = CacheSettings()
    cache = SemanticCache(MemoryBackend(dim), Embedder(remembered, dim), settings.similarity_threshold)
    shared = Shared(settings=settings, cache=cache, spawn=lambda c: None)
    head, body = _messages("trace-bench", stored)
    p = ChatCompletionsProcessor(shared, ())
    await p.handle(head)
    await p.handle(body)  # a miss: remember the query, then store an answer for it
    assert p._query is not None
    await cache.store(p._query, {"object": "chat.completion", "choices": []})
    out: dict[str, Any] = {}
    for kind, prompt in (("exact", stored), ("semantic", query)):
        msgs = [_messages("trace-bench", prompt)] * n
        noop, stub = [], []
        for i in range(rounds):
            if i % 2:  # alternate the order, so warm-up and drift favour neither
                noop.append(await _per_request_us(shared, msgs))
            with (
                mock.patch.object(processor_base, "tracer", _NullTracer()),
                mock.patch.object(processor_chat, "trace", _NullTrace()),
                mock.patch.object(processor_base, "parent_context", lambda *_: None),
                mock.patch.object(semantic_module, "tracer", _NullTracer()),
            ):
                stub.append(await _per_request_us(shared, msgs))
            if not i % 2:
                noop.append(await _per_request_us(shared, msgs))
        a, b = statistics.median(noop), statistics.median(stub)
        out[kind] = {"noop_tracer_us": round(a, 1), "no_tracing_us": round(b, 1), "cost_us": round(a - b, 1)}
    cache.embedder.close()
    return out


async def tracing_cost(encode: EncodeFn, dim: int, rounds: int = 7, n: int = 2000) -> dict[str, Any]:
    """Per-request µs of the in-process hit path with the no-op tracer vs with no tracing calls."""
    stored, paraphrase = "What is the capital of France?", "What's the capital city of France?"
    return await _measure(encode, dim, stored, paraphrase, rounds, n)
