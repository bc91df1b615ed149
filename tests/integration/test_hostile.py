"""Hostile and odd input: never a crash, always a well-formed ext_proc reply or a clean pass-through."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from typing import Any

import betterproto2
import httpx
import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.cache import MemoryBackend, SemanticCache
from extproc.config.settings import CacheSettings
from extproc.dataplane.processors.chat import ChatCompletionsProcessor
from extproc.dataplane.shared import Shared
from extproc.embedding.batcher import Embedder
from tests.conftest import Stack
from tests.support.toy import DIM, toy_encode

EXPECTED_REPLY = {
    "request_headers": {"request_headers"},
    "request_body": {"request_body", "immediate_response"},
    "response_headers": {"response_headers"},
    "response_body": {"response_body"},
}


def headers_msg(pairs: list[tuple[str, bytes]], eos: bool = False) -> HttpHeaders:
    """Envoy-style headers (values in raw_value)."""
    return HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v) for k, v in pairs]), end_of_stream=eos
    )


def make_shared(**overrides: Any) -> Shared:
    """A Shared over the memory backend and a toy embedding, collecting background work."""
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
    pending: list[Any] = []
    return Shared(settings=CacheSettings(**overrides), cache=cache, spawn=pending.append)


async def drive(shared: Shared, phases: list[ProcessingRequest]) -> None:
    """Feed messages to one chat processor; each reply must be well formed and serializable."""
    processor = ChatCompletionsProcessor(shared)
    for message in phases:
        # what Envoy would send goes over the wire first
        message = ProcessingRequest.FromString(message.SerializeToString())
        phase, _ = betterproto2.which_one_of(message, "request")
        reply = await processor.handle(message)
        assert isinstance(reply, ProcessingResponse)
        got, _ = betterproto2.which_one_of(reply, "response")
        assert got in EXPECTED_REPLY[phase], (phase, got)
        ProcessingResponse.FromString(reply.SerializeToString())
        if got == "immediate_response":
            break
    processor.on_stream_closed()
    for coro in list(getattr(shared.spawn, "__self__", [])):  # stores spawned by the processor
        await coro


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])},
        optional={"content": json_values, "name": st.text(max_size=5)},
    ),
    max_size=4,
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda m, msgs, extra: json.dumps({"model": m, "messages": msgs, **extra}).encode(),
        st.one_of(st.text(max_size=20), st.integers()),
        messages,
        st.dictionaries(st.sampled_from(["stream", "n", "temperature", "tools"]), json_values, max_size=3),
    ),
)
header_values = st.binary(max_size=40)
header_lists = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "cache-control",
                "x-tenant-id",
                "authorization",
                "content-encoding",
                "x-custom",
                "content-type",
                "traceparent",
            ]
        ),
        header_values,
    ),
    max_size=5,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from([b"POST", b"GET", b"PUT", b""]),
    path=st.sampled_from(
        [b"/v1/chat/completions", b"/v1/chat/completions?x=1", b"/v1/embeddings", b"", b"/\xff"]
    ),
    extra=header_lists,
    body=bodies,
    body_eos=st.booleans(),
    status=st.sampled_from([b"200", b"500", b"abc", b""]),
    chunks=st.lists(st.binary(max_size=200), max_size=3),
    scope_mode=st.sampled_from(["global", "header", "authorization"]),
)
async def test_random_requests_never_break_the_processor(
    method: bytes,
    path: bytes,
    extra: list[tuple[str, bytes]],
    body: bytes,
    body_eos: bool,
    status: bytes,
    chunks: list[bytes],
    scope_mode: str,
) -> None:
    shared = make_shared(scope_mode=scope_mode)
    phases = [
        ProcessingRequest(request_headers=headers_msg([(":method", method), (":path", path), *extra])),
        ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=body_eos)),
        ProcessingRequest(
            response_headers=headers_msg([(":status", status), ("content-type", b"text/event-stream")])
        ),
        *[ProcessingRequest(response_body=HttpBody(body=c, end_of_stream=False)) for c in chunks],
        ProcessingRequest(response_body=HttpBody(body=b"", end_of_stream=True)),
    ]
    await drive(shared, phases)


HOSTILE: list[tuple[str, bytes, dict[str, str]]] = [
    ("malformed json", b'{"model": "x", "messages": [', {}),
    ("not an object", b'"just a string"', {}),
    ("messages wrong type", b'{"model": "x", "messages": {"role": "user"}}', {}),
    ("empty messages", b'{"model": "x", "messages": []}', {}),
    (
        "deep nesting",
        b'{"model": "x", "messages": [{"role": "user", "content": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        {},
    ),
    ("invalid utf-8", b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe"}]}', {}),
    ("lone surrogate", b'{"model": "x", "messages": [{"role": "user", "content": "\\ud800 hi"}]}', {}),
    (
        "image part",
        json.dumps(
            {
                "model": "x",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                        ],
                    }
                ],
            }
        ).encode(),
        {},
    ),
    (
        "tool message last",
        json.dumps(
            {
                "model": "x",
                "messages": [
                    {"role": "user", "content": "weather?"},
                    {"role": "tool", "content": "{}", "tool_call_id": "1"},
                ],
            }
        ).encode(),
        {},
    ),
    (
        "model of 10 kB",
        json.dumps({"model": "m" * 10_000, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        {},
    ),
    (
        "gzip body",
        gzip.compress(
            json.dumps({"model": "gz", "messages": [{"role": "user", "content": "zipped"}]}).encode()
        ),
        {"content-encoding": "gzip"},
    ),
    ("broken gzip", b"\x1f\x8bnot really gzip", {"content-encoding": "gzip"}),
]


@pytest.mark.integration
@pytest.mark.parametrize(("name", "raw", "headers"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_bodies_reach_the_upstream_unchanged(
    stack: Stack, name: str, raw: bytes, headers: dict[str, str]
) -> None:
    sent = {"content-type": "application/json", **headers}
    async with httpx.AsyncClient(timeout=30) as direct:  # what the upstream says without us
        expected = await direct.post(
            f"http://127.0.0.1:{stack.upstream.port}/v1/chat/completions", content=raw, headers=sent
        )
    expected_body = stack.upstream.seen[-1].body
    r = await stack.client.post("/v1/chat/completions", content=raw, headers=sent)
    assert r.status_code == expected.status_code  # the upstream's own answer
    assert r.headers["x-semantic-cache"] in ("bypass", "miss")
    assert stack.upstream.seen[-1].body == expected_body  # the body went through unchanged
    ok = await stack.chat(
        {"model": "after-hostile", "messages": [{"role": "user", "content": "still alive?"}]}
    )
    assert ok.status_code == 200 and "x-semantic-cache" in ok.headers


@pytest.mark.integration
async def test_duplicate_headers_and_huge_body(stack: Stack) -> None:
    body = {"model": "dup-headers", "messages": [{"role": "user", "content": "Duplicate header test"}]}
    r = await stack.client.post(
        "/v1/chat/completions",
        json=body,
        headers=httpx.Headers(
            [
                ("cache-control", "no-cache"),
                ("cache-control", "no-store"),
                ("x-custom", "1"),
                ("x-custom", "2"),
            ]
        ),
    )
    assert r.status_code == 200 and r.headers["x-semantic-cache"] == "bypass"  # joined: no-cache, no-store
    huge = json.dumps({"model": "huge", "messages": [{"role": "user", "content": "x" * 6_000_000}]}).encode()
    r = await stack.client.post(
        "/v1/chat/completions", content=huge, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200 and r.headers["x-semantic-cache"] == "bypass"
    assert stack.upstream.seen[-1].body == huge


def post_in_pieces(host: str, port: int, body: bytes, chunked: bool) -> bytes:
    """POST ``body`` to the chat path in 64 KiB writes (chunked or with its length); the reply."""
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {len(body)}"
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"{framing}\r\nconnection: close\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=20) as conn:
        conn.sendall(head.encode())
        for at in range(0, len(body), 65536):
            piece = body[at : at + 65536]
            conn.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
        if chunked:
            conn.sendall(b"0\r\n\r\n")
        reply = b""
        while data := conn.recv(65536):  # a stall ends in socket.timeout: the test fails
            reply += data
    return reply


@pytest.mark.integration
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_just_over_the_buffer_are_answered(stack: Stack, chunked: bool) -> None:
    """Bodies between Envoy's buffer (1 MiB) and about 1.5 MiB, written in 64 KiB pieces as curl
    writes them, pass through whole and at once.

    With a declared size, one in ten such requests used to stall until Envoy's idle timeout behind
    `semantic-cache run`'s demo upstream (not behind this test's): the unit test of the chat
    processor holds that fix (a declared size over the limit passes at the headers). Chunked, the
    size is unknown until the end and Envoy sends its buffered part to the processor; when the
    body's last chunk arrived while that call was out, Envoy 1.40 lost the end of the body and the
    request stalled (7 of 30 such requests behind `semantic-cache run`; without the fix this test
    failed in each of three runs): the processor now ends its stream at that reply."""
    host, port = "127.0.0.1", stack.envoy.port
    before = stack.server.metrics.registry.get_sample_value(
        "semantic_cache_bypass_total", {"reason": "request_too_large"}
    )
    rounds = 40
    for i in range(rounds):
        size = 1_075_000 + 25_000 * (i % 8)
        body = json.dumps({"model": "over", "messages": [{"role": "user", "content": "y" * size}]}).encode()
        # From a thread, as from another process: the processor's reply and the body's last
        # chunk then race as they do in production (in one event loop they never overlap).
        reply = await asyncio.to_thread(post_in_pieces, host, port, body, chunked)
        status, _, rest = reply.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 200"), (i, status)
        assert stack.upstream.seen[-1].body == body, i
        marked = b"x-semantic-cache-reason: request_too_large" in rest.lower()
        # Chunked, a body Envoy handed over in part leaves before the response: no header on it.
        assert marked or (chunked and b"x-semantic-cache" not in rest.lower()), i
    await stack.settle()
    after = stack.server.metrics.registry.get_sample_value(
        "semantic_cache_bypass_total", {"reason": "request_too_large"}
    )
    assert after - (before or 0.0) == rounds  # every one counted, with its header or without
