"""A Verification over the toy cache and a local upstream that answers with a set text."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from extproc.cache import MemoryBackend, SemanticCache
from extproc.cache.schema import CacheEntry
from extproc.config.verification import VerificationSettings
from extproc.dataplane.verification import Shadow, Verification
from extproc.embedding.batcher import Embedder
from extproc.protocol.openai import parse_json_completion
from tests.support.toy import DIM, answer, query, toy_encode

P, Q = "v:1,0,0", "v:1,0.05,0"
"""A prompt and its look-alike (cosine 0.999 under the toy embedding)."""
P_KEY = query(P).exact_key


class Upstream:
    """An LLM server on a free local port that answers every request with ``text``."""

    def __init__(self) -> None:
        self.text = "v:0,1"
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.redirect = ""
        """When set, every request is answered 307 to this URL."""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.redirect:
            return web.Response(status=307, headers={"location": self.redirect})
        choice = {"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": "stop"}
        completion = {"choices": [choice]}
        return web.json_response(completion | {"object": "chat.completion", "model": "m"})


class Harness:
    """A Verification over the memory backend whose background work runs as tasks."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
        values = VerificationSettings(
            **({"upstream_url": url, "sample_rate": 1.0, "entry_secret": "s"} | settings)
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.v = Verification(lambda: values, self.cache, self.spawn)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run background work as a task (awaited by :meth:`drain`)."""
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def drain(self) -> None:
        """Wait for every background task."""
        while self.tasks:
            await self.tasks.pop(0)

    async def store(self, prompt: str, text: str) -> CacheEntry:
        """Store ``text`` as the answer to ``prompt``; a later store gets a later creation time."""
        await asyncio.sleep(0.003)  # ids and versions are to the millisecond
        return await self.cache.store(query(prompt), answer(text))

    def shadow(
        self,
        hit: CacheEntry,
        prompt: str = Q,
        headers: dict[str, str] | None = None,
        max_bytes: int = 4 * 1024 * 1024,
        **body: Any,
    ) -> Shadow:
        """The shadow job of ``prompt`` served ``hit`` (a semantic hit), sent with ``headers``."""
        raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], **body}).encode()
        path = "/v1/chat/completions"
        return Shadow(
            path,
            headers or {},
            raw,
            "",
            parse_json_completion,
            1,
            query(prompt),
            hit,
            0.995,
            0.995,
            60,
            max_bytes=max_bytes,
        )


@asynccontextmanager
async def serve_upstream(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Upstream, str]]:
    """An :class:`Upstream` on a free loopback port (https with ``tls``), and its base URL."""
    state = Upstream()
    app = web.Application()
    app.router.add_post("/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
