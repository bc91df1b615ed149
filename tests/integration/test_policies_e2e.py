"""Per-model and per-route policies through the real Envoy (the route names itself in metadata)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from extproc.admin.api import policy_stats
from extproc.cache.schema import EntryFilter
from extproc.config.settings import parse_config
from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.integration

POLICIES = parse_config(
    {
        "semantic_cache": {
            "policies": [
                {"name": "no-cache", "match": {"model": "nocache-*"}, "enabled": False},
                {"name": "code", "match": {"model": "code-*"}, "ttl_seconds": 86400},
                {"name": "classify", "match": {"route": "classify"}, "ttl_seconds": 120},
                {"name": "strict", "match": {"model": "strict-*"}, "similarity_threshold": 0.999},
                {"name": "careful", "match": {"model": "careful-*"}, "min_confidence": 0.9999},
            ]
        }
    }
).policies
CALM = {"max_added_latency_ms": 0, "policies": POLICIES}


def chat(model: str, prompt: str) -> dict[str, Any]:
    """A one-message chat request."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def named(prefix: str) -> str:
    """A model name of this test alone, matching the policy glob ``prefix-*``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def lifetimes(stack: Stack, model: str) -> list[int]:
    """Rounded expires_at - created_at of the live entries of ``model``."""
    out: list[int] = []
    async for batch in stack.server.shared.cache.backend.entries(EntryFilter(model=model), time.time()):
        out += [round(e.expires_at - e.created_at) for e in batch]
    return out


async def test_policies_by_model(make_stack: StackFactory) -> None:
    stack = await make_stack(**CALM)
    off, code, plain, strict = named("nocache"), named("code"), named("plain"), named("strict")
    careful = named("careful")
    for model in (off, code, plain, strict, careful):
        first = await stack.chat(chat(model, "What is the capital of France?"))
        assert first.headers["x-semantic-cache"] == ("bypass" if model == off else "miss")
    await stack.settle()
    assert await lifetimes(stack, off) == []
    assert await lifetimes(stack, code) == [86400]
    assert await lifetimes(stack, plain) == [3600]
    # The paraphrase hits under the defaults, not under the strict policy's 0.999 threshold nor
    # under the careful one's 0.9999 confidence (the verifier is calibrated: never that sure).
    paraphrase = "What's the capital city of France?"
    hit = await stack.chat(chat(plain, paraphrase))
    assert (
        hit.headers["x-semantic-cache"] == "hit"
        and float(hit.headers["x-semantic-cache-confidence"]) < 0.9999
    )
    assert (await stack.chat(chat(strict, paraphrase))).headers["x-semantic-cache"] == "miss"
    assert (await stack.chat(chat(careful, paraphrase))).headers["x-semantic-cache"] == "miss"
    assert (await stack.chat(chat(off, "What is the capital of France?"))).headers[
        "x-semantic-cache"
    ] == "bypass"
    applied = {p["name"]: p for p in policy_stats(stack.server.shared)}
    assert applied["code"]["match"] == {"model": "code-*"} and applied["code"]["requests"] >= 1
    assert applied["no-cache"]["requests"] >= 2 and applied["no-cache"]["settings"] == {"enabled": False}
    assert list(applied) == [
        "no-cache",
        "code",
        "classify",
        "strict",
        "careful",
    ]  # first match wins: in order


async def test_policy_by_envoy_route(make_stack: StackFactory) -> None:
    stack = await make_stack(envoy_env={"CHAT_ROUTE_NAME": "classify"}, **CALM)
    model, code = named("plain"), named("code")
    await stack.chat(chat(model, "Is this review positive: great phone"))
    await stack.chat(chat(code, "Is this review positive: great phone"))
    await stack.settle()
    assert await lifetimes(stack, model) == [120]  # the route's policy
    assert await lifetimes(stack, code) == [86400]  # an earlier (model) policy matches first
