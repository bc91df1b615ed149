"""The `helm test` script (charts/semantic-cache/files/helm-test.py) against real processes: a real
``semantic-cache serve`` behind a real Envoy in front of the fake upstream, as the hook pod sees
the release's Services."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import start_envoy
from tests.support import upstream as fake
from tests.support.processes import Serving, start_serve, stop, unreachable_milvus

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "charts" / "semantic-cache" / "files" / "helm-test.py"


def run_script(envoy_url: str, serving: Serving, **env: str) -> subprocess.CompletedProcess[str]:
    """The script as the hook pod runs it (standard library only, settings in the environment)."""
    variables = {
        "CHAT_URL": f"{envoy_url}/v1/chat/completions",
        "READY_URL": f"{serving.metrics_url}/readyz",
        "MODEL": "helm-test-model",
        "SCOPE_MODE": "global",
        "READY_TIMEOUT_SECONDS": "30",
    } | env
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT)],
        env=variables,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    """A fresh fake upstream."""
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    yield state.port
    await runner.cleanup()


async def test_miss_then_hit_through_envoy(tmp_path: Path, upstream_port: int) -> None:
    serving = start_serve(tmp_path, {"backend_type": "memory"})
    envoy = await start_envoy(tmp_path, serving.grpc_port, upstream_port)
    try:
        # In a thread: the fake upstream answers on this test's event loop.
        result = await asyncio.to_thread(run_script, envoy.url, serving)
        second = await asyncio.to_thread(
            run_script, envoy.url, serving
        )  # a new prompt per run: a miss again, never a stale hit
    finally:
        envoy.stop()
        stop(serving.process)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "request 1: HTTP 200, x-semantic-cache: miss" in result.stdout
    assert "OK: miss then hit (similarity 1.0000)" in result.stdout
    assert second.returncode == 0 and "x-semantic-cache: miss" in second.stdout.splitlines()[0]


async def test_backend_not_ready_fails_with_the_reason(tmp_path: Path, upstream_port: int) -> None:
    serving = start_serve(tmp_path, unreachable_milvus(tmp_path))
    envoy = await start_envoy(tmp_path, serving.grpc_port, upstream_port)
    try:
        result = await asyncio.to_thread(run_script, envoy.url, serving, READY_TIMEOUT_SECONDS="1")
        header_mode = await asyncio.to_thread(
            run_script, envoy.url, serving, READY_TIMEOUT_SECONDS="0", SCOPE_MODE="header"
        )
    finally:
        envoy.stop()
        stop(serving.process)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "waiting for the cache backend:" in result.stdout
    assert "x-semantic-cache: bypass" in result.stdout
    assert "FAIL: bypass: the backend is not ready:" in result.stdout
    # The processor runs in global scope here, so the header mode's explanation is the script's
    # own reading of the chart's values; it still exits 0 as the entry point answered.
    assert header_mode.returncode == 0 and "OK (bypass): scope.mode=header" in header_mode.stdout
