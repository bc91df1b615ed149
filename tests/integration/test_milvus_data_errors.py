"""One tenant's bad data against a real Milvus 2.3: refused alone, never the breaker (issue #20 item 3).

Before: a ``model`` of 200 emoji (200 characters, 800 bytes for a 512-byte VARCHAR) failed every
store, eight at once opened the circuit breaker, and another tenant's cached prompt bypassed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from extproc.cache.backends.milvus.backend import MilvusBackend
from extproc.errors import DataRejected
from tests.conftest import MilvusServer, StackFactory, drop_collections, milvus_yaml
from tests.support.admin_helpers import chat
from tests.support.toy import answer
from tests.support.toy import query as q

pytestmark = pytest.mark.integration
EMOJI_MODEL = "\U0001f600" * 200  # under the 256 characters a request may name, 800 bytes in UTF-8
_created: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def drop_module_collections(milvus_server: MilvusServer) -> Any:
    """Drop this module's collections at its end."""
    yield
    drop_collections(milvus_server, _created)


def milvus_settings(server: MilvusServer, tmp_path: Path) -> dict[str, Any]:
    """Settings overrides for a processor over a fresh collection, scoped by x-tenant-id."""
    name = f"data_{uuid.uuid4().hex[:10]}"
    _created.append(name)
    cfg = milvus_yaml(tmp_path / "m.yaml", server.uri, name)
    return {
        "backend_type": "milvus",
        "backend_config_path": str(cfg),
        "scope_mode": "header",
        "scope_header": "x-tenant-id",
        "envoy_env": {"STRIP_SCOPE_HEADER": "false"},  # the test plays the trusted hop
    }


async def test_an_over_long_model_never_switches_the_cache_off_for_other_tenants(
    make_stack: StackFactory, milvus_server: MilvusServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stack = await make_stack(**milvus_settings(milvus_server, tmp_path))
    backend = stack.server.shared.cache.backend
    assert isinstance(backend, MilvusBackend)
    tenant_b = {"x-tenant-id": "tenant-b"}
    cached = chat("small-model", "What is the capital of France?")
    assert (await stack.chat(cached, **tenant_b)).headers["x-semantic-cache"] == "miss"
    await stack.wait_entries(1)
    opened_before = backend.breaker.opened

    async def abuser(client: int) -> list[str]:
        """Tenant A: a stream of misses whose answers cannot be stored."""
        outcomes = []
        for i in range(8):
            r = await stack.chat(
                chat(EMOJI_MODEL, f"Question {i} from client {client}"), **{"x-tenant-id": "a"}
            )
            outcomes.append(r.headers["x-semantic-cache"])
        return outcomes

    async def victim() -> list[str]:
        """Tenant B asking its cached prompt meanwhile."""
        outcomes = []
        for _ in range(30):
            outcomes.append((await stack.chat(cached, **tenant_b)).headers["x-semantic-cache"])
            await asyncio.sleep(0.01)
        return outcomes

    *abusers, seen = await asyncio.gather(*(abuser(c) for c in range(6)), victim())
    await stack.settle()
    assert all(outcomes == ["miss"] * 8 for outcomes in abusers)  # looked up, answered by the LLM
    assert seen == ["hit"] * 30  # never a bypass
    assert backend.breaker.opened == opened_before and backend.status()[0] == "ready"
    assert await stack.entries() == 1  # nothing of tenant A was stored ...
    assert backend.data_errors == 0  # ... because nothing was sent: the rows were checked first
    assert "lost connection" not in caplog.text and "reconnecting" not in caplog.text
    assert stack.upstream.chat_calls(EMOJI_MODEL) == 48


async def test_data_milvus_itself_refuses_is_a_data_error_not_an_outage(
    make_stack: StackFactory, milvus_server: MilvusServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stack = await make_stack(**milvus_settings(milvus_server, tmp_path))
    cache = stack.server.shared.cache
    backend = cache.backend
    assert isinstance(backend, MilvusBackend)
    kept = q("How tall is Mount Everest?", scope="header:tenant-b")
    await cache.store(kept, answer("8849 m"))
    # As if the checks did not know the collection's limit (a collection made by another tool):
    # the rows reach Milvus, which refuses each one.
    backend.limits["model"] = 65_535

    async def refused(i: int) -> str:
        try:
            await cache.store(q(f"Question {i}", model=EMOJI_MODEL, scope="header:a"), answer("x"))
        except DataRejected as exc:
            return exc.reason
        return "stored"

    results = await asyncio.gather(*(refused(i) for i in range(24)))
    assert results == ["data_rejected"] * 24
    assert backend.data_errors == 24 and backend.breaker.opened == 0 and backend.breaker.state == "closed"
    assert backend.status()[0] == "ready"
    assert (await cache.check(kept)).match == "exact"
    assert "Milvus refused a call's data (1 so far): MilvusException: the length (800)" in caplog.text
    assert "not a connection problem" in caplog.text and "lost connection" not in caplog.text
    assert caplog.text.count("Milvus refused a call's data") == 1  # one line per 10 s, not one per call
