"""A real OpenAI-compatible embeddings server for tests: ``POST /v1/embeddings`` over an encode function.

Serves whatever model it is given (the bundled MiniLM in the integration tests). Faults are
injected on request: ``fail_next`` answers that many requests with HTTP 503, ``delay`` holds
each answer, ``max_chars`` refuses (HTTP 400, as vLLM past its context) a request with a longer
input, ``mangle`` rewrites the answer's rows, ``trickle`` sends the answer a byte at a time with
that many seconds between bytes; ``keepalive`` closes idle connections after that many
seconds; ``api_key`` set means a missing or wrong bearer token gets 401.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from extproc.embedding.base import EncodeFn


@dataclass
class EmbedServer:
    """State of one server: what it serves and what it saw."""

    encode: EncodeFn
    api_key: str = ""
    fail_next: int = 0
    delay: float = 0.0
    max_chars: int = 0
    mangle: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    trickle: float = 0.0
    keepalive: float = 75.0
    """Seconds an idle kept-alive connection stays open (uvicorn, vLLM's server: 5)."""
    batches: list[int] = field(default_factory=list)
    """Inputs per request answered."""
    models: list[str] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The embeddings URL."""
        return f"http://127.0.0.1:{self.port}/v1/embeddings"

    async def handle(self, request: web.Request) -> web.Response:
        """One embeddings request."""
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad api key"}}, status=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if self.delay:
            await asyncio.sleep(self.delay)
        body: dict[str, Any] = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if self.max_chars and any(len(t) > self.max_chars for t in texts):
            return web.json_response({"error": {"message": "input past the context"}}, status=400)
        vectors = await asyncio.to_thread(self.encode, texts)
        self.batches.append(len(texts))
        self.models.append(str(body.get("model")))
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        data.reverse()  # servers may answer out of order: the index says which is which
        if self.mangle is not None:
            data = self.mangle(data)
        answer = {"object": "list", "data": data, "model": body.get("model")}
        if not self.trickle:
            return web.json_response(answer)
        payload = json.dumps(answer).encode()
        response = web.StreamResponse(headers={"content-type": "application/json"})
        response.content_length = len(payload)
        await response.prepare(request)
        for i in range(len(payload)):
            await response.write(payload[i : i + 1])
            await asyncio.sleep(self.trickle)
        return response

    async def start(self) -> EmbedServer:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.keepalive)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()
