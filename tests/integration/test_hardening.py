"""The hostile probes of the hardening issues, replayed through the real Envoy.

Each test reproduces one finding (decompression bomb, code prompts that collided, an empty
bearer token, non-UTF-8 tenant values, the query string, Envoy's header limits, a stuck
single-flight) and checks the fixed behaviour end to end.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.stack import start_upstream
from extproc.app import build_server
from extproc.config.settings import CacheSettings, ServerSettings
from extproc.embedding.base import EncodeFn
from tests.conftest import Stack, StackFactory, start_envoy
from tests.support.admin_helpers import chat, fresh_model
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration


def bypasses(stack: Stack, reason: str) -> float:
    """``semantic_cache_bypass_total{reason}`` of the stack's processor."""
    value = stack.server.metrics.registry.get_sample_value("semantic_cache_bypass_total", {"reason": reason})
    return value or 0.0


def rss_mib() -> float:
    """This process's resident memory (the in-process processor lives here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples this process's RSS every 5 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_gzip_bomb_passes_through_while_others_keep_hitting(
    model: tuple[EncodeFn, int], tmp_path: Path
) -> None:
    """#19.1: 8 bombs of ~50 KiB that inflate to 50 MiB each, among 60 ordinary hits.

    The processor runs in this process; the upstream runs in its own (it inflates gzip bodies
    itself), so this process's RSS is the processor's.
    """
    upstream, upstream_port = await start_upstream(tmp_path)
    # No admission control: on a starved machine the first store of a prompt may be shed
    # (bypass overloaded skips storing, by design), and this test needs the six stored.
    settings = CacheSettings(max_added_latency_ms=0, server=ServerSettings(grpc_address="127.0.0.1:0"))
    server = await build_server(settings, model)
    envoy = await start_envoy(tmp_path, await server.start("127.0.0.1:0"), upstream_port)
    client = httpx.AsyncClient(base_url=envoy.url, timeout=60)
    try:
        stack = Stack(envoy, server, FakeUpstream(port=upstream_port), client)
        name = fresh_model()
        prompts = [f"What is the tallest mountain on continent number {i}?" for i in range(6)]
        for p in prompts:
            await stack.chat(chat(name, p))
        await stack.settle()
        bomb = gzip.compress(json.dumps(chat(name, "explode")).encode() + b" " * (50 * 2**20), 9)
        assert len(bomb) < 100 * 1024
        baseline = rss_mib()

        async def send_bomb() -> httpx.Response:
            headers = {"content-type": "application/json", "content-encoding": "gzip"}
            return await client.post("/v1/chat/completions", content=bomb, headers=headers)

        async def ordinary(i: int) -> httpx.Response:
            await asyncio.sleep(0.005 * i)
            return await stack.chat(chat(name, prompts[i % len(prompts)]))

        with PeakRss() as rss:
            results = await asyncio.gather(
                *[send_bomb() for _ in range(8)], *[ordinary(i) for i in range(60)]
            )
        bombs, normal = results[:8], results[8:]
        for r in bombs:  # went upstream untouched
            assert r.headers["x-semantic-cache"] == "bypass"
        assert bypasses(stack, "request_too_large") == 8
        seen = [
            (r.status_code, r.headers.get("x-semantic-cache"), r.headers.get("x-semantic-cache-reason"))
            for r in normal
        ]
        assert all(s == (200, "hit", None) for s in seen), seen
        # Bounded by max_request_bytes (1 MiB) per bomb, not by the 400 MiB they expand to.
        assert rss.peak - baseline < 64, (baseline, rss.peak)
    finally:
        await client.aclose()
        envoy.stop()
        await server.stop(1)
        await server.shared.cache.close()
        upstream.stop()


async def test_code_prompts_that_differ_in_whitespace_never_share_answers(make_stack: StackFactory) -> None:
    """#19.3: the probe's pairs (string literal, indentation, joined lines, YAML) through Envoy."""
    stack = await make_stack()
    model = fresh_model()
    pairs = [
        ("x = 'a b'; print(len(x))", "x = 'a    b'; print(len(x))"),
        (
            "What does this print?\n```python\nfor i in range(3):\n    pass\nprint(i)\n```",
            "What does this print?\n```python\nfor i in range(3):\n    pass\n    print(i)\n```",
        ),
        ("print(1)\nprint(2)", "print(1) print(2)"),
        (
            "Is this YAML valid?\n```yaml\na:\n  b: 1\nc: 2\n```",
            "Is this YAML valid?\n```yaml\na:\n  b: 1\n  c: 2\n```",
        ),
    ]
    for stored, _ in pairs:
        await stack.chat(chat(model, stored))
    await stack.settle()
    for stored, other in pairs:
        assert (await stack.chat(chat(model, stored))).headers["x-semantic-cache"] == "hit"
        r = await stack.chat(chat(model, other))
        assert r.headers["x-semantic-cache"] == "miss", other
    # prose that differs only in whitespace is still one question
    await stack.chat(chat(model, "Explain how a rainbow forms in the sky"))
    await stack.settle()
    r = await stack.chat(chat(model, "Explain how a  rainbow forms\nin the sky"))
    assert r.headers["x-semantic-cache"] == "hit"


async def test_empty_bearer_token_bypasses(make_stack: StackFactory) -> None:
    """#19.4: `Authorization: Bearer ` is no tenant of its own."""
    stack = await make_stack(scope_mode="authorization")
    model = fresh_model()
    before = bypasses(stack, "no_scope")
    for value in ("Bearer", "bearer", "BEARER"):  # Envoy trims "Bearer " to "Bearer"
        r = await stack.chat(chat(model, "What is the capital of Peru?"), authorization=value)
        assert r.status_code == 200 and r.headers["x-semantic-cache"] == "bypass"
    assert bypasses(stack, "no_scope") - before == 3
    r = await stack.chat(chat(model, "What is the capital of Peru?"), authorization="Bearer k1")
    assert r.headers["x-semantic-cache"] == "miss"


@pytest.mark.parametrize(
    ("mode", "header", "first", "second"),
    [
        ("header", "x-tenant-id", b"t\xff", b"t\xfe"),
        ("header", "x-tenant-id", b"M\xfcller", b"M\xe4ller"),
        ("authorization", "authorization", b"Bearer k\xff", b"Bearer k\xfe"),
    ],
)
async def test_non_utf8_scopes_are_separate_tenants(
    make_stack: StackFactory, mode: str, header: str, first: bytes, second: bytes
) -> None:
    """#20.1: scopes come from the raw bytes, never from U+FFFD replacements."""
    stack = await make_stack(scope_mode=mode, envoy_env={"STRIP_SCOPE_HEADER": "false"})
    model = fresh_model()
    prompt = "How many moons does Jupiter have?"
    stored = await stack.chat(chat(model, prompt), **{header: first})  # type: ignore[arg-type]
    assert stored.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    again = await stack.chat(chat(model, prompt), **{header: first})  # type: ignore[arg-type]
    assert again.headers["x-semantic-cache"] == "hit"
    other = await stack.chat(chat(model, prompt), **{header: second})  # type: ignore[arg-type]
    assert other.headers["x-semantic-cache"] == "miss"


async def test_query_string_is_part_of_the_identity(make_stack: StackFactory) -> None:
    """#20.6: one deployment's answer is never served for another, nor for the bare path."""
    stack = await make_stack()
    model = fresh_model()
    body = chat(model, "Summarise the plot of Hamlet in one line")
    path = "/v1/chat/completions"
    a = await stack.client.post(f"{path}?api-version=2024-01-01&deployment=gpt-a", json=body)
    assert a.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    same = await stack.client.post(f"{path}?deployment=gpt-a&api-version=2024-01-01", json=body)
    assert same.headers["x-semantic-cache"] == "hit"
    b = await stack.client.post(f"{path}?api-version=2024-01-01&deployment=gpt-b", json=body)
    assert b.headers["x-semantic-cache"] == "miss"
    assert (await stack.chat(body)).headers["x-semantic-cache"] == "miss"


async def at_the_edge(client: httpx.AsyncClient, body: dict[str, Any], sizes: range, make: Any) -> int:
    """Send requests with headers from ``make(size)`` for each size, largest first; the first one
    Envoy's codec accepts (no 431, no closed connection) must succeed.  Returns that size."""
    for size in sizes:
        try:
            r = await client.post("/v1/chat/completions", json=body, headers=make(size))
        except httpx.TransportError:
            continue  # over Envoy's own limit: refused before any filter runs
        if r.status_code == 431:
            continue
        assert r.status_code == 200, (size, r.status_code, r.text[:200])
        return size
    raise AssertionError("Envoy refused every size tried")


@pytest.mark.parametrize("accept_encoding", [True, False])
async def test_requests_at_envoys_header_limits_never_get_a_500(
    make_stack: StackFactory, accept_encoding: bool
) -> None:
    """#20.4: at the header-count or -size limit the cache steps aside instead of failing."""
    stack = await make_stack()
    model = fresh_model()
    async with httpx.AsyncClient(base_url=stack.envoy.url, timeout=30) as client:
        if not accept_encoding:
            del client.headers["accept-encoding"]
        count = await at_the_edge(
            client,
            chat(model, "What is a prime number?"),
            range(100, 84, -1),
            lambda n: {f"x-extra-{i}": "v" for i in range(n)},
        )
        size = await at_the_edge(
            client,
            chat(model, "What is an even number?"),
            range(60 * 1024, 59 * 1024, -64),
            lambda n: {"x-big": "b" * n},
        )
    assert 84 < count < 100 and 59 * 1024 < size <= 60 * 1024


async def test_followers_do_not_wait_for_an_answer_that_will_not_be_stored(make_stack: StackFactory) -> None:
    """#19.5: the leader's 500 releases the identical misses as soon as its headers arrive."""
    stack = await make_stack(coalesce_wait_ms=20_000)
    model = fresh_model()
    body = chat(model, "A question everyone asks at once")
    leader = asyncio.create_task(stack.chat(body, **{"x-test-mode": "slow-error", "x-test-delay-ms": "1500"}))
    await asyncio.sleep(0.3)
    # They go upstream themselves at the leader's 500, not after coalesce_wait_ms (20 s).
    followers = await asyncio.wait_for(asyncio.gather(*[stack.chat(body) for _ in range(3)]), 10)
    assert (await leader).status_code == 500
    assert all(r.status_code == 200 and r.headers["x-semantic-cache"] != "hit" for r in followers)
    assert stack.upstream.chat_calls(model) == 4


async def test_malformed_answer_never_sticks_the_single_flight(make_stack: StackFactory) -> None:
    """#20.2: an answer that breaks the parser is unparseable; the key is released at once."""
    stack = await make_stack(coalesce_wait_ms=30_000)
    model = fresh_model()
    body = chat(model, "Give me a malformed answer")
    r = await stack.chat(body, **{"x-test-mode": "malformed"})
    assert r.status_code == 200
    await stack.settle()
    assert len(stack.server.shared.inflight) == 0
    again = await asyncio.wait_for(stack.chat(body), 10)  # not the 30 s coalescing wait
    assert again.headers["x-semantic-cache"] == "miss"
