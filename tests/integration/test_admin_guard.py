"""What a web page could do to the admin API (issue #19 item 2), against the real listener and Envoy.

A browser page can send requests to an operator's ``kubectl port-forward`` (CSRF) or, through DNS
rebinding, read it under its own host name. Each attack of the issue is replayed here, with the
issue's own ``curl``, and must fail; the CLI must keep working.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from extproc.admin.api import AdminServer, start_admin
from extproc.app import build_server
from extproc.config.settings import CacheSettings, ServerSettings, parse_config
from extproc.dataplane.server import ExtProcServer
from extproc.embedding.base import EncodeFn
from tests.conftest import Envoy, free_port, start_envoy
from tests.support import upstream as fake
from tests.support.admin_helpers import admin_cli, chat, fresh_model

pytestmark = pytest.mark.integration
ORIGIN = "http://evil.example"
NDJSON = {"content-type": "application/x-ndjson"}


@dataclass
class Target:
    """Envoy → processor (memory, ttl 3600) with its admin API on loopback, no token."""

    server: ExtProcServer
    envoy: Envoy
    admin: AdminServer
    http: httpx.AsyncClient
    api: httpx.AsyncClient

    @property
    def url(self) -> str:
        """The admin API base URL."""
        return f"http://127.0.0.1:{self.admin.port}"

    async def ask(self, model: str, prompt: str) -> httpx.Response:
        """A victim's chat request through Envoy (waits for the store a miss triggers)."""
        r = await self.http.post("/v1/chat/completions", json=chat(model, prompt))
        await self.server.tasks.drain(5)
        return r


@pytest.fixture(scope="module")
async def target(
    model: tuple[EncodeFn, int], upstream: fake.FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    """One processor, its Envoy and its admin API, started the way ``serve`` starts them."""
    settings = CacheSettings(
        server=ServerSettings(grpc_address="127.0.0.1:0", admin_address="127.0.0.1:0"),
        max_added_latency_ms=0,  # these tests count entries: nothing shed on a busy machine
    )
    server = await build_server(settings, model)
    port = await server.start("127.0.0.1:0")
    envoy = await start_envoy(tmp_path_factory.mktemp("guard"), port, upstream.port)
    admin = await start_admin(server.shared, settings)
    http = httpx.AsyncClient(base_url=envoy.url, timeout=30)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}", timeout=30)
    yield Target(server, envoy, admin, http, api)
    await http.aclose()
    await api.aclose()
    await admin.stop()
    envoy.stop()
    await server.stop(1)
    await server.shared.cache.close()


async def curl(*args: str) -> tuple[int, str]:
    """Run curl; (HTTP status, body)."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    body, _, status = out.decode().rpartition("\n")
    return int(status), body


async def test_the_issues_curl_no_longer_empties_the_cache(target: Target) -> None:
    await target.ask(fresh_model(), "What is the tallest mountain on Earth?")
    entries = await target.server.shared.cache.backend.count()
    assert entries >= 1
    status, body = await curl(
        "-X", "POST", f"127.0.0.1:{target.admin.port}/admin/flush",
        "-H", f"Origin: {ORIGIN}", "-H", "content-type: text/plain", "-d", '{"confirm":"flush-all"}',
    )  # fmt: skip
    assert status == 403 and "requests from web pages are refused" in json.loads(body)["error"]
    status, body = await curl(  # without the Origin a page cannot omit, the content type still fails
        "-X", "POST", f"127.0.0.1:{target.admin.port}/admin/flush",
        "-H", "content-type: text/plain", "-d", '{"confirm":"flush-all"}',
    )  # fmt: skip
    assert status == 415 and "needs Content-Type: application/json" in json.loads(body)["error"]
    status, _ = await curl(  # curl -d sends a form type: the documented curl adds the JSON one
        "-X", "POST", f"127.0.0.1:{target.admin.port}/admin/invalidate", "-d", '{"model": "x"}'
    )  # fmt: skip
    assert status == 415
    assert await target.server.shared.cache.backend.count() == entries
    status, body = await curl(
        "-X", "POST", f"127.0.0.1:{target.admin.port}/admin/invalidate",
        "-H", "content-type: application/json", "-d", '{"model": "nobody"}',
    )  # fmt: skip
    assert status == 200 and json.loads(body)["matched"] == 0


async def test_a_page_cannot_plant_an_answer_through_import(target: Target) -> None:
    m = fresh_model()
    prompt = "What is the boiling point of water?"
    honest = (await target.ask(m, prompt)).json()["choices"]
    line = json.loads((await target.api.get("/admin/export", params={"model": m})).text)
    line["response"]["choices"][0]["message"]["content"] = "POISONED: 40 degrees"
    planted = json.dumps(line).encode()
    for headers in (
        {"Origin": ORIGIN, "content-type": "text/plain"},  # what a page's fetch() may send
        {"Origin": ORIGIN, **NDJSON},  # a page cannot drop its Origin
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
    ):
        r = await target.api.post("/admin/import", content=planted, headers=headers)
        assert r.status_code in (403, 415), headers
    victim = await target.ask(m, prompt)
    assert victim.headers["x-semantic-cache-match"] == "exact" and victim.json()["choices"] == honest


async def test_a_rebinding_page_cannot_read_the_export(target: Target) -> None:
    await target.ask(fresh_model(), "Who painted the Mona Lisa?")
    for host in ("attacker.example", f"attacker.example:{target.admin.port}", "localhost.attacker.example"):
        r = await target.api.get("/admin/export", headers={"Host": host})
        assert r.status_code == 403 and r.text.count("\n") == 0, host
        assert "is not a name of this admin API" in r.json()["error"]
    for host in ("localhost:18080", "127.0.0.1", "[::1]:9191"):  # port-forwards use other local ports
        assert (await target.api.get("/admin/stats", headers={"Host": host})).status_code == 200


async def test_configured_names_and_origins(target: Target) -> None:
    env = {  # as the chart sets them
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
        "SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS": "semantic-router-admin.ns.svc,semantic-router-admin.ns",
        "SEMANTIC_CACHE_ADMIN_ALLOWED_ORIGINS": "https://ops.example.com",
    }
    settings = parse_config({"semantic_cache": {}}, env=env)
    admin = await start_admin(target.server.shared, settings)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as api:
            named = await api.get("/admin/stats", headers={"Host": "semantic-router-admin.ns.svc:9191"})
            assert named.status_code == 200
            assert (await api.get("/admin/stats", headers={"Host": "other.ns.svc"})).status_code == 403
            page = {"Origin": "https://ops.example.com"}
            preflight = await api.options(
                "/admin/enabled", headers=page | {"Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "https://ops.example.com"
            switched = await api.post("/admin/enabled", json={"enabled": True}, headers=page)
            assert switched.status_code == 200
            assert switched.headers["access-control-allow-origin"] == "https://ops.example.com"
            exported = await api.get("/admin/export", headers=page)  # a stream gets the header too
            assert exported.headers["access-control-allow-origin"] == "https://ops.example.com"
            other = await api.post("/admin/enabled", json={"enabled": True}, headers={"Origin": ORIGIN})
            assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    finally:
        await admin.stop()


async def test_imported_entries_never_outlive_the_configured_ttl(target: Target) -> None:
    m = fresh_model()
    prompt = "How far is the Moon?"
    await target.ask(m, prompt)
    line = json.loads((await target.api.get("/admin/export", params={"model": m})).text)
    assert target.server.shared.settings.ttl_seconds == 3600
    for expires_at in (0, time.time() + 10 * 365 * 86400):  # "never", or in ten years
        line["expires_at"] = expires_at
        started = time.time()
        r = await target.api.post("/admin/import", content=json.dumps(line).encode(), headers=NDJSON)
        assert r.json()["imported"] == 1
        (stored,) = [
            json.loads(x)
            for x in (await target.api.get("/admin/export", params={"model": m})).text.splitlines()
        ]
        assert started + 3600 - 1 <= stored["expires_at"] <= time.time() + 3600 + 1


async def test_the_cli_keeps_working_with_every_check(target: Target) -> None:
    m = fresh_model()
    await target.ask(m, "What does DNS stand for?")
    by_name = f"http://localhost:{target.admin.port}"  # the CLI sends Host: localhost:PORT
    stats = await admin_cli("stats", "--url", by_name)
    assert stats.code == 0, stats.err
    exported = await admin_cli("export", "--url", by_name, "--model", m, "--older-than", "0s")
    assert exported.code == 0 and len(exported.out.splitlines()) == 1, exported.err
    dry = await admin_cli("invalidate", "--url", target.url, "--model", m)
    assert dry.code == 0 and json.loads(dry.out)["matched"] == 1
    imported = await admin_cli("import", "--url", target.url, stdin=exported.out.encode())
    assert imported.code == 0 and json.loads(imported.out)["imported"] == 1, imported.err
    assert (await admin_cli("disable", "--url", target.url)).code == 0
    assert (await admin_cli("enable", "--url", target.url)).code == 0
