"""Milvus killed under load through the real Envoy: no client errors, then recovery by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.cache.backends.milvus.backend import MilvusBackend
from tests.conftest import MilvusServer, StackFactory, milvus_yaml

pytestmark = pytest.mark.integration


def chat(prompt: str) -> dict[str, Any]:
    """A chat request."""
    return {"model": "fault-test", "messages": [{"role": "user", "content": prompt}]}


async def test_milvus_killed_mid_traffic_then_recovers(make_stack: StackFactory, tmp_path: Path) -> None:
    # A server of its own (the tests' servers run side by side, tests/support/milvus_launcher.py):
    # killing the session's server would leave every other stack reconnecting, and its restart
    # would load every collection the session made. Its data must survive the kill.
    (tmp_path / "milvus").mkdir()
    server = MilvusServer(tmp_path / "milvus")
    server.start()
    try:
        cfg = milvus_yaml(
            tmp_path / "m.yaml", server.uri, "fault_cache", search={"consistency_level": "Session"}
        )
        stack = await make_stack(backend_type="milvus", backend_config_path=str(cfg))
        backend = stack.server.shared.cache.backend
        assert isinstance(backend, MilvusBackend)
        stored = [
            "Why do volcanoes erupt?",
            "How do I bake sourdough bread?",
            "What is the speed of light in a vacuum?",
            "Who wrote the novel Moby-Dick?",
            "How many bones are in the human body?",
        ]
        for prompt in stored:
            assert (await stack.chat(chat(prompt))).headers["x-semantic-cache"] == "miss"
        await stack.settle()
        for prompt in stored:
            assert (await stack.chat(chat(prompt))).headers["x-semantic-cache"] == "hit"

        outcomes: list[tuple[float, int, str]] = []
        errors: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            async with httpx.AsyncClient(base_url=stack.envoy.url, timeout=30) as client:
                while not stop.is_set() and i < 2000:  # bounded
                    prompt = stored[i % len(stored)] if i % 2 else f"Question {i}: what is {i} times {i + 7}?"
                    try:
                        r = await client.post("/v1/chat/completions", json=chat(prompt))
                        outcomes.append(
                            (time.monotonic(), r.status_code, r.headers.get("x-semantic-cache", ""))
                        )
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                    i += 1
                    await asyncio.sleep(0.02)

        task = asyncio.create_task(load())
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        server.stop()  # SIGKILL, like a crashed pod
        await asyncio.sleep(4.0)
        assert backend.breaker.opened >= 1
        assert backend.status()[0] != "ready"
        during = [o for o in outcomes if o[0] > killed_at + 1.5]
        assert during and all(o[2] == "bypass" for o in during), during[-5:]

        server.start()
        restarted_at = time.monotonic()
        recovered = None
        while time.monotonic() - restarted_at < 120:
            hits = [o for o in outcomes if o[0] > restarted_at and o[2] == "hit"]
            if hits:
                recovered = hits[0][0] - restarted_at
                break
            await asyncio.sleep(0.2)
        stop.set()
        await task
        assert recovered is not None, "hits did not resume after Milvus restarted"
        assert errors == []
        assert len(outcomes) > 100
        for prompt in stored:  # nothing stored before the crash was lost
            assert (await stack.chat(chat(prompt))).headers["x-semantic-cache"] == "hit"
    finally:
        server.stop()
