"""Envoy's own metrics (ENVOY_STATS, the chart's envoy.metrics): a real Envoy whose processor is
down still answers (failure_mode_allow), and its metrics port is the one place that counts it.
Only ``GET /stats/prometheus`` of the admin API is reachable there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from tests.chart.helpers import monitoring_queries
from tests.conftest import Envoy, free_port, start_envoy
from tests.support import upstream as fake
from tests.support.promql import exported, metric_names

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Is anyone there?"}]}


@dataclass
class StatsStack:
    """Envoy with its metrics listener, a processor port nobody listens on, a fake LLM."""

    envoy: Envoy
    stats_url: str
    upstream: fake.FakeUpstream


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[StatsStack]:
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    stats_port = free_port()
    closed = free_port()  # the processor: not running
    envoy = await start_envoy(
        tmp_path, closed, state.port, ENVOY_STATS="true", ENVOY_STATS_PORT=str(stats_port)
    )
    try:
        yield StatsStack(envoy, f"http://127.0.0.1:{stats_port}", state)
    finally:
        envoy.stop()
        await runner.cleanup()


def ext_proc_counters(text: str) -> dict[str, float]:
    """The llm listener's ext_proc counters of an exposition, by name."""
    counters = {}
    for line in text.splitlines():
        if line.startswith("envoy_http_ext_proc_") and 'envoy_http_conn_manager_prefix="llm"' in line:
            name, value = line.split("{", 1)[0], line.rsplit(" ", 1)[1]
            counters[name] = float(value)
    return counters


async def test_requests_sent_on_without_the_processor_are_counted(stack: StatsStack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(3):
            answered = await client.post(f"{stack.envoy.url}/v1/chat/completions", json=CHAT)
            assert answered.status_code == 200 and "x-semantic-cache" not in answered.headers
        await client.get(f"{stack.envoy.url}/v1/models")  # not a cached route: no ext_proc stream
        scraped = await client.get(f"{stack.stats_url}/stats/prometheus")
    assert scraped.status_code == 200
    counters = ext_proc_counters(scraped.text)
    assert counters["envoy_http_ext_proc_streams_started"] == 3
    assert counters["envoy_http_ext_proc_streams_failed"] == 3
    assert counters["envoy_http_ext_proc_failure_mode_allowed"] == 3
    assert counters["envoy_http_ext_proc_message_timeouts"] == 0
    assert stack.upstream.calls >= 3


async def test_a_processor_too_slow_to_answer_is_counted_too(tmp_path: Path) -> None:
    """The alert's numerator covers a reply later than the message timeout as well as a failed
    stream (docs/alerts.md): a processor that takes the stream and never answers."""

    async def process(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            await asyncio.sleep(30)
        return
        yield b""  # a generator: the handler streams

    handler = grpc.stream_stream_rpc_method_handler(process)
    service = grpc.method_handlers_generic_handler(
        "envoy.service.ext_proc.v3.ExternalProcessor", {"Process": handler}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    stats_port = free_port()
    envoy = await start_envoy(
        tmp_path, port, state.port, ENVOY_STATS="true", ENVOY_STATS_PORT=str(stats_port),
        EXTPROC_MESSAGE_TIMEOUT="300ms",
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            answered = await client.post(f"{envoy.url}/v1/chat/completions", json=CHAT)
            assert answered.status_code == 200
            counters = ext_proc_counters(
                (await client.get(f"http://127.0.0.1:{stats_port}/stats/prometheus")).text
            )
        assert counters["envoy_http_ext_proc_message_timeouts"] == 1
        assert counters["envoy_http_ext_proc_failure_mode_allowed"] == 1
        assert counters["envoy_http_ext_proc_streams_failed"] == 0
    finally:
        envoy.stop()
        await runner.cleanup()
        await server.stop(0)


async def test_no_other_admin_page_is_reachable(stack: StatsStack) -> None:
    """The admin API can stop Envoy, reset counters or change its log level: none of it here."""
    async with httpx.AsyncClient(timeout=10) as client:
        for method, path in [
            ("POST", "/quitquitquit"),
            ("POST", "/logging?level=trace"),
            ("POST", "/reset_counters"),
            ("POST", "/drain_listeners"),
            ("GET", "/config_dump"),
            ("GET", "/stats"),
            ("POST", "/stats/prometheus"),
            ("GET", "/stats/prometheus/../config_dump"),
            ("GET", "//stats/prometheus"),
        ]:
            refused = await client.request(method, f"{stack.stats_url}{path}")
            assert refused.status_code == 404, (method, path)
        assert (await client.get(f"{stack.stats_url}/stats/prometheus?usedonly")).status_code == 200
        assert (await client.get(f"{stack.envoy.url}/healthz")).status_code == 200
    assert stack.envoy.process.poll() is None


async def test_every_envoy_series_the_chart_reads_is_exported(stack: StatsStack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(f"{stack.envoy.url}/v1/chat/completions", json=CHAT)
        live = exported((await client.get(f"{stack.stats_url}/stats/prometheus")).text)
    dashboard, rules = monitoring_queries()
    read = {n for q in dashboard + rules for n in metric_names(q) if n.startswith("envoy_")}
    assert {"envoy_http_ext_proc_failure_mode_allowed", "envoy_http_ext_proc_streams_started"} <= read
    assert read <= live, f"not exported by Envoy: {sorted(read - live)}"
