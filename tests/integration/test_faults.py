"""Faults: a slow or failing model, a misbehaving upstream, SIGTERM mid-stream, the processor
killed under load, and a bounded load test. The cache can fail; the answers cannot."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from extproc.app import build_server
from extproc.config.settings import CacheSettings, ServerSettings
from extproc.embedding.base import EncodeFn
from tests.conftest import MilvusServer, Stack, free_port, milvus_yaml, start_envoy
from tests.support import upstream as fake
from tests.support.processes import cli, serve_env, stop, wait_port

pytestmark = pytest.mark.integration


async def wait_backend_ready(mgmt_port: int, timeout: float = 90) -> None:
    """Poll the processor's /readyz until its backend serves."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{mgmt_port}/readyz")).json()[
                    "backend_state"
                ] == "ready":
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the processor's backend never became ready")


def chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A chat request."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


class FaultyModel:
    """The real model with an injected delay or exception (the fault under test)."""

    def __init__(self, model: tuple[EncodeFn, int]) -> None:
        self.encode, self.dim = model
        self.delay = 0.0
        self.fail = False

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("injected model failure")
        return self.encode(texts)


async def test_slow_or_failing_model_bypasses_within_budget(
    model: tuple[EncodeFn, int], upstream: fake.FakeUpstream, tmp_path: Path
) -> None:
    faulty = FaultyModel(model)
    settings = CacheSettings(lookup_timeout_ms=300, server=ServerSettings(grpc_address="127.0.0.1:0"))
    server = await build_server(settings, (faulty, faulty.dim))
    port = await server.start("127.0.0.1:0")
    envoy = await start_envoy(tmp_path, port, upstream.port)
    try:
        async with httpx.AsyncClient(base_url=envoy.url, timeout=30) as client:
            faulty.delay = 2.0  # the model hangs for 2 s per batch
            started = time.monotonic()
            replies = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=chat("slow-model", f"Question {i} about tides"))
                    for i in range(4)
                )
            )
            elapsed = time.monotonic() - started
            assert all(r.status_code == 200 for r in replies)
            assert {r.headers["x-semantic-cache"] for r in replies} == {"bypass"}
            assert elapsed < 1.5  # budget 0.3 s + upstream, never the model's 2 s
            faulty.delay, faulty.fail = 0.0, True
            await asyncio.sleep(2.1)  # let the stuck batch drain
            r = await client.post("/v1/chat/completions", json=chat("slow-model", "Why is the sky blue?"))
            assert r.status_code == 200 and r.headers["x-semantic-cache"] == "bypass"
            faulty.fail = False
            r = await client.post("/v1/chat/completions", json=chat("slow-model", "Why is the sky blue?"))
            assert r.headers["x-semantic-cache"] == "miss"  # recovers by itself
        counts = server.shared.on_decision.counts  # type: ignore[attr-defined]
        assert counts["bypass"] >= 5
    finally:
        envoy.stop()
        await server.stop(1)


async def test_upstream_slow_and_reset_are_passed_through(stack: Stack) -> None:
    slow = await stack.chat(
        chat("faults-upstream", "Take your time"), **{"x-test-mode": "slow", "x-test-delay-ms": "800"}
    )
    assert slow.status_code == 200 and slow.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    before = await stack.entries()
    reset = await stack.chat(chat("faults-upstream", "Reset me"), **{"x-test-mode": "reset"})
    assert reset.status_code in (502, 503)  # Envoy's answer to an upstream reset, as without us
    await stack.settle()
    assert await stack.entries() == before + 0  # nothing stored for the reset
    again = await stack.chat(chat("faults-upstream", "Reset me"))
    assert again.headers["x-semantic-cache"] == "miss"


def _rss_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _load(
    url: str, prompts: list[str], model: str, seconds: float, concurrency: int
) -> tuple[int, list[str], dict[str, int]]:
    """Bounded load: ``concurrency`` workers for ``seconds``; returns (requests, errors, decisions)."""
    errors: list[str] = []
    decisions: dict[str, int] = {}
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            i = w
            while time.monotonic() < deadline and done < 20_000:
                prompt = prompts[i % len(prompts)]
                stream = i % 3 == 0
                try:
                    r = await client.post("/v1/chat/completions", json=chat(model, prompt, stream=stream))
                    if r.status_code != 200 or (stream and not r.text.rstrip().endswith("data: [DONE]")):
                        errors.append(f"{r.status_code}: {r.text[:100]}")
                    decisions[r.headers.get("x-semantic-cache", "none")] = (
                        decisions.get(r.headers.get("x-semantic-cache", "none"), 0) + 1
                    )
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                done += 1
                i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return done, errors, decisions


@pytest.mark.parametrize("backend", ["memory", "milvus"])
async def test_processor_killed_and_restarted_under_load(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    grpc_port = free_port()
    config = tmp_path / "config.yaml"
    text = f'semantic_cache:\n  server:\n    grpc_address: "127.0.0.1:{grpc_port}"\n'
    if backend == "milvus":
        server: MilvusServer = request.getfixturevalue("milvus_server")
        cfg = milvus_yaml(
            tmp_path / "milvus.yaml",
            server.uri,
            f"kill_{os.getpid()}",
            search={"consistency_level": "Session"},
        )
        text += f'  backend_type: "milvus"\n  backend_config_path: "{cfg}"\n'
    config.write_text(text)
    mgmt = free_port()
    env = serve_env(mgmt)
    processor = cli("serve", "--config", str(config), env=env, log=tmp_path / "serve.log")
    envoy = None
    prompts = ["How do airplanes fly?", "What causes earthquakes?", "How do vaccines work?"]
    try:
        await wait_port(grpc_port, processor, tmp_path / "serve.log")
        await wait_backend_ready(mgmt)
        envoy = await start_envoy(tmp_path, grpc_port, state.port)
        # Stored before the kill and never sent by the load: it tells whether the restarted
        # processor remembers (Milvus) or starts empty (memory), however soon it is back up.
        sentinel = "Why is the sea salty?"
        async with httpx.AsyncClient(base_url=envoy.url, timeout=30) as client:
            for p in [*prompts, sentinel]:
                await client.post("/v1/chat/completions", json=chat("kill-load", p))
            await asyncio.sleep(0.5)
        load = asyncio.create_task(_load(envoy.url, prompts, "kill-load", seconds=6, concurrency=8))
        await asyncio.sleep(1.5)
        processor.kill()
        processor.wait(10)
        await asyncio.sleep(1.0)
        processor = cli("serve", "--config", str(config), env=env, log=tmp_path / "serve2.log")
        done, errors, decisions = await load
        assert errors == [] and done > 50
        assert decisions.get("none", 0) > 0  # while it was down Envoy went straight upstream
        await wait_port(grpc_port, processor, tmp_path / "serve2.log")
        await wait_backend_ready(mgmt)
        async with httpx.AsyncClient(base_url=envoy.url, timeout=30) as client:
            r = await client.post("/v1/chat/completions", json=chat("kill-load", sentinel))
        expected = "hit" if backend == "milvus" else "miss"  # memory starts empty, Milvus remembers
        assert r.headers["x-semantic-cache"] == expected
    finally:
        stop(processor)
        if envoy is not None:
            envoy.stop()
        await runner.cleanup()


async def test_sigterm_finishes_streams_and_stores_them(milvus_server: MilvusServer, tmp_path: Path) -> None:
    from pymilvus import MilvusClient

    state = fake.FakeUpstream()
    runner = await fake.start(state)
    grpc_port = free_port()
    name = f"sigterm_{os.getpid()}"
    cfg = milvus_yaml(tmp_path / "milvus.yaml", milvus_server.uri, name)
    config = tmp_path / "config.yaml"
    config.write_text(
        f'semantic_cache:\n  backend_type: "milvus"\n  backend_config_path: "{cfg}"\n'
        f'  server:\n    grpc_address: "127.0.0.1:{grpc_port}"\n    shutdown_grace_seconds: 20\n'
    )
    mgmt = free_port()
    env = serve_env(mgmt)
    log = tmp_path / "serve.log"
    processor = cli("serve", "--config", str(config), env=env, log=log)
    envoy = None
    try:
        await wait_port(grpc_port, processor, log)
        await wait_backend_ready(mgmt)
        envoy = await start_envoy(tmp_path, grpc_port, state.port)
        async with httpx.AsyncClient(base_url=envoy.url, timeout=30) as client:
            body = chat("sigterm", "Tell me a long story", stream=True)
            in_flight = asyncio.create_task(
                client.post(
                    "/v1/chat/completions",
                    json=body,
                    headers={"x-test-mode": "slow", "x-test-delay-ms": "1500"},
                )
            )
            await asyncio.sleep(0.7)
            processor.send_signal(signal.SIGTERM)
            r = await in_flight
            assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert processor.wait(30) == 0
        assert "shutting down" in log.read_text()
        client_m = MilvusClient(uri=milvus_server.uri)
        rows = client_m.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        assert rows[0]["count(*)"] == 1  # the completed stream was stored before exit
        client_m.drop_collection(name)
        client_m.close()
    finally:
        stop(processor)
        if envoy is not None:
            envoy.stop()
        await runner.cleanup()


async def test_bounded_load_mixed_traffic(stack: Stack) -> None:
    prompts = [
        f"Topic {t}: explain it briefly"
        for t in ("tides", "volcanoes", "jazz", "chess", "bread", "rust", "owls")
    ]
    prompts += [p.replace("explain it briefly", "give a short explanation") for p in prompts]
    warm = await _load(stack.envoy.url, prompts, "load-mix", seconds=3, concurrency=64)
    assert warm[1] == []
    rss_before = _rss_mb()  # this process runs the processor (the cache is already full)
    done, errors, decisions = await _load(stack.envoy.url, prompts, "load-mix", seconds=8, concurrency=64)
    growth = _rss_mb() - rss_before
    assert errors == []
    assert done > 200
    assert growth < 64, f"RSS grew {growth:.0f} MB under steady load"
    assert warm[2].get("miss", 0) > 0 and decisions.get("hit", 0) > 0
    await stack.settle()
    backend = stack.server.shared.cache.backend
    assert await backend.count() <= stack.server.shared.settings.max_entries
    assert len(stack.server.shared.inflight) == 0  # no orphan single-flight entries
