"""A planted Milvus password never appears in any output: check-config, logs, spans, admin, health, errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, MilvusServer, free_port, milvus_yaml, python_exe, start_envoy
from tests.integration.test_operations_procedure import drop_collection
from tests.support import upstream as fake
from tests.support.admin_helpers import admin_cli, chat
from tests.support.processes import cli, stop, wait_port

pytestmark = pytest.mark.integration


def check_config(path: Path, env: dict[str, str]) -> str:
    """stdout and stderr of ``semantic-cache check-config PATH``."""
    done = subprocess.run(
        [python_exe(), "-m", "extproc.cli", "check-config", str(path)],
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


async def test_planted_password_is_never_printed(
    milvus_server: MilvusServer, upstream: fake.FakeUpstream, tmp_path: Path
) -> None:
    planted = f"S3cretPw-{uuid.uuid4().hex[:8]}"
    name = f"secrets_{uuid.uuid4().hex[:8]}"
    auth = {"enabled": True, "username": "root", "password": "${MILVUS_PASSWORD}"}
    cfg = milvus_yaml(tmp_path / "milvus.yaml", milvus_server.uri, name, connection={"auth": auth})
    config = tmp_path / "config.yaml"
    config.write_text(f'semantic_cache:\n  backend_type: "milvus"\n  backend_config_path: "{cfg}"\n')
    grpc, admin, mgmt = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMANTIC_CACHE_", "OTEL_"))} | {
        "MILVUS_PASSWORD": planted,
        "SEMANTIC_CACHE_GRPC_ADDRESS": f"127.0.0.1:{grpc}",
        "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{mgmt}",
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{admin}",
        "LOG_LEVEL": "debug",  # the most a log can say
        "OTEL_TRACES_EXPORTER": "compact",  # spans on stderr, into the same log
    }
    outputs = [check_config(config, env), check_config(cfg, env)]
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("timeout: 10", "timeout: -1"))
    outputs.append(check_config(bad, env))  # an error report
    assert "OK" in outputs[0] and "OK" in outputs[1] and "connection.timeout" in outputs[2]

    log = tmp_path / "serve.log"
    process = cli("serve", "--config", str(config), env=env, log=log)
    envoy = None
    try:
        await wait_port(grpc, process, log)
        async with httpx.AsyncClient(timeout=30) as client:
            deadline = time.monotonic() + 90
            while (await client.get(f"http://127.0.0.1:{mgmt}/readyz")).json()["backend_state"] != "ready":
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                await asyncio.sleep(0.2)
            envoy = await start_envoy(tmp_path, grpc, upstream.port)
            model = f"secret-{uuid.uuid4().hex[:6]}"
            for prompt in ("What is the boiling point of water?", "What is the boiling point of water?"):
                r = await client.post(f"{envoy.url}/v1/chat/completions", json=chat(model, prompt))
                outputs.append(str(dict(r.headers)) + r.text)
                await asyncio.sleep(0.3)
            assert r.headers["x-semantic-cache"] == "hit"
            for path in ("/readyz", "/metrics", "/healthz"):
                outputs.append((await client.get(f"http://127.0.0.1:{mgmt}{path}")).text)
        stats = await admin_cli("stats", "--url", f"http://127.0.0.1:{admin}")
        outputs += [stats.out, stats.err]
    finally:
        assert stop(process) == 0
        if envoy is not None:
            envoy.stop()
        drop_collection(milvus_server, name)
    text = log.read_text()
    assert "span semantic_cache.request" in text and "connecting to Milvus at" in text
    outputs.append(text)
    for output in outputs:
        assert planted not in output
