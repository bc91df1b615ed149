"""Shadow verification, the false-hit bound's explore path and feedback, through a real Envoy.

The fake upstream's ``topic`` mode answers by meaning (what the question is about), so a
look-alike served from cache ("reset my router" answered with the password entry) is a wrong
hit that shadow verification can see.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from extproc.admin.api import AdminServer
from extproc.config.verification import VerificationSettings
from extproc.dataplane.verification import Verification
from tests.conftest import Stack, StackFactory, free_port
from tests.support import upstream as fake
from tests.support.admin_helpers import admin_cli, chat, fresh_model

pytestmark = pytest.mark.integration

LOOSE = {"similarity_threshold": 0.3, "min_confidence": 0.0, "guard_content": False}
"""Loosened so that look-alikes about other things are served (what verification must catch)."""
TOPIC = {"x-test-mode": "topic"}
PASSWORD = "How do I reset my password?"
ROUTER = "How do I reset my router?"


def verification_of(stack: Stack) -> Verification:
    """The stack's verification component."""
    v = stack.server.shared.verification
    assert v is not None
    return v


def sample(stack: Stack, name: str, **labels: str) -> float:
    """A metric's current value (0 when it has no such series yet)."""
    return stack.server.metrics.registry.get_sample_value(name, labels) or 0.0


async def gone(stack: Stack, entry_id: str, timeout: float = 30.0) -> bool:
    """True once the entry ``entry_id`` names is deleted (Milvus shows a delete within moments)."""
    deadline = time.monotonic() + timeout
    while await stack.server.shared.cache.entry(entry_id.partition(".")[0]) is not None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def until(check: Any, timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true (the bound is for a busy machine; it returns as soon as it is)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def shadows(upstream: fake.FakeUpstream, model: str) -> list[fake.Seen]:
    """The shadow requests of ``model`` the upstream received."""
    return [
        s for s in upstream.seen if s.headers.get("x-semantic-cache-shadow") == "1" and model in str(s.body)
    ]


async def shadow_stack(
    make_stack: StackFactory,
    upstream: fake.FakeUpstream,
    backend: dict[str, Any] | None = None,
    **settings: Any,
) -> Stack:
    """A stack (memory unless ``backend`` says) with every semantic hit shadowed to the fake upstream."""
    values: dict[str, Any] = {"sample_rate": 1.0, "upstream_url": f"http://127.0.0.1:{upstream.port}"}
    stack = await make_stack(
        verification=VerificationSettings(**(values | settings)), **LOOSE, **(backend or {})
    )
    ready = getattr(stack.server.shared.cache.backend, "wait_ready", None)
    if ready is not None:
        assert await ready(60), stack.server.shared.cache.backend.status()
    return stack


async def test_a_wrong_look_alike_is_seen_deleted_and_the_next_request_misses(
    make_stack: StackFactory, upstream: fake.FakeUpstream, backend: dict[str, Any]
) -> None:
    stack = await shadow_stack(make_stack, upstream, backend, replace=False)
    model = fresh_model()
    seed = await stack.chat(chat(model, PASSWORD), **TOPIC)
    assert seed.headers["x-semantic-cache"] == "miss"
    await stack.settle()
    wrong = await stack.chat(chat(model, ROUTER), **TOPIC)
    assert wrong.headers["x-semantic-cache"] == "hit"  # the look-alike is served…
    assert wrong.json()["choices"][0]["message"]["content"] == fake.TOPICS["password"]
    entry_id = wrong.headers["x-semantic-cache-entry"]
    await stack.settle()
    # …and verification saw the upstream answer otherwise.
    assert len(shadows(upstream, model)) == 1
    shadow = shadows(upstream, model)[0]
    headers = {k.lower(): v for k, v in shadow.headers.items()}
    assert "no-store" in headers["cache-control"] and b'"stream": false' in shadow.body, headers
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="disagree") == 1
    assert sample(stack, "semantic_cache_false_hit_rate", model=model) == 1.0
    assert 0 < sample(stack, "semantic_cache_false_hit_rate_upper", model=model) <= 1.0
    assert sample(stack, "semantic_cache_wrong_entries_deleted_total", cause="verification") == 1
    assert await gone(stack, entry_id)
    again = await stack.chat(chat(model, ROUTER), **TOPIC)
    assert again.headers["x-semantic-cache"] == "miss"
    assert again.json()["choices"][0]["message"]["content"] == fake.TOPICS["router"]
    stats = verification_of(stack).stats()["models"][model]
    assert (stats["disagree"], stats["agree"], stats["false_hit_rate"]) == (1, 0, 1.0)


async def test_an_agreeing_hit_stays_and_a_disagreeing_one_is_replaced(
    make_stack: StackFactory, upstream: fake.FakeUpstream
) -> None:
    stack = await shadow_stack(make_stack, upstream, replace=True)  # the fresh answer takes the place
    model = fresh_model()
    await stack.chat(chat(model, "How do I cook pasta?"), **TOPIC)
    await stack.settle()
    right = await stack.chat(chat(model, "How should I cook pasta?"), **TOPIC)
    assert right.headers["x-semantic-cache"] == "hit"
    await stack.settle()
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="agree") == 1
    assert sample(stack, "semantic_cache_false_hit_rate", model=model) == 0.0
    await stack.chat(chat(model, "How do I renew my passport?"), **TOPIC)
    await stack.settle()
    wrong = await stack.chat(chat(model, "How do I renew my password?"), **TOPIC)
    assert wrong.headers["x-semantic-cache"] == "hit"
    assert wrong.json()["choices"][0]["message"]["content"] == fake.TOPICS["passport"]
    await stack.settle()
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="disagree") == 1
    healed = await stack.chat(chat(model, "How do I renew my password?"), **TOPIC)
    assert healed.headers["x-semantic-cache"] == "hit"  # the upstream's own answer, stored
    assert healed.headers["x-semantic-cache-match"] == "exact"
    assert healed.json()["choices"][0]["message"]["content"] == fake.TOPICS["password"]


async def test_a_slow_or_failing_verification_upstream_never_touches_the_client(
    make_stack: StackFactory, upstream: fake.FakeUpstream
) -> None:
    stack = await shadow_stack(make_stack, upstream, timeout_ms=60_000)
    v = verification_of(stack)
    model = fresh_model()
    await stack.chat(chat(model, PASSWORD), **TOPIC)
    await stack.settle()
    errors = sample(stack, "semantic_cache_verifications_total", model=model, result="error")
    # Slow: the client has its hit while the shadow request is still waiting on the upstream.
    slow = await stack.chat(
        chat(model, "HOW do I reset my password?"), **TOPIC, **{"x-test-delay-ms": "3000"}
    )
    assert slow.status_code == 200 and slow.headers["x-semantic-cache"] == "hit"
    assert v.inflight == 1
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="agree") == 0
    await stack.settle()
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="agree") == 1
    # Failing (HTTP 500, a reset connection): the hit is served, the shadow counts as an error.
    for i, mode in enumerate(("error", "reset")):
        prompt = ("How DO I reset my password?", "How do I RESET my password?")[i]
        hit = await stack.chat(chat(model, prompt), **{"x-test-mode": mode})
        assert hit.status_code == 200 and hit.headers["x-semantic-cache"] == "hit"
        await stack.settle()
    after = sample(stack, "semantic_cache_verifications_total", model=model, result="error")
    assert after == errors + 2
    assert await stack.server.shared.cache.entry(hit.headers["x-semantic-cache-entry"][:64]) is not None


async def test_an_unreachable_verification_upstream_is_an_error_not_a_failure(
    make_stack: StackFactory,
) -> None:
    settings = VerificationSettings(sample_rate=1.0, upstream_url=f"http://127.0.0.1:{free_port()}")
    stack = await make_stack(verification=settings, **LOOSE)
    model = fresh_model()
    await stack.chat(chat(model, PASSWORD), **TOPIC)
    await stack.settle()
    hit = await stack.chat(chat(model, ROUTER), **TOPIC)
    assert hit.headers["x-semantic-cache"] == "hit"
    await stack.settle()
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="error") == 1
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="disagree") == 0


def case_variants(text: str, n: int) -> list[str]:
    """``n`` spellings of ``text`` differing in letter case only (one meaning, distinct exact keys)."""
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    out = []
    for k in range(1, n + 1):
        chars = list(text)
        for bit, i in enumerate(letters[:16]):
            if k >> bit & 1:
                chars[i] = chars[i].swapcase()
        out.append("".join(chars))
    return out


async def test_budget_and_concurrency_hold_under_load(
    make_stack: StackFactory, upstream: fake.FakeUpstream
) -> None:
    stack = await shadow_stack(make_stack, upstream, max_concurrency=2, max_per_minute=5)
    v = verification_of(stack)
    model = fresh_model()
    await stack.chat(chat(model, PASSWORD), **TOPIC)
    await stack.settle()
    slow = TOPIC | {"x-test-delay-ms": "500"}
    prompts = case_variants(PASSWORD, 24)
    # Four bursts of six: each starts two shadows at least (concurrency), so the budget bites.
    for group in (prompts[:6], prompts[6:12], prompts[12:18], prompts[18:]):
        replies = await asyncio.gather(*(stack.chat(chat(model, p), **slow) for p in group))
        assert all(r.headers["x-semantic-cache"] == "hit" for r in replies)
        await stack.settle()
    assert v.peak_inflight <= 2
    started = len(shadows(upstream, model))
    assert 1 <= started <= 5
    assert started + v.skipped["concurrency"] + v.skipped["budget"] == 24
    assert v.skipped["budget"] >= 1
    assert sample(stack, "semantic_cache_verification_skipped_total", reason="budget") == v.skipped["budget"]


async def test_requests_with_tools_or_no_store_are_never_shadowed(
    make_stack: StackFactory, upstream: fake.FakeUpstream
) -> None:
    stack = await shadow_stack(make_stack, upstream)
    model = fresh_model()
    tools = [{"type": "function", "function": {"name": "send_email", "parameters": {"type": "object"}}}]
    await stack.chat(chat(model, PASSWORD, tools=tools), **TOPIC)
    await stack.settle()
    hit = await stack.chat(chat(model, ROUTER, tools=tools), **TOPIC)
    assert hit.headers["x-semantic-cache"] == "hit"
    await stack.chat(chat(model, PASSWORD), **TOPIC)
    await stack.settle()
    no_store = await stack.chat(chat(model, ROUTER), **TOPIC, **{"cache-control": "no-store"})
    assert no_store.headers["x-semantic-cache"] == "hit"
    await stack.settle()
    assert shadows(upstream, model) == []
    assert verification_of(stack).skipped["side_effects"] >= 1


async def test_feedback_through_the_admin_api_and_on_a_retry(
    make_stack: StackFactory, upstream: fake.FakeUpstream
) -> None:
    stack = await make_stack(**LOOSE)  # no shadowing: feedback alone
    token = "feedback-token"
    admin = AdminServer(stack.server.shared, "127.0.0.1:0", token=token)
    await admin.start()
    auth = {"authorization": f"Bearer {token}"}
    try:
        api_url = f"http://127.0.0.1:{admin.port}"
        async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
            model = fresh_model()
            await stack.chat(chat(model, PASSWORD), **TOPIC)
            await stack.settle()
            hit = await stack.chat(chat(model, ROUTER), **TOPIC)
            entry_id = hit.headers["x-semantic-cache-entry"]
            forged = entry_id[:-1] + ("0" if entry_id[-1] != "0" else "1")
            assert (
                await api.post("/v1/feedback", json={"entry": entry_id, "verdict": "wrong"})
            ).status_code == 401
            for body, status in (
                ({"entry": forged, "verdict": "wrong"}, 404),
                ({"entry": entry_id, "verdict": "maybe"}, 400),
                ({"entry": entry_id, "verdict": "right"}, 200),
            ):
                assert (await api.post("/v1/feedback", json=body, headers=auth)).status_code == status
            cli = await admin_cli(
                "feedback", entry_id, "--verdict", "right", "--url", api_url, "--token", token
            )
            assert cli.code == 0 and json.loads(cli.out)["deleted"] is False, cli.err
            assert await stack.entries() >= 1
            wrong = await api.post("/v1/feedback", json={"entry": entry_id, "verdict": "wrong"}, headers=auth)
            assert wrong.status_code == 200 and wrong.json()["deleted"] is True
            assert await stack.server.shared.cache.entry(entry_id[:64]) is None
            stats = (await api.get("/admin/stats", headers=auth)).json()["verification"]
            assert stats["feedback"] == {"right": 2, "wrong": 1}
            # On the data path: a no-cache retry naming the entry it was served.
            other = fresh_model()
            await stack.chat(chat(other, PASSWORD), **TOPIC)
            await stack.settle()
            hit = await stack.chat(chat(other, ROUTER), **TOPIC)
            retry_headers = {
                "cache-control": "no-cache",
                "x-semantic-cache-feedback": "wrong",
                "x-semantic-cache-entry": hit.headers["x-semantic-cache-entry"],
            }
            retry = await stack.chat(chat(other, ROUTER), **TOPIC, **retry_headers)
            assert retry.json()["choices"][0]["message"]["content"] == fake.TOPICS["router"]
            await stack.settle()
            assert await stack.server.shared.cache.entry(hit.headers["x-semantic-cache-entry"][:64]) is None
            assert sample(stack, "semantic_cache_feedback_total", verdict="wrong") == 2
    finally:
        await admin.stop()


async def test_the_bound_explores_then_learns(make_stack: StackFactory, upstream: fake.FakeUpstream) -> None:
    bound = VerificationSettings(max_false_hit_rate=0.05)
    stack = await make_stack(verification=bound, **LOOSE)
    v = verification_of(stack)
    model = fresh_model()
    await stack.chat(chat(model, PASSWORD), **TOPIC)
    await stack.settle()
    explored = await stack.chat(chat(model, ROUTER), **TOPIC)
    assert explored.headers["x-semantic-cache"] == "miss"  # no evidence yet: sent upstream
    assert explored.headers["x-semantic-cache-reason"].startswith("rejected: bound")
    await stack.settle()
    await until(lambda: sample(stack, "semantic_cache_explorations_total", result="disagree") == 1)
    assert sample(stack, "semantic_cache_bound_decisions_total", decision="explore") == 1
    assert any(wrong for wrong, _ in v.outcomes.bins.values())
    assert v.evidence._task is not None  # the listening server syncs its evidence …
    assert await v.evidence.sync()  # … through its backend (here in-process: nothing to share)
    assert list(await v.cache.backend.load_evidence(0)) == [v.evidence.owner]


async def test_a_streamed_hit_is_verified_as_one_json_answer(
    make_stack: StackFactory, upstream: fake.FakeUpstream
) -> None:
    stack = await shadow_stack(make_stack, upstream, replace=False)
    model = fresh_model()
    await stack.chat(chat(model, PASSWORD), **TOPIC)
    await stack.settle()
    body = chat(model, ROUTER, stream=True, stream_options={"include_usage": True})
    hit = await stack.chat(body, **TOPIC)
    assert hit.headers["x-semantic-cache"] == "hit" and "text/event-stream" in hit.headers["content-type"]
    await stack.settle()
    (shadow,) = shadows(upstream, model)
    sent = json.loads(shadow.body)
    assert sent["stream"] is False and "stream_options" not in sent
    assert sample(stack, "semantic_cache_verifications_total", model=model, result="disagree") == 1
