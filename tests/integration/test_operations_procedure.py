"""The README's Operations procedures, step by step, with real processes and a real Milvus.

Memory → Milvus migration (export, switch backend_type, restart, import), the backup drill
(export, drop the collection, restart, import, every entry hits with the same answer) and the
rollback to memory (the collection is untouched and reused when switching back).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MilvusServer, free_port, milvus_yaml, start_envoy
from tests.support import upstream as fake
from tests.support.admin_helpers import admin_cli, chat
from tests.support.processes import cli, stop, wait_port

pytestmark = pytest.mark.integration

PROMPTS = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
    "Who wrote Pride and Prejudice?",
    "What is the boiling point of water at sea level?",
]


class Processor:
    """``semantic-cache serve`` restarted the way an operator does (same config file, same ports)."""

    def __init__(self, tmp: Path, milvus_cfg: Path) -> None:
        self.tmp = tmp
        self.config = tmp / "config.yaml"
        self.milvus_cfg = milvus_cfg
        self.grpc, self.admin = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.admin}"
        self.env = {k: v for k, v in os.environ.items() if k != "SEMANTIC_CACHE_ADMIN_TOKEN"} | {
            "SEMANTIC_CACHE_GRPC_ADDRESS": f"127.0.0.1:{self.grpc}",
            "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
            "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{self.admin}",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def set_backend(self, backend: str) -> None:
        """Write config.yaml with ``backend_type`` (the ConfigMap edit)."""
        self.config.write_text(
            "semantic_cache:\n"
            f'  backend_type: "{backend}"\n'
            f'  backend_config_path: "{self.milvus_cfg}"\n'
            "  eviction_policy: fifo\n"
            "  max_added_latency_ms: 0\n"  # the drill checks the data: no lookup shed on a busy machine
        )

    async def restart(self) -> None:
        """Stop (SIGTERM) and start again; wait for the admin API and a ready backend."""
        if self.process is not None:
            assert stop(self.process) == 0
        self.runs += 1
        log = self.tmp / f"serve-{self.runs}.log"
        self.process = cli("serve", "--config", str(self.config), env=self.env, log=log)
        await wait_port(self.admin, self.process, log)
        await wait_port(self.grpc, self.process, log)
        deadline = time.monotonic() + 60
        while (stats := await self.stats())["backend_state"] != "ready":
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.2)

    async def stats(self) -> dict[str, Any]:
        """``semantic-cache admin stats``."""
        result = await admin_cli("stats", "--url", self.url)
        assert result.code == 0, result.err
        return json.loads(result.out)

    def close(self) -> None:
        """Stop the processor."""
        if self.process is not None:
            stop(self.process)


async def ask_all(client: httpx.AsyncClient, model: str, prompts: list[str]) -> list[httpx.Response]:
    """Send each prompt once, in order."""
    return [await client.post("/v1/chat/completions", json=chat(model, p)) for p in prompts]


def collection_count(server: MilvusServer, name: str) -> int | None:
    """Entities in collection ``name`` (None when it does not exist)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, timeout=30)
    try:
        if not client.has_collection(name):
            return None
        rows = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])
    finally:
        client.close()


def drop_collection(server: MilvusServer, name: str) -> None:
    """What an operator's wipe does (pymilvus or Attu)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, timeout=30)
    try:
        if client.has_collection(name):
            client.drop_collection(name)
    finally:
        client.close()


def answers(responses: list[httpx.Response]) -> list[Any]:
    """The choices of each response."""
    return [r.json()["choices"] for r in responses]


async def test_migration_backup_restore_and_rollback(
    milvus_server: MilvusServer, upstream: fake.FakeUpstream, tmp_path: Path
) -> None:
    name = f"ops_proc_{uuid.uuid4().hex[:8]}"
    model = f"proc-{uuid.uuid4().hex[:6]}"
    cfg = milvus_yaml(
        tmp_path / "milvus.yaml", milvus_server.uri, name, search={"consistency_level": "Session"}
    )
    proc = Processor(tmp_path, cfg)
    envoy = None
    try:
        # The running memory-backed instance has answers worth keeping.
        proc.set_backend("memory")
        await proc.restart()
        envoy = await start_envoy(tmp_path, proc.grpc, upstream.port)
        client = httpx.AsyncClient(base_url=envoy.url, timeout=30)
        first = await ask_all(client, model, PROMPTS)
        assert {r.headers["x-semantic-cache"] for r in first} == {"miss"}
        await asyncio.sleep(0.5)  # stores run after the response
        assert (await proc.stats())["entries"] == len(PROMPTS)

        # Migration 1: export from the memory-backed instance.
        export = await admin_cli("export", "--url", proc.url, "-o", str(tmp_path / "cache.jsonl"))
        assert export.code == 0 and f"exported {len(PROMPTS)} entries" in export.err
        # 2-3: backend_type: milvus, restart (the collection is created empty).
        proc.set_backend("milvus")
        await proc.restart()
        stats = await proc.stats()
        assert stats["backend"] == "milvus" and stats["entries"] == 0
        # 4: import into the now Milvus-backed instance.
        imported = await admin_cli("import", "--url", proc.url, str(tmp_path / "cache.jsonl"))
        assert imported.code == 0, imported.err
        assert json.loads(imported.out)["imported"] == len(PROMPTS)
        # 5: hits for the exported prompts right away, and for a paraphrase.
        hits = await ask_all(client, model, PROMPTS)
        assert [r.headers["x-semantic-cache"] for r in hits] == ["hit"] * len(PROMPTS)
        assert answers(hits) == answers(first)
        para = await ask_all(client, model, ["What's the capital city of France?"])
        assert para[0].headers["x-semantic-cache-match"] == "semantic"
        assert upstream.chat_calls(model) == len(PROMPTS)

        # Backup drill: export, wipe (drop the collection), restart, import, verify.
        backup = tmp_path / "backup.jsonl"
        assert (await admin_cli("export", "--url", proc.url, "-o", str(backup))).code == 0
        before = {json.loads(line)["exact_key"]: line for line in backup.read_text().splitlines()}
        assert len(before) == len(PROMPTS)
        drop_collection(milvus_server, name)
        await proc.restart()
        assert (await proc.stats())["entries"] == 0
        restored = await admin_cli("import", "--url", proc.url, str(backup))
        assert restored.code == 0 and json.loads(restored.out)["imported"] == len(PROMPTS)
        after = await admin_cli("export", "--url", proc.url)
        assert {json.loads(line)["exact_key"]: line for line in after.out.splitlines()} == before
        again = await ask_all(client, model, PROMPTS)
        assert [r.headers["x-semantic-cache"] for r in again] == ["hit"] * len(PROMPTS)
        assert answers(again) == answers(first)

        # Rollback: backend_type: memory, restart; the collection is left as it is.
        proc.set_backend("memory")
        await proc.restart()
        assert (await proc.stats())["backend"] == "memory"
        assert (await ask_all(client, model, PROMPTS[:1]))[0].headers["x-semantic-cache"] == "miss"
        assert collection_count(milvus_server, name) == len(PROMPTS)
        # Switching to Milvus again reuses the collection: hits with no import.
        proc.set_backend("milvus")
        await proc.restart()
        assert (await proc.stats())["entries"] == len(PROMPTS)
        back = await ask_all(client, model, PROMPTS)
        assert [r.headers["x-semantic-cache"] for r in back] == ["hit"] * len(PROMPTS)
        await client.aclose()
    finally:
        proc.close()
        if envoy is not None:
            envoy.stop()
        drop_collection(milvus_server, name)
