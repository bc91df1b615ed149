"""The users' runbook, migrate → rollback → migrate again, with real processes and a real Milvus.

``semantic-cache serve`` runs as the chart runs it: working directory ``app/`` with
``config/config.yaml`` and ``config/semantic-cache/milvus.yaml`` below it, listen addresses from
the environment. config.yaml is written exactly as each runbook step leaves it: its routing
snippet (``backend_type`` and ``backend_config_path``), its rollback patch (the whole file
replaced by ``backend_type: "memory"``), then the same step-3 edit on that file, which leaves
``backend_type: "milvus"`` alone. milvus.yaml is the runbook's ConfigMap (the shipped file is the
same text) with the host and port of the test server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, MilvusServer, free_port, python_exe, start_envoy
from tests.integration.test_operations_procedure import ask_all, collection_count, drop_collection
from tests.support import upstream as fake
from tests.support.admin_helpers import admin_cli
from tests.support.processes import cli, stop, wait_port

pytestmark = pytest.mark.integration

RUNBOOK_HOST = "milvus-semantic-cache.vllm-semantic-router-system.svc.cluster.local"
# Step 3, "更新路由配置": the routing config with both keys.
MIGRATE = (
    'semantic_cache:\n  backend_type: "milvus"\n  backend_config_path: "config/semantic-cache/milvus.yaml"\n'
)
# The rollback: kubectl patch … -p '{"data":{"config.yaml":"semantic_cache:\n backend_type: \"memory\""}}'
ROLLBACK = json.loads(r'{"config.yaml":"semantic_cache:\n backend_type: \"memory\""}')["config.yaml"]
# Step 3 again, on the file the rollback left: backend_type edited back, nothing else.
MIGRATE_AGAIN = ROLLBACK.replace('"memory"', '"milvus"')
COLLECTION = "semantic_cache"  # the runbook's collection name
PROMPTS = ["Hello", "What is a vector database?", "How do I restart a Kubernetes deployment?"]


class Pod:
    """The processor container: ``serve`` from /app, restarted by ``kubectl rollout restart``."""

    def __init__(self, tmp: Path, milvus: MilvusServer) -> None:
        self.app = tmp / "app"
        (self.app / "config" / "semantic-cache").mkdir(parents=True)
        shipped = (ROOT / "config" / "semantic-cache" / "milvus.yaml").read_text()
        assert RUNBOOK_HOST in shipped and "port: 19530" in shipped
        port = milvus.uri.rpartition(":")[2]
        text = shipped.replace(RUNBOOK_HOST, "127.0.0.1").replace("port: 19530", f"port: {port}")
        (self.app / "config" / "semantic-cache" / "milvus.yaml").write_text(text)
        self.config = self.app / "config" / "config.yaml"
        self.grpc, self.admin, self.metrics = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.admin}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SEMANTIC_CACHE_")} | {
            "SEMANTIC_CACHE_CONFIG": str(self.config),
            "SEMANTIC_CACHE_GRPC_ADDRESS": f"127.0.0.1:{self.grpc}",
            "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{self.metrics}",
            "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{self.admin}",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """``semantic-cache check-config`` as the pod runs it (working directory /app)."""
        return subprocess.run(
            [python_exe(), "-m", "extproc.cli", "check-config"],
            cwd=self.app,
            env=self.env | {"PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def rollout_restart(self) -> str:
        """Stop (SIGTERM) and start ``serve``; wait for a ready backend; return the start's log."""
        if self.process is not None:
            assert stop(self.process) == 0
        log = self.app.parent / f"serve-{len(self.logs)}.log"
        self.logs.append(log)
        self.process = cli("serve", env=self.env, log=log, cwd=self.app)
        await wait_port(self.admin, self.process, log)
        await wait_port(self.grpc, self.process, log)
        deadline = time.monotonic() + 90
        while (stats := await self.stats())["backend_state"] != "ready":
            assert self.process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.2)
        return log.read_text()

    async def stats(self) -> dict[str, Any]:
        """``semantic-cache admin stats``."""
        result = await admin_cli("stats", "--url", self.url)
        assert result.code == 0, result.err
        return json.loads(result.out)

    def close(self) -> None:
        """Stop the processor."""
        if self.process is not None:
            stop(self.process)


def headers(responses: list[httpx.Response]) -> list[str]:
    """The x-semantic-cache header of each response."""
    return [r.headers["x-semantic-cache"] for r in responses]


async def test_migrate_rollback_and_migrate_again(
    milvus_server: MilvusServer, upstream: fake.FakeUpstream, tmp_path: Path
) -> None:
    drop_collection(milvus_server, COLLECTION)
    pod = Pod(tmp_path, milvus_server)
    model = "runbook-model"
    envoy = None
    try:
        # Before: the chart's memory-backed config.yaml.
        pod.config.write_text(
            'semantic_cache:\n  backend_type: "memory"\n'
            '  backend_config_path: "config/semantic-cache/milvus.yaml"\n'
        )
        await pod.rollout_restart()
        envoy = await start_envoy(tmp_path, pod.grpc, upstream.port)
        client = httpx.AsyncClient(base_url=envoy.url, timeout=30)

        # Step 3-4: the routing snippet, restart: answers are stored in Milvus and served from it.
        pod.config.write_text(MIGRATE)
        log = await pod.rollout_restart()
        assert f"collection {COLLECTION} created" in log
        assert headers(await ask_all(client, model, PROMPTS)) == ["miss"] * len(PROMPTS)
        await asyncio.sleep(0.5)  # stores run after the response
        assert headers(await ask_all(client, model, PROMPTS)) == ["hit"] * len(PROMPTS)
        stats = await pod.stats()
        assert stats["backend"] == "milvus" and stats["entries"] == len(PROMPTS)

        # Rollback: the patch replaces config.yaml, restart: memory, Milvus keeps its data.
        pod.config.write_text(ROLLBACK)
        await pod.rollout_restart()
        assert (await pod.stats())["backend"] == "memory"
        assert headers(await ask_all(client, model, PROMPTS[:1])) == ["miss"]
        assert collection_count(milvus_server, COLLECTION) == len(PROMPTS)

        # Migrate again: backend_type: "milvus" alone (no backend_config_path: the default).
        pod.config.write_text(MIGRATE_AGAIN)
        assert "backend_config_path" not in pod.config.read_text()
        checked = pod.check_config()
        assert checked.returncode == 0, checked.stderr
        assert "backend_config_path: config/semantic-cache/milvus.yaml" in checked.stdout
        log = await pod.rollout_restart()
        assert f"collection={COLLECTION} (reused)" in log
        stats = await pod.stats()
        assert stats["backend"] == "milvus" and stats["entries"] == len(PROMPTS)
        calls = upstream.chat_calls(model)
        back = await ask_all(client, model, PROMPTS)
        assert headers(back) == ["hit"] * len(PROMPTS)
        assert upstream.chat_calls(model) == calls  # served from Milvus, the LLM never called
        assert pod.process is not None and pod.process.poll() is None  # no crash loop
        await client.aclose()
    finally:
        pod.close()
        if envoy is not None:
            envoy.stop()
        drop_collection(milvus_server, COLLECTION)
