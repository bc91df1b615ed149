"""The CLI as users run it: ``run`` with the demo upstream, ``serve`` killed under Envoy,
and the Envoy template validated by the real binary."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest

from extproc.cli.envoy import render_envoy_config, validate_envoy_config
from extproc.errors import ConfigError
from tests.conftest import free_port, start_envoy
from tests.support import upstream as fake
from tests.support.processes import cli, serve_env, stop, wait_port

pytestmark = pytest.mark.integration


def test_envoy_template_validates(tmp_path: Path) -> None:
    for url, tracing in (("http://127.0.0.1:8000", "false"), ("https://llm.example.internal:443", "true")):
        config = tmp_path / "envoy.yaml"
        config.write_text(render_envoy_config({"UPSTREAM_URL": url, "ENVOY_TRACING": tracing}))
        checked = validate_envoy_config(config)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "transport_socket:" in render_envoy_config({"UPSTREAM_URL": "https://x:443"})
    assert "transport_socket:" not in render_envoy_config({"UPSTREAM_URL": "http://x:80"})
    assert "otel_collector" in render_envoy_config({"UPSTREAM_URL": "http://x", "ENVOY_TRACING": "true"})


async def test_run_serves_miss_then_hit_with_demo_upstream(tmp_path: Path) -> None:
    port, admin, grpc_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "UPSTREAM_URL"} | {
        "ENVOY_LISTEN_PORT": str(port),
        "ENVOY_ADMIN_PORT": str(admin),
        "SEMANTIC_CACHE_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    log = tmp_path / "run.log"
    process = cli("run", env=env, log=log)
    try:
        await wait_port(port, process, log)
        body = {
            "model": "demo",
            "messages": [{"role": "user", "content": "Explain what an ext_proc filter does"}],
        }
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            miss = await client.post("/v1/chat/completions", json=body)
            assert miss.headers["x-semantic-cache"] == "miss"
            assert "demo upstream" in miss.json()["choices"][0]["message"]["content"]
            for _ in range(50):
                hit = await client.post("/v1/chat/completions", json=body)
                if hit.headers["x-semantic-cache"] == "hit":
                    break
                await asyncio.sleep(0.1)
            assert hit.headers["x-semantic-cache"] == "hit"
            assert hit.json()["choices"] == miss.json()["choices"]
    finally:
        code = stop(process, signal.SIGINT)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "DEMO upstream" in text and "UPSTREAM_URL=http://127.0.0.1:8000" in text
    assert "ext_proc filter does" not in text  # prompts never reach the logs at info level


async def test_processor_killed_requests_still_succeed(tmp_path: Path) -> None:
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    grpc_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f'semantic_cache:\n  server:\n    grpc_address: "127.0.0.1:{grpc_port}"\n')
    env = serve_env()
    log = tmp_path / "serve.log"
    processor = cli("serve", "--config", str(config), env=env, log=log)
    envoy = None
    try:
        await wait_port(grpc_port, processor, log)
        envoy = await start_envoy(tmp_path, grpc_port, state.port)
        body = {"model": "kill-test", "messages": [{"role": "user", "content": "Is the cache optional?"}]}
        async with httpx.AsyncClient(base_url=envoy.url, timeout=30) as client:
            assert (await client.post("/v1/chat/completions", json=body)).headers[
                "x-semantic-cache"
            ] == "miss"
            await asyncio.sleep(0.3)
            assert (await client.post("/v1/chat/completions", json=body)).headers["x-semantic-cache"] == "hit"
            processor.kill()
            processor.wait(10)
            for i in range(10):
                r = await client.post("/v1/chat/completions", json=dict(body, n=i + 1))
                assert r.status_code == 200
                assert "x-semantic-cache" not in r.headers  # straight to the upstream
            assert state.chat_calls("kill-test") == 11
            processor = cli("serve", "--config", str(config), env=env, log=tmp_path / "serve2.log")
            await wait_port(grpc_port, processor, tmp_path / "serve2.log")
            await asyncio.sleep(0.5)
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            assert r.headers["x-semantic-cache"] == "miss"  # memory cache starts empty
    finally:
        stop(processor)
        if envoy is not None:
            envoy.stop()
        await runner.cleanup()


def test_run_refuses_an_envoy_config_error_before_starting_anything(tmp_path: Path) -> None:
    """A bad UPSTREAM_URL was found after the model, listeners and demo upstream had started; run
    then exited with "Event loop is closed" tracebacks and listeners never stopped. Now: one line,
    exit 2, from any working directory (the template is found from the package too)."""
    env = {k: v for k, v in os.environ.items() if k != "SEMANTIC_CACHE_ENVOY_TEMPLATE"} | {
        "UPSTREAM_URL": "ftp://llm:8000",
        "ENVOY_LISTEN_PORT": str(free_port()),
        "ENVOY_ADMIN_PORT": str(free_port()),
        "SEMANTIC_CACHE_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    log = tmp_path / "run.log"
    config = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    process = cli("run", "--config", str(config), env=env, log=log, cwd=tmp_path)
    assert process.wait(60) == 2
    text = log.read_text()
    assert "configuration error: UPSTREAM_URL must look like http://host:port" in text
    assert "Traceback" not in text and "model ready" not in text


def test_template_switches_read_true_or_false_and_refuse_the_rest() -> None:
    """``STRIP_SCOPE_HEADER=True`` once dropped the block that strips the client's tenant header
    (any client could pick its tenant); every switch now reads true / false in any case, empty as
    its default, and refuses anything else."""
    base = {"UPSTREAM_URL": "https://x:443", "SCOPE_HEADER": "x-tenant-id"}
    strips = render_envoy_config(base)
    for value in ("true", "True", " TRUE ", ""):
        assert render_envoy_config(base | {"STRIP_SCOPE_HEADER": value}) == strips, value
    assert render_envoy_config(base | {"STRIP_SCOPE_HEADER": "False"}) != strips
    verified = render_envoy_config(base | {"UPSTREAM_TLS_VERIFY": "TRUE"})
    assert verified == strips and render_envoy_config(base | {"UPSTREAM_TLS_VERIFY": "false"}) != verified
    refused = (("STRIP_SCOPE_HEADER", "1"), ("UPSTREAM_TLS_VERIFY", "yes"), ("ENVOY_STATS", "maybe"))
    for name, value in refused:
        with pytest.raises(ConfigError, match=name):
            render_envoy_config(base | {name: value})
