"""The admin API and ``semantic-cache admin`` over the memory backend, behind a real Envoy."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.admin.api import AdminServer, check_admin_address
from extproc.admin.live_config import ConfigWatcher
from extproc.admin.transfer import line_to_entry
from extproc.app import build_server
from extproc.config.settings import CacheSettings, ServerSettings, load_config, with_overrides
from extproc.dataplane.server import ExtProcServer
from extproc.embedding.base import EncodeFn
from extproc.errors import ConfigError
from tests.conftest import ROOT, Envoy, free_port, python_exe, start_envoy
from tests.support import upstream as fake
from tests.support.admin_helpers import admin_cli, chat, fresh_model

pytestmark = pytest.mark.integration
TOKEN = "s3cret-admin-token"
NDJSON = {"content-type": "application/x-ndjson"}


@dataclass
class Ops:
    """Envoy → processor (memory) with its admin API."""

    server: ExtProcServer
    envoy: Envoy
    admin: AdminServer
    http: httpx.AsyncClient
    api: httpx.AsyncClient
    upstream: fake.FakeUpstream

    @property
    def url(self) -> str:
        """The admin API base URL."""
        return f"http://127.0.0.1:{self.admin.port}"

    async def ask(self, model: str, prompt: str, **headers: str) -> httpx.Response:
        """A chat request through Envoy; waits for the store a miss triggers."""
        r = await self.http.post("/v1/chat/completions", json=chat(model, prompt), headers=headers)
        assert r.status_code == 200
        await self.server.tasks.drain(5)
        return r

    async def entries(self) -> int:
        """Entries in the cache."""
        return await self.server.shared.cache.backend.count()


@pytest.fixture(scope="module")
async def ops(
    model: tuple[EncodeFn, int], upstream: fake.FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ops]:
    """One memory-backed processor with a trusted revision header, its Envoy and admin API."""
    settings = with_overrides(
        CacheSettings(server=ServerSettings(grpc_address="127.0.0.1:0")),
        revision_header="x-model-revision",
        max_added_latency_ms=0,  # these tests count outcomes: none shed on a busy machine
    )
    server = await build_server(settings, model)
    port = await server.start("127.0.0.1:0")
    envoy = await start_envoy(tmp_path_factory.mktemp("ops"), port, upstream.port)
    admin = AdminServer(server.shared, "127.0.0.1:0")
    await admin.start()
    http = httpx.AsyncClient(base_url=envoy.url, timeout=30)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}", timeout=30)
    yield Ops(server, envoy, admin, http, api, upstream)
    await http.aclose()
    await api.aclose()
    await admin.stop()
    envoy.stop()
    await server.stop(1)
    await server.shared.cache.close()


async def test_stats_reports_entries_decisions_and_settings(ops: Ops) -> None:
    before = (await ops.api.get("/admin/stats")).json()
    m = fresh_model()
    assert (await ops.ask(m, "What is the tallest mountain on Earth?")).headers["x-semantic-cache"] == "miss"
    assert (await ops.ask(m, "Which is the tallest mountain on Earth?")).headers["x-semantic-cache"] == "hit"
    r = await ops.ask(m, "Anything", **{"cache-control": "no-cache, no-store"})
    assert r.headers["x-semantic-cache"] == "bypass"
    stats = (await ops.api.get("/admin/stats")).json()
    assert stats["backend"] == "memory" and stats["backend_state"] == "ready"
    assert stats["entries"] == await ops.entries() >= 1
    for outcome in ("hit", "miss", "bypass"):
        assert stats["decisions"][outcome] == before["decisions"][outcome] + 1
    assert stats["embedding_model"] == "all-MiniLM-L6-v2" and stats["dimension"] == 384
    assert stats["similarity_threshold"] == CacheSettings().similarity_threshold and stats["enabled"] is True
    assert stats["uptime_seconds"] >= before["uptime_seconds"]
    reasons = stats["bypass_reasons"]
    assert reasons["no_cache_no_store"] == before["bypass_reasons"].get("no_cache_no_store", 0) + 1
    assert sum(reasons.values()) == stats["decisions"]["bypass"] and "unknown" not in reasons
    # A guarded miss: the opposite question is above the threshold but the guard turns it down.
    assert (await ops.ask(m, "How do I turn on dark mode in Windows 11?")).headers[
        "x-semantic-cache"
    ] == "miss"
    guarded = await ops.ask(m, "How do I turn off dark mode in Windows 11?")
    assert guarded.headers["x-semantic-cache-reason"].startswith("rejected: ")
    stats = (await ops.api.get("/admin/stats")).json()
    assert stats["guard_rejections"]["opposites"] == before["guard_rejections"].get("opposites", 0) + 1
    # One hit-ratio definition: hits / (hits + misses), the same in stats and in the metric.
    d = stats["decisions"]
    assert stats["hit_ratio"] == round(d["hit"] / (d["hit"] + d["miss"]), 4)
    from prometheus_client import generate_latest

    metrics = generate_latest(ops.server.metrics.registry).decode()
    assert f"semantic_cache_hit_ratio {float(stats['hit_ratio'])}" in metrics
    cli = await admin_cli("stats", "--url", ops.url)
    assert cli.code == 0 and json.loads(cli.out)["decisions"]["hit"] >= 1


async def test_invalidate_is_a_dry_run_until_applied(ops: Ops) -> None:
    m, other = fresh_model(), fresh_model()
    await ops.ask(m, "How do I boil an egg?")
    await ops.ask(m, "What is the speed of sound?")
    await ops.ask(other, "How do I boil an egg?")
    dry = (await ops.api.post("/admin/invalidate", json={"model": m})).json()
    assert dry["dry_run"] is True and dry["matched"] == 2 and dry["deleted"] == 0
    assert {e["prompt"] for e in dry["entries"]} == {"How do I boil an egg?", "What is the speed of sound?"}
    assert "nothing was deleted" in dry["note"]
    assert (await ops.ask(m, "How do I boil an egg?")).headers["x-semantic-cache"] == "hit"

    cli = await admin_cli("invalidate", "--url", ops.url, "--model", m, "--apply")
    assert cli.code == 0, cli.err
    assert json.loads(cli.out)["deleted"] == 2 and "deleted 2 entries" in cli.err
    assert (await ops.ask(m, "How do I boil an egg?")).headers["x-semantic-cache"] == "miss"
    assert (await ops.ask(other, "How do I boil an egg?")).headers["x-semantic-cache"] == "hit"


async def test_invalidate_a_prompts_nearest_entries(ops: Ops) -> None:
    m = fresh_model()
    await ops.ask(m, "What is the capital of France?")
    await ops.ask(m, "How many legs does a spider have?")
    body = {"prompt": "What's the capital city of France?", "model": m}
    dry = (await ops.api.post("/admin/invalidate", json=body)).json()
    assert dry["matched"] == 1 and dry["entries"][0]["prompt"] == "What is the capital of France?"
    assert 0.9 <= dry["entries"][0]["similarity"] < 1.0
    wide = (await ops.api.post("/admin/invalidate", json=body | {"min_similarity": 0.0})).json()
    assert wide["matched"] == 2
    done = (await ops.api.post("/admin/invalidate", json=body | {"dry_run": False})).json()
    assert done["deleted"] == 1
    assert (await ops.ask(m, "What is the capital of France?")).headers["x-semantic-cache"] == "miss"
    assert (await ops.ask(m, "How many legs does a spider have?")).headers["x-semantic-cache"] == "hit"


async def test_invalidate_by_age_and_scope(ops: Ops) -> None:
    m = fresh_model()
    await ops.ask(m, "Why is the sky blue?")
    young = (await ops.api.post("/admin/invalidate", json={"model": m, "older_than_seconds": 3600})).json()
    assert young["matched"] == 0
    await asyncio.sleep(0.05)
    old = (await ops.api.post("/admin/invalidate", json={"model": m, "older_than_seconds": 0})).json()
    assert old["matched"] == 1
    scoped = (await ops.api.post("/admin/invalidate", json={"model": m, "scope": "header:nobody"})).json()
    assert scoped["matched"] == 0
    cli = await admin_cli("invalidate", "--url", ops.url, "--model", m, "--older-than", "1h")
    assert cli.code == 0 and json.loads(cli.out)["matched"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "give at least one of model, scope, fingerprint, older_than_seconds, prompt"),
        ({"modle": "x"}, "unknown field(s) modle"),
        ({"model": 3}, "model must be a string"),
        ({"older_than_seconds": -1}, "older_than_seconds must be a number of seconds between 0 and"),
        ({"model": "x", "dry_run": "no"}, "dry_run must be true or false"),
        ({"prompt": "x", "min_similarity": 2}, "min_similarity must be a number between 0 and 1"),
        ({"prompt": "   "}, "prompt must be a non-empty string"),
    ],
)
async def test_invalidate_rejects_bad_requests(ops: Ops, body: dict[str, Any], message: str) -> None:
    r = await ops.api.post("/admin/invalidate", json=body)
    assert r.status_code == 400 and message in r.json()["error"]


async def test_bad_json_body_is_400(ops: Ops) -> None:
    r = await ops.api.post(
        "/admin/invalidate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON object" in r.json()["error"]


async def test_export_import_round_trip_through_the_cli(ops: Ops, tmp_path: Path) -> None:
    m = fresh_model()
    prompts = ["What does DNS stand for?", "How far is the Moon?", "Who painted the Mona Lisa?"]
    answers = {p: (await ops.ask(m, p)).json()["choices"] for p in prompts}
    backup = tmp_path / "backup.jsonl"
    out = await admin_cli("export", "--url", ops.url, "--model", m, "-o", str(backup))
    assert out.code == 0, out.err
    assert f"exported 3 entries to {backup}" in out.err
    lines = backup.read_text().splitlines()
    assert len(lines) == 3 and not (tmp_path / "backup.jsonl.partial").exists()
    exported = [line_to_entry(line, 384, time.time()) for line in lines]
    assert {e.prompt for e in exported} == set(prompts)

    removed = await ops.api.post("/admin/invalidate", json={"model": m, "dry_run": False})
    assert removed.json()["deleted"] == 3
    loaded = await admin_cli("import", "--url", ops.url, stdin=backup.read_bytes())
    assert loaded.code == 0, loaded.err
    report = json.loads(loaded.out)
    assert report["imported"] == 3 and report["rejected"] == 0 and report["lines"] == 3
    assert "imported 3 of 3 lines into the memory cache" in loaded.err
    for p in prompts:
        r = await ops.ask(m, p)
        assert r.headers["x-semantic-cache"] == "hit" and r.headers["x-semantic-cache-match"] == "exact"
        assert r.json()["choices"] == answers[p]
    assert ops.upstream.chat_calls(m) == 3
    again = await admin_cli("import", "--url", ops.url, str(backup))  # idempotent
    assert again.code == 0 and json.loads(again.out)["imported"] == 3
    assert (await ops.api.post("/admin/invalidate", json={"model": m})).json()["matched"] == 3


async def test_import_reports_malformed_lines_and_applies_only_good_ones(ops: Ops, tmp_path: Path) -> None:
    m = fresh_model()
    await ops.ask(m, "What is the boiling point of water?")
    await ops.ask(m, "What is the freezing point of water?")
    text = (await ops.api.get("/admin/export", params={"model": m})).text
    good = text.splitlines()
    await ops.api.post("/admin/invalidate", json={"model": m, "dry_run": False})
    altered = json.loads(good[1]) | {"prompt": "What is the melting point of iron?"}
    body = "\n".join(
        [
            good[0],
            "this is not json",
            json.dumps(altered),
            json.dumps(json.loads(good[1]) | {"vector": [0.1] * 768}),
            "",
            good[1][: len(good[1]) // 2],
        ]
    )
    r = await ops.api.post("/admin/import", content=body.encode(), headers=NDJSON)
    assert r.status_code == 200
    report = r.json()
    assert report["imported"] == 1 and report["rejected"] == 4 and report["lines"] == 5
    reasons = {x["line"]: x["reason"] for x in report["rejections"]}
    assert set(reasons) == {2, 3, 4, 6}
    assert "not valid JSON" in reasons[2] and "not valid JSON" in reasons[6]
    assert "exact_key does not match" in reasons[3]
    assert "vector has 768 dimensions" in reasons[4] and "--reembed" in reasons[4]
    dry = (await ops.api.post("/admin/invalidate", json={"model": m})).json()
    assert dry["matched"] == 1 and dry["entries"][0]["prompt"] == "What is the boiling point of water?"

    (tmp_path / "bad.jsonl").write_text(body)
    cli = await admin_cli("import", "--url", ops.url, str(tmp_path / "bad.jsonl"))
    assert cli.code == 1
    assert "line 3: exact_key does not match" in cli.err and "4 rejected" in cli.err


async def test_flush_needs_confirmation(ops: Ops) -> None:
    await ops.ask(fresh_model(), "How many continents are there?")
    n = await ops.entries()
    refused = await ops.api.post("/admin/flush", json={})
    assert refused.status_code == 400
    assert (
        f"flush deletes {n} entries" in refused.json()["error"] and '"flush-all"' in refused.json()["error"]
    )
    assert (await ops.api.post("/admin/flush", json={"confirm": "yes"})).status_code == 400
    cli = await admin_cli("flush", "--url", ops.url)
    assert cli.code == 1 and "--yes" in cli.err
    assert await ops.entries() == n
    done = await admin_cli("flush", "--url", ops.url, "--yes")
    assert done.code == 0 and json.loads(done.out)["deleted"] == n
    assert await ops.entries() == 0


async def test_export_of_an_empty_cache(ops: Ops) -> None:
    await ops.api.post("/admin/flush", json={"confirm": "flush-all"})
    r = await ops.api.get("/admin/export")
    assert r.status_code == 200 and r.text == "" and r.headers["x-semantic-cache-entries"] == "0"
    assert r.headers["content-type"] == "application/x-ndjson"
    cli = await admin_cli("export", "--url", ops.url)
    assert cli.code == 0 and cli.out == "" and "exported 0 entries to stdout" in cli.err
    empty = await admin_cli("import", "--url", ops.url, stdin=b"")
    assert empty.code == 0 and json.loads(empty.out)["lines"] == 0


async def test_pass_through_switch_and_live_config(ops: Ops, tmp_path: Path) -> None:
    m = fresh_model()
    await ops.ask(m, "What is a lighthouse for?")
    off = await admin_cli("disable", "--url", ops.url)
    assert off.code == 0 and json.loads(off.out) == {"enabled": False, "changed": True}
    try:
        r = await ops.ask(m, "What is a lighthouse for?")
        assert r.headers["x-semantic-cache"] == "bypass"  # straight upstream: no lookup, no store
        assert ops.upstream.chat_calls(m) == 2
        assert (await ops.api.get("/admin/stats")).json()["enabled"] is False
    finally:
        assert (await ops.api.post("/admin/enabled", json={"enabled": True})).json()["changed"] is True
    assert (await ops.ask(m, "What is a lighthouse for?")).headers["x-semantic-cache"] == "hit"
    assert (await ops.api.post("/admin/enabled", json={})).status_code == 400

    # The same switch from the config file (a ConfigMap updated in place), no restart.
    config = tmp_path / "config.yaml"
    keep = "  revision_header: x-model-revision\n"  # as the fixture's settings
    config.write_text("semantic_cache:\n  enabled: true\n" + keep)
    watcher = ConfigWatcher(ops.server.shared, str(config), interval=0.05)
    watcher.start()
    try:
        config.write_text("semantic_cache:\n  enabled: false\n  revision: r7\n" + keep)
        await wait_for(lambda: not ops.server.shared.settings.enabled)
        assert ops.server.shared.settings.revision == "r7"
        assert (await ops.ask(m, "What is a lighthouse for?")).headers["x-semantic-cache"] == "bypass"
        # Invalid: the running settings stay, and the log, /readyz and a metric say so.
        shared = ops.server.shared
        port = ops.server.management_port or await ops.server.start_management("127.0.0.1:0")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as mgmt:
            config.write_text("semantic_cache:\n  enabled: [oops\n")
            await wait_for(lambda: bool(shared.config_error))
            assert f"{config}:3:1: not valid YAML" in shared.config_error
            assert "running with the last good settings" in shared.config_error
            assert not shared.settings.enabled and shared.settings.revision == "r7"
            ready = (await mgmt.get("/readyz")).json()
            assert ready["config_error"] == shared.config_error and ready["serving"] is True
            assert ready["caching"] is False and ready["not_caching_because"] == "disabled (enabled: false)"
            assert "semantic_cache_config_valid 0.0" in (await mgmt.get("/metrics")).text
            config.write_text("semantic_cache:\n  similarity_threshold: 3\n" + keep)  # out of range
            await wait_for(lambda: "similarity_threshold" in shared.config_error)
            assert not shared.settings.enabled
            config.write_text("semantic_cache:\n  enabled: true\n" + keep)
            await wait_for(lambda: ops.server.shared.settings.enabled)
            assert shared.settings.revision == "" and shared.config_error == ""
            assert (await mgmt.get("/readyz")).json()["config_error"] == ""
            assert "semantic_cache_config_valid 1.0" in (await mgmt.get("/metrics")).text
    finally:
        await watcher.stop()
    assert (await ops.ask(m, "What is a lighthouse for?")).headers["x-semantic-cache"] == "hit"


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    """Poll ``condition()`` until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_revision_partitions_answers(ops: Ops) -> None:
    m = fresh_model()
    prompt = "Summarize the plot of Hamlet."
    assert (await ops.ask(m, prompt, **{"x-model-revision": "w1"})).headers["x-semantic-cache"] == "miss"
    assert (await ops.ask(m, prompt, **{"x-model-revision": "w1"})).headers["x-semantic-cache"] == "hit"
    assert (await ops.ask(m, prompt, **{"x-model-revision": "w2"})).headers["x-semantic-cache"] == "miss"
    assert (await ops.ask(m, prompt)).headers["x-semantic-cache"] == "miss"  # configured revision ""
    assert ops.upstream.chat_calls(m) == 3
    cfg = load_config_text("semantic_cache:\n  revision: '2024-06-01'\n", {"SEMANTIC_CACHE_REVISION": "w9"})
    assert cfg.revision == "w9"  # the environment overrides the file


def load_config_text(text: str, env: dict[str, str]) -> CacheSettings:
    """Parse config text with an environment."""
    import yaml

    from extproc.config.settings import parse_config

    return parse_config(yaml.safe_load(text), env=env)


async def test_bearer_token(ops: Ops) -> None:
    admin = AdminServer(ops.server.shared, "127.0.0.1:0", token=TOKEN)
    await admin.start()
    url = f"http://127.0.0.1:{admin.port}"
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            missing = await client.get("/admin/stats")
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert "SEMANTIC_CACHE_ADMIN_TOKEN" in missing.json()["error"]
            wrong = await client.get("/admin/stats", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
            refused = await client.post("/admin/flush", json={"confirm": "flush-all"})
            assert refused.status_code == 401
            good = await client.get("/admin/stats", headers={"authorization": f"Bearer {TOKEN}"})
            assert good.status_code == 200 and good.json()["backend"] == "memory"
        denied = await admin_cli("stats", "--url", url)
        assert denied.code == 1 and "answered 401" in denied.err
        allowed = await admin_cli("stats", "--url", url, env={"SEMANTIC_CACHE_ADMIN_TOKEN": TOKEN})
        assert allowed.code == 0 and json.loads(allowed.out)["backend"] == "memory"
    finally:
        await admin.stop()


def test_non_loopback_address_needs_a_token() -> None:
    for address in ("0.0.0.0:9191", "10.1.2.3:9191", "[::]:9191", "admin.example:9191"):
        with pytest.raises(
            ConfigError, match="not loopback, without a token: set SEMANTIC_CACHE_ADMIN_TOKEN"
        ):
            check_admin_address(address, None)
        check_admin_address(address, TOKEN)
    for address in ("127.0.0.1:9191", "localhost:9191", "[::1]:9191", "127.0.0.9:1"):
        check_admin_address(address, None)


async def test_serve_refuses_a_public_admin_address_without_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SEMANTIC_CACHE_ADMIN_TOKEN"}
    env |= {
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"0.0.0.0:{free_port()}",
        "SEMANTIC_CACHE_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  backend_type: memory\n")
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        python_exe(), "-m", "extproc.cli", "serve", "--config", str(config),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert "not loopback, without a token" in out.decode()
    assert time.monotonic() - started < 20  # refused before the model loads


async def test_unreachable_admin_api_says_what_to_do() -> None:
    r = await admin_cli("stats", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.code == 1 and "cannot reach the admin API" in r.err and "kubectl port-forward" in r.err


def test_admin_address_setting_and_env_override() -> None:
    cfg = load_config_text(
        "semantic_cache:\n  server:\n    admin_address: 127.0.0.1:9200\n",
        {"SEMANTIC_CACHE_ADMIN_ADDRESS": "0.0.0.0:9300"},
    )
    assert cfg.server.admin_address == "0.0.0.0:9300"
    assert CacheSettings().server.admin_address == "127.0.0.1:9191"
    with pytest.raises(ConfigError, match="admin_address"):
        load_config_text("semantic_cache:\n  server:\n    admin_address: nowhere\n", {})
    with pytest.raises(ConfigError, match="revision_header"):
        load_config_text("semantic_cache:\n  revision_header: 'bad header'\n", {})
    assert load_config(ROOT / "config" / "config.yaml").server.admin_address == "127.0.0.1:9191"
