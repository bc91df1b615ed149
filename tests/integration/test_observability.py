"""Traces joined to Envoy's, metrics that count right, through the real Envoy and processor."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

from extproc.observability.tracing import parent_context
from tests.conftest import free_port, start_envoy
from tests.support import upstream as fake
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.processes import cli, stop, wait_port

pytestmark = pytest.mark.integration

PROMPT = "What is the tallest mountain in Africa?"
PARAPHRASE = "Which mountain is the highest in Africa?"
SECRET = "Bearer sk-test-secret-token"


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    """A chat request for the observability model."""
    return {"model": "obs-model", "messages": [{"role": "user", "content": prompt}], **extra}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition text as {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_traces_and_metrics_through_envoy(tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    grpc_port, mgmt_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f'semantic_cache:\n  server:\n    grpc_address: "127.0.0.1:{grpc_port}"\n')
    env = dict(os.environ) | {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "semantic-cache",
        "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{mgmt_port}",
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
        "LOG_LEVEL": "info",
    }
    log = tmp_path / "serve.log"
    processor = cli("serve", "--config", str(config), env=env, log=log)
    envoy = None
    try:
        await wait_port(grpc_port, processor, log)
        envoy = await start_envoy(
            tmp_path,
            grpc_port,
            state.port,
            ENVOY_TRACING="true",
            OTEL_COLLECTOR_PORT=str(receiver.port),
            ENVOY_SERVICE_NAME="envoy-test",
        )
        async with httpx.AsyncClient(
            base_url=envoy.url, timeout=30, headers={"authorization": SECRET}
        ) as client:
            post = client.post
            assert (await post("/v1/chat/completions", json=chat(PROMPT))).headers[
                "x-semantic-cache"
            ] == "miss"
            await asyncio.sleep(0.3)
            exact = await post("/v1/chat/completions", json=chat(PROMPT))
            assert exact.headers["x-semantic-cache-match"] == "exact"
            semantic = await post("/v1/chat/completions", json=chat(PARAPHRASE))
            assert semantic.headers["x-semantic-cache-match"] == "semantic"
            bypass = await post(
                "/v1/chat/completions", json=chat(PROMPT), headers={"cache-control": "no-cache, no-store"}
            )
            assert bypass.headers["x-semantic-cache"] == "bypass"
            skipped = await post(
                "/v1/chat/completions",
                json=chat("Explain quantum tunnelling"),
                headers={"x-test-mode": "error"},
            )
            assert skipped.status_code == 500 and skipped.headers["x-semantic-cache"] == "miss"
            # Other paths are routed with the filter off: the processor never sees them ...
            assert (await client.get("/v1/models")).status_code == 200
            # ... while a GET of the chat path reaches it and passes through (not_chat).
            await client.get("/v1/chat/completions")
            metrics_text = (await client.get(f"http://127.0.0.1:{mgmt_port}/metrics")).text
            ready = (await client.get(f"http://127.0.0.1:{mgmt_port}/readyz")).json()
            health = await client.get(f"http://127.0.0.1:{mgmt_port}/healthz")

        deadline = time.monotonic() + 20
        ours: list[Any] = []
        while time.monotonic() < deadline:
            ours = [s for s in receiver.spans if s.name == "semantic_cache.request"]
            known = {s.span_id for s in receiver.spans}
            parents_in = all(s.parent_span_id in known for s in ours)
            if (
                len(ours) >= 6
                and parents_in
                and any(s.name == "semantic_cache.store" for s in receiver.spans)
            ):
                break
            await asyncio.sleep(0.3)
    finally:
        stop(processor)
        if envoy is not None:
            envoy.stop()
        await runner.cleanup()
        await receiver.stop()

    # --- traces ---
    by_id = {s.span_id: s for s in receiver.spans}
    envoy_ids = {s.span_id for s in receiver.spans if s.service == "envoy-test"}
    assert len(ours) >= 6
    for span in ours:  # every request span is a child of Envoy's span, in Envoy's trace
        assert span.parent_span_id in envoy_ids, span
        assert by_id[span.parent_span_id].trace_id == span.trace_id
    decisions = {
        (
            s.attributes.get("semantic_cache.decision"),
            s.attributes.get("semantic_cache.match"),
            s.attributes.get("semantic_cache.bypass_reason"),
            s.attributes.get("semantic_cache.store"),
        )
        for s in ours
    }
    assert ("miss", None, None, "stored") in decisions
    assert ("hit", "exact", None, None) in decisions
    assert ("hit", "semantic", None, None) in decisions
    assert ("bypass", None, "no_cache_no_store", None) in decisions
    assert ("miss", None, None, "non_2xx") in decisions
    assert ("bypass", None, "not_chat", None) in decisions
    semantic_span = next(s for s in ours if s.attributes.get("semantic_cache.match") == "semantic")
    a = semantic_span.attributes
    assert a["semantic_cache.backend"] == "memory" and a["semantic_cache.model"] == "obs-model"
    assert (
        a["semantic_cache.similarity"] >= a["semantic_cache.threshold"]
        and a["semantic_cache.candidates"] >= 1
    )
    assert a["semantic_cache.entry_age_s"] >= 0
    children = {s.name for s in receiver.spans if s.parent_span_id == semantic_span.span_id}
    assert {"semantic_cache.exact_lookup", "semantic_cache.embed", "semantic_cache.lookup"} <= children
    store = [s for s in receiver.spans if s.name == "semantic_cache.store"]
    assert store and by_id[store[0].parent_span_id].name == "semantic_cache.request"
    everything = b"".join(receiver.requests)
    for text in (PROMPT, PARAPHRASE, "tallest mountain", "sk-test-secret-token", "answer #"):
        assert text.encode() not in everything, text  # no prompt, response or secret in any span

    # --- metrics ---
    m = samples(metrics_text)
    assert m[("semantic_cache_requests_total", (("decision", "miss"), ("match", "none")))] == 2
    assert m[("semantic_cache_requests_total", (("decision", "hit"), ("match", "exact")))] == 1
    assert m[("semantic_cache_requests_total", (("decision", "hit"), ("match", "semantic")))] == 1
    assert m[("semantic_cache_requests_total", (("decision", "bypass"), ("match", "none")))] == 2
    assert m[("semantic_cache_bypass_total", (("reason", "no_cache_no_store"),))] == 1
    assert m[("semantic_cache_bypass_total", (("reason", "not_chat"),))] == 1
    assert m[("semantic_cache_store_total", (("result", "stored"),))] == 1
    assert m[("semantic_cache_store_total", (("result", "non_2xx"),))] == 1
    assert m[("semantic_cache_lookup_seconds_count", ())] == 4  # every lookup, hits and misses
    assert m[("semantic_cache_entries", (("backend", "memory"),))] == 1
    assert m[("semantic_cache_backend_up", (("backend", "memory"), ("state", "ready")))] == 1
    assert m[("semantic_cache_embedding_batch_size_count", ())] >= 3
    assert "obs-model" not in metrics_text and "Africa" not in metrics_text  # no text in labels
    assert ready["serving"] is True and ready["backend_state"] == "ready" and ready["caching"] is True
    assert ready["not_caching_because"] == ""
    assert health.status_code == 200

    logs = log.read_text()
    assert "management (metrics, healthz, readyz) listening" in logs and "tracing on: exporters=otlp" in logs
    assert "Africa" not in logs and "sk-test" not in logs


def test_traceparent_header_fallback() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    from_header = trace.get_current_span(parent_context([], {"traceparent": tp})).get_span_context()
    assert format(from_header.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    from_metadata = trace.get_current_span(parent_context([("traceparent", other)], {"traceparent": tp}))
    assert format(from_metadata.get_span_context().trace_id, "032x") == "1" * 32  # Envoy's wins
    assert not trace.get_current_span(parent_context([], {})).get_span_context().is_valid
