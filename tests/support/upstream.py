"""A small OpenAI-compatible upstream for tests: counts calls and misbehaves on request.

The ``x-test-mode`` request header picks the behaviour: ``ok`` (default), ``error`` (HTTP 500),
``length`` (finish_reason length), ``content_filter``, ``abort`` (the stream or body is cut
mid-way), ``slow`` (waits ``x-test-delay-ms``), ``gzip`` (gzip-encoded JSON body),
``n2-partial`` (two choices, one truncated), ``slow-error`` (waits, then HTTP 500),
``malformed`` (a JSON answer whose ``finish_reason`` is a list), ``dated`` (the answer names
today's date), ``topic`` (waits ``x-test-delay-ms`` if given; the answer depends on meaning only:
TOPICS' answer for the first topic word of the last user message, so look-alike prompts about
other things get other answers), ``sse-error-event`` (a stream
with an ``event: error`` mid-way whose payload has no ``error`` key, then ``finish_reason: stop``
and ``[DONE]``).

``x-test-fixture: NAME`` answers with the vLLM shape tests/data/vllm/NAME.json instead: its
``json`` body, or its ``stream`` written chunk by chunk as vLLM writes it (the usage chunk only
with ``stream_options.include_usage``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.vllm import FIXTURES, stream_body


@dataclass
class Seen:
    """One request the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    """State shared by the handlers; tests read ``calls`` and ``seen``."""

    calls: int = 0
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def chat_calls(self, model: str, path: str = "/v1/chat/completions") -> int:
        """How many requests for ``model`` to ``path`` (chat by default) reached the upstream."""
        n = 0
        for s in self.seen:
            if s.path == path:
                try:
                    data = json.loads(s.body)
                except (ValueError, RecursionError):
                    continue
                if isinstance(data, dict) and data.get("model") == model:
                    n += 1
        return n


TOPICS = {
    "password": "Open Settings, choose Security, and follow the reset link we send to your email address.",
    "router": "Unplug the router for thirty seconds, then hold its reset button until the lights blink.",
    "passport": "Book an appointment at the passport office and bring two photographs and your old passport.",
    "pasta": "Boil salted water, cook the pasta for nine minutes, drain it and toss it with the sauce.",
}
"""Topic word -> the answer of ``x-test-mode: topic``: what a question is about, not its wording."""


def topic_answer(body: dict[str, Any]) -> str:
    """The ``topic`` mode's answer to a chat request: TOPICS' entry for its last user message."""
    messages = [m for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    text = str(messages[-1].get("content", "")).lower() if messages else ""
    topic = next((t for t in TOPICS if t in text), "")
    return TOPICS.get(topic, "Sorry, I know nothing about that subject at all.")


def _completion(model: str, text: str, finish: str = "stop", choices: int = 1) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for i in range(choices)
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


def make_app(state: FakeUpstream) -> web.Application:
    """The aiohttp app of the fake upstream."""

    async def chat(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        state.calls += 1
        state.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        n = state.calls
        mode = request.headers.get("x-test-mode", "ok")
        if mode == "reset":  # connection reset before any response byte
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if mode in ("slow", "slow-error") or (mode == "topic" and "x-test-delay-ms" in request.headers):
            await asyncio.sleep(int(request.headers.get("x-test-delay-ms", "500")) / 1000)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError, OSError, EOFError):
            return web.json_response({"error": {"message": "bad json"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "not an object"}}, status=400)
        fixture = request.headers.get("x-test-fixture")
        if fixture:
            return await _fixture(request, FIXTURES[fixture], body)
        model = str(body.get("model", "m"))
        text = f"answer #{n} from upstream"
        if mode == "topic":
            text = topic_answer(body)
        if mode == "dated":
            text = f"As of {time.strftime('%Y-%m-%d', time.gmtime())}, {text}"
        if mode in ("error", "slow-error"):
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        finish = {"length": "length", "content_filter": "content_filter"}.get(mode, "stop")
        completion = _completion(model, text, finish, choices=2 if mode == "n2-partial" else 1)
        if mode == "n2-partial":
            completion["choices"][1]["finish_reason"] = "length"
        if mode == "malformed":
            completion["choices"][0]["finish_reason"] = []
        if body.get("stream") is True:
            return await _stream(request, completion, mode, body)
        payload = json.dumps(completion).encode()
        if mode == "gzip":
            return web.Response(
                body=gzip.compress(payload),
                headers={"content-type": "application/json", "content-encoding": "gzip"},
            )
        if mode == "abort":
            response = web.StreamResponse(
                headers={"content-type": "application/json", "content-length": str(len(payload))}
            )
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            request.transport.close()
            return response
        return web.Response(body=payload, content_type="application/json")

    async def _fixture(request: web.Request, doc: dict[str, Any], body: dict[str, Any]) -> web.StreamResponse:
        if body.get("stream") is not True:
            payload = json.dumps(doc["json"], ensure_ascii=False, separators=(",", ":")).encode()
            return web.Response(body=payload, content_type="application/json")
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in stream_body(doc["stream"], include_usage).split(b"\n\n")[:-1]:
            await response.write(event + b"\n\n")  # one write per event, as vLLM sends them
        await response.write_eof()
        return response

    async def _stream(
        request: web.Request, completion: dict[str, Any], mode: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
        }
        words = completion["choices"][0]["message"]["content"].split(" ")

        async def send(obj: dict[str, Any]) -> None:
            await response.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            await asyncio.sleep(0.005)

        for choice in completion["choices"]:
            index = choice["index"]
            await send(
                base
                | {
                    "choices": [
                        {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    ]
                }
            )
            if mode == "sse-error-event":  # an error event without an "error" key, then a normal end
                await response.write(b'event: error\ndata: {"message":"upstream overloaded","code":503}\n\n')
            for i, word in enumerate(words):
                await send(
                    base
                    | {
                        "choices": [
                            {
                                "index": index,
                                "delta": {"content": (" " if i else "") + word},
                                "finish_reason": None,
                            }
                        ]
                    }
                )
                if mode == "abort" and i == 1:
                    request.transport.close()
                    return response
            await send(
                base | {"choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]}
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(base | {"choices": [], "usage": completion["usage"]})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def completions(request: web.Request) -> web.StreamResponse:
        """The legacy endpoint: a ``text_completion`` (JSON, or a stream of them)."""
        raw = await request.read()
        state.calls += 1
        state.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        body = json.loads(raw)
        text = f"completion #{state.calls} from upstream"
        base = {"id": "cmpl-upstream", "object": "text_completion", "created": int(time.time())}
        base["model"] = str(body.get("model", "m"))
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        if body.get("stream") is not True:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
            return web.json_response(base | {"choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        pieces = [(word + " ", None) for word in text.split(" ")] + [("", "stop")]
        for piece, finish in pieces:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
            await response.write(b"data: " + json.dumps(base | {"choices": [choice]}).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(
                b"data: " + json.dumps(base | {"choices": [], "usage": usage}).encode() + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def responses(request: web.Request) -> web.StreamResponse:
        """The Responses API: a completed ``response`` (JSON, or its event stream)."""
        raw = await request.read()
        state.calls += 1
        state.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        body = json.loads(raw)
        text = f"response #{state.calls} from upstream"
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"id": f"msg_{state.calls}", "type": "message", "status": "completed", "role": "assistant"}
        final = {
            "id": f"resp_{state.calls}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": str(body.get("model", "m")),
            "store": False,
            "output": [item | {"content": [part]}],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "usage": {
                "input_tokens": 3,
                "output_tokens": 4,
                "total_tokens": 7,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        if body.get("stream") is not True:
            return web.json_response(final)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        started = final | {"status": "in_progress", "output": [], "usage": None}
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        events = [
            {"type": "response.created", "response": started},
            {"type": "response.output_item.added", "output_index": 0, "item": item | {"content": []}},
            {"type": "response.content_part.added", **where, "part": part | {"text": ""}},
            *({"type": "response.output_text.delta", **where, "delta": w + " "} for w in text.split(" ")),
            {"type": "response.output_text.done", **where, "text": text},
            {"type": "response.content_part.done", **where, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": item | {"content": [part]}},
            {"type": "response.completed", "response": final},
        ]
        for seq, event in enumerate(events):
            data = json.dumps(event | {"sequence_number": seq})
            await response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())
        await response.write_eof()
        return response

    async def other(request: web.Request) -> web.Response:
        raw = await request.read()
        state.calls += 1
        state.seen.append(Seen(request.method, request.path, dict(request.headers), raw))
        return web.json_response({"echo_path": request.path, "echo_len": len(raw), "method": request.method})

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


async def start(state: FakeUpstream) -> web.AppRunner:
    """Start on a free loopback port (written to ``state.port``)."""
    # Headers as large as Envoy lets through (60 KiB), like a real LLM server behind it.
    limits: dict[str, Any] = {"max_field_size": 64 * 1024, "max_line_size": 64 * 1024}
    runner = web.AppRunner(make_app(state), access_log=None, **limits)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    state.port = site._server.sockets[0].getsockname()[1]
    return runner
