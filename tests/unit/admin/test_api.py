"""The admin API in process over the toy-embedding memory cache (no model, no Envoy)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest

from extproc.admin import importer
from extproc.admin.api import AdminServer, check_admin_address
from extproc.cache import SemanticCache
from extproc.config.settings import CacheSettings
from extproc.dataplane.shared import Shared
from extproc.embedding.batcher import Embedder
from extproc.errors import ConfigError
from extproc.protocol.completion import parse_json_completion
from extproc.protocol.completions import parse_completions_request, parse_json_text_completion
from extproc.protocol.openai import parse_chat_request
from extproc.protocol.responses import parse_json_response, parse_responses_request
from tests.support.toy import DIM, answer, make_cache, query, toy_encode
from tests.unit.admin.test_transfer import RESPONSE, TEXT_COMPLETION

NDJSON = {"content-type": "application/x-ndjson"}


@asynccontextmanager
async def serve(
    cache: SemanticCache | None = None, token: str | None = None
) -> AsyncIterator[tuple[SemanticCache, httpx.AsyncClient]]:
    """An admin API over ``cache`` (a fresh toy cache by default) and a client for it."""
    cache = cache or make_cache()
    shared = Shared(settings=CacheSettings(), cache=cache, spawn=asyncio.ensure_future)
    admin = AdminServer(shared, "127.0.0.1:0", token)
    await admin.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}", timeout=30) as client:
            yield cache, client
    finally:
        await admin.stop()


def sorted_lines(body: bytes) -> list[bytes]:
    """The export's lines in a stable order (the drill's ``diff <(sort …) <(sort …)``)."""
    return sorted(body.splitlines())


async def stored_by_every_endpoint(cache: SemanticCache) -> None:
    """One entry per cached endpoint, each as its processor parses and validates it, plus the
    large ones memory holds (a long prompt, a scope naming a 256-byte non-UTF-8 header)."""
    chat = parse_chat_request(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    )
    completions = parse_completions_request(json.dumps({"model": "m", "prompt": "hello"}).encode())
    responses = parse_responses_request(json.dumps({"model": "m", "input": "hey", "store": False}).encode())
    chat_body = {"object": "chat.completion", **answer("hello")}
    for request, body in [
        (chat, parse_json_completion(json.dumps(chat_body).encode())),
        (completions, parse_json_text_completion(json.dumps(TEXT_COMPLETION).encode())),
        (responses, parse_json_response(json.dumps(RESPONSE).encode())),
    ]:
        await cache.store(query(request.prompt, fp=request.fingerprint), body)
    long_prompt = "Summarise this document: " + " ".join(["lorem ipsum dolor sit amet"] * 3000)
    await cache.store(query(long_prompt), answer("a summary"))
    await cache.store(query("hi", scope="header-bytes:" + "ff" * 256), answer("tenant"))


async def test_export_then_import_restores_every_endpoints_entries_byte_for_byte() -> None:
    async with serve() as (source, client):
        await stored_by_every_endpoint(source)
        exported = (await client.get("/admin/export")).content
    assert len(exported.splitlines()) == 5
    async with serve() as (_, client):
        imported = await client.post("/admin/import", content=exported, headers=NDJSON)
        assert imported.status_code == 200, imported.text
        assert imported.json()["imported"] == 5 and imported.json()["rejections"] == []
        again = (await client.get("/admin/export")).content
    assert sorted_lines(again) == sorted_lines(exported)


def failing_after(calls: int) -> Any:
    """A toy encode function that raises from its ``calls + 1``-th call on (the model went away)."""
    state = {"calls": 0}

    def encode(texts: Sequence[str]) -> np.ndarray:
        state["calls"] += 1
        if state["calls"] > calls:
            raise ConnectionRefusedError(111, "Connection refused")
        return toy_encode(texts)

    return encode


async def test_invalidate_by_prompt_when_the_embedding_model_fails_is_a_json_503() -> None:
    async with serve() as (cache, client):
        await cache.store(query("v:1,0,0"), answer("A"))
        cache.embedder = Embedder(failing_after(0), DIM)
        r = await client.post("/admin/invalidate", json={"prompt": "v:1,0,0", "dry_run": False})
        assert r.status_code == 503 and "ConnectionRefusedError" in r.json()["error"]
        assert await cache.backend.count() == 1


async def test_reembed_import_stopped_by_the_embedding_model_says_from_which_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serve() as (source, client):
        for i in range(5):
            await source.store(query(f"v:1,{i},0"), answer(str(i)))
        exported = (await client.get("/admin/export")).content
    monkeypatch.setattr(importer, "BATCH_LINES", 2)
    target = make_cache()
    target.embedder = Embedder(failing_after(1), DIM)  # the first batch embeds, the second fails
    async with serve(target) as (_, client):
        r = await client.post("/admin/import?reembed=1", content=exported, headers=NDJSON)
    assert r.status_code == 503
    report = r.json()
    assert (report["imported"], report["not_attempted"]) == (2, 3)
    assert "lines from 3 on" in report["error"] and "ConnectionRefusedError" in report["error"]
    assert await target.backend.count() == 2


@pytest.mark.parametrize(
    ("query_string", "message"),
    [
        ("modle=zzz", "unknown query parameter(s) 'modle'; known: model, scope"),
        ("model=zzz&model=m", "query parameter(s) model given more than once"),
        ("model=m&Model=x", "unknown query parameter(s) 'Model'"),
    ],
)
async def test_export_refuses_unknown_and_repeated_query_parameters(query_string: str, message: str) -> None:
    async with serve() as (cache, client):
        await cache.store(query("v:1,0,0", model="m"), answer("A"))
        await cache.store(query("v:0,1,0", model="zzz"), answer("B"))
        r = await client.get(f"/admin/export?{query_string}")
        assert r.status_code == 400 and message in r.json()["error"]
        selected = await client.get("/admin/export?model=m")
        assert [json.loads(line)["model"] for line in selected.text.splitlines()] == ["m"]


@pytest.mark.parametrize(
    ("query_string", "message"),
    [
        ("rembed=1", "unknown query parameter(s) 'rembed'; known: reembed"),
        ("reembed=1&reembed=0", "query parameter(s) reembed given more than once"),
        ("reembed=maybe", "reembed must be 1, true or yes"),
    ],
)
async def test_import_refuses_unknown_repeated_and_bad_query_parameters(
    query_string: str, message: str
) -> None:
    async with serve() as (_, client):
        r = await client.post(f"/admin/import?{query_string}", content=b"", headers=NDJSON)
        assert r.status_code == 400 and message in r.json()["error"]


async def test_a_configured_token_is_read_without_surrounding_whitespace() -> None:
    async with serve(token="s3cret\n") as (_, client):  # a Secret made from `echo s3cret > token`
        assert (
            await client.get("/admin/stats", headers={"authorization": "Bearer s3cret"})
        ).status_code == 200
        assert (
            await client.get("/admin/stats", headers={"authorization": "Bearer s3cre"})
        ).status_code == 401
        assert (await client.get("/admin/stats")).status_code == 401


async def test_a_whitespace_only_token_counts_as_no_token() -> None:
    async with serve(token=" \n") as (_, client):  # like an empty one: loopback, no token asked
        assert (await client.get("/admin/stats")).status_code == 200
    with pytest.raises(ConfigError, match="without a token"):
        check_admin_address("0.0.0.0:9191", "\n")
    with pytest.raises(ConfigError, match="without a token"):
        AdminServer(
            Shared(settings=CacheSettings(), cache=make_cache(), spawn=asyncio.ensure_future),
            "0.0.0.0:0",
            " ",
        )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "limit": 0}, "limit must be an integer between 1 and 1000"),
        ({"model": "m", "min_similarity": 1.5}, "min_similarity must be a number between 0 and 1"),
        ({"model": "m", "limit": 5}, "limit applies to a prompt's nearest entries only"),
        ({"model": "m", "min_similarity": 0.5}, "min_similarity applies to a prompt's nearest entries only"),
        ({"model": "m", "min_similarity": 0.5, "limit": 5}, "min_similarity and limit apply to a prompt's"),
        ({"prompt": "v:1,0,0", "limit": 1001}, "limit must be an integer between 1 and 1000"),
    ],
)
async def test_invalidate_checks_nearest_options_and_needs_a_prompt_for_them(
    body: dict[str, Any], message: str
) -> None:
    async with serve() as (cache, client):
        await cache.store(query("v:1,0,0"), answer("A"))
        r = await client.post("/admin/invalidate", json=body | {"dry_run": False})
        assert r.status_code == 400 and message in r.json()["error"]
        assert await cache.backend.count() == 1
        ok = await client.post(
            "/admin/invalidate", json={"prompt": "v:1,0,0", "limit": 1, "min_similarity": 0.5}
        )
        assert ok.status_code == 200 and ok.json()["matched"] == 1


async def test_a_client_leaving_mid_export_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """An operator's ^C during a big export: the handler notes it, no traceback, the API serves on."""
    caplog.set_level(logging.WARNING)  # whatever level an earlier test's CLI run left on the root
    cache = make_cache(max_entries=5000)
    big = "x" * 4000
    for i in range(2000):
        await cache.store(
            query(f"v:1,{i / 2000}"), answer(big), vector=np.ones(DIM, dtype=np.float32) / DIM**0.5
        )
    async with serve(cache) as (_, client):
        async with client.stream("GET", "/admin/export") as response:
            async for _ in response.aiter_bytes():
                break  # first bytes in, then hang up
        await asyncio.sleep(0.5)
        assert (await client.get("/admin/stats")).status_code == 200
    assert not any(r.exc_info for r in caplog.records)  # aiohttp's own logger included
    assert any("the client left" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/admin/invalidate", {"model": "", "older_than_seconds": 1, "dry_run": False}),
        ("POST", "/admin/invalidate", {"scope": "", "dry_run": False}),
        ("POST", "/admin/invalidate", {"model": "m", "older_than_seconds": "", "dry_run": False}),
        ("GET", "/admin/export?model=", None),
        ("GET", "/admin/export?fingerprint=&scope=global", None),
    ],
)
async def test_an_empty_selector_is_refused_not_taken_as_every_entry(
    method: str, path: str, body: dict[str, Any] | None
) -> None:
    """`--model "$MODEL"` with MODEL unset deleted every model's entries (the empty value was
    dropped, leaving no selector); no entry has an empty model, scope or fingerprint."""
    async with serve() as (cache, client):
        for model in ("a", "b"):
            await cache.store(query("v:1,0,0", model=model), answer(model))
        r = await client.request(method, path, json=body)
        assert r.status_code == 400 and "is empty" in r.json()["error"], r.text
        assert await cache.backend.count() == 2


async def test_a_line_that_breaks_the_parser_is_that_lines_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value no check foresaw (it raised out of the batch: a bare 500, 0 of 9 good lines
    imported) costs its own line only."""
    async with serve() as (source, client):
        await stored_by_every_endpoint(source)
        exported = (await client.get("/admin/export")).content
    lines = exported.splitlines()
    parse = importer.line_to_entry

    def fragile(text: str | bytes, *args: Any) -> Any:
        if text == lines[1]:
            raise OverflowError("int too large to convert to float")
        return parse(text, *args)

    monkeypatch.setattr(importer, "line_to_entry", fragile)
    async with serve() as (cache, client):
        r = await client.post("/admin/import", content=exported, headers=NDJSON)
        assert r.status_code == 200, r.text
        assert r.json()["imported"] == 4
        assert r.json()["rejections"] == [{"line": 2, "reason": "unreadable entry (OverflowError)"}]
        assert await cache.backend.count() == 4


async def test_an_import_larger_than_the_cache_says_how_many_entries_it_evicted() -> None:
    """300 lines into a cache of 100 reported "imported 300" while 201 entries (the file's and one
    already there) were evicted."""
    async with serve(make_cache(max_entries=400)) as (source, client):
        for i in range(300):
            await source.store(query(f"v:1,{i},0"), answer(f"a{i}"))
        exported = (await client.get("/admin/export")).content
    async with serve(make_cache(max_entries=100)) as (cache, client):
        await cache.store(query("v:0,0,1"), answer("hot"))
        report = (await client.post("/admin/import", content=exported, headers=NDJSON)).json()
        assert (report["imported"], report["evicted"]) == (300, 201)
        assert await cache.backend.count() == 100
