"""A real OpenAI-compatible embeddings server for tests: ``POST /v1/embeddings`` over an encode function.

Serves whatever model it is given (the bundled MiniLM in the integration tests). Faults are
injected on request: ``fail_next`` answers that many requests with HTTP 503, ``delay`` holds
each answer; ``api_key`` set means a missing or wrong bearer token gets 401.
"""

from __future__ import annotations

import asyncio
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
        vectors = await asyncio.to_thread(self.encode, texts)
        self.batches.append(len(texts))
        self.models.append(str(body.get("model")))
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        data.reverse()  # servers may answer out of order: the index says which is which
        return web.json_response({"object": "list", "data": data, "model": body.get("model")})

    async def start(self) -> EmbedServer:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
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
