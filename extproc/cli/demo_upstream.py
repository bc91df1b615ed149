"""A small OpenAI-compatible demo upstream for ``semantic-cache run`` without ``UPSTREAM_URL``.

It answers any model name with a canned completion after a short delay (so cache hits are
visibly faster), and supports ``stream: true``.  It is not a language model.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

_counter = itertools.count(1)


def canned_completion(model: str, prompt: str) -> dict[str, Any]:
    """A complete ``chat.completion`` answering ``prompt``."""
    n = next(_counter)
    text = (
        f"Demo answer #{n}. You asked: {prompt[:200]!r}. This reply comes from the built-in demo "
        "upstream; set UPSTREAM_URL to your vLLM or OpenAI-compatible server for real answers."
    )
    return {
        "id": f"chatcmpl-demo-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(text.split()),
            "total_tokens": len(prompt.split()) + len(text.split()),
        },
    }


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def make_app(delay_s: float = 0.3) -> web.Application:
    """The demo server's aiohttp application."""

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}, status=400
            )
        if not isinstance(body, dict):
            return web.json_response(
                {"error": {"message": "body must be an object", "type": "invalid_request_error"}}, status=400
            )
        await asyncio.sleep(delay_s)
        completion = canned_completion(str(body.get("model", "demo")), _last_user_text(body))
        if body.get("stream") is not True:
            return web.json_response(completion)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
        words = completion["choices"][0]["message"]["content"].split(" ")
        deltas = [{"role": "assistant", "content": ""}] + [
            {"content": (" " if i else "") + w} for i, w in enumerate(words)
        ]
        for delta in deltas:
            chunk = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        last = base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(b"data: " + json.dumps(last).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(
                b"data: "
                + json.dumps(base | {"choices": [], "usage": completion["usage"]}).encode()
                + b"\n\n"
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "demo", "object": "model", "owned_by": "demo"}]}
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


async def start_demo_upstream(
    host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.3
) -> tuple[web.AppRunner, int]:
    """Start the demo upstream; return its runner (``await runner.cleanup()`` stops it) and port."""
    runner = web.AppRunner(make_app(delay_s), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
    return runner, int(bound)
