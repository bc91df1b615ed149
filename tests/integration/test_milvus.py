"""The Milvus backend against a real Milvus 2.3 standalone server (and Milvus Lite)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extproc.app import make_backend
from extproc.cache import SemanticCache
from extproc.cache.backends.milvus.backend import MilvusBackend
from extproc.cache.backends.milvus.client import create_collection
from extproc.cache.backends.milvus.rows import decode_response, encode_response
from extproc.config.milvus import load_milvus_config
from extproc.config.settings import parse_config
from extproc.embedding.base import EncodeFn
from extproc.embedding.batcher import Embedder
from extproc.errors import BackendUnavailable, ConfigError, EntryTooLarge
from tests.conftest import MilvusServer, drop_collections, milvus_yaml, tls_milvus_instead
from tests.support.toy import answer
from tests.support.toy import query as q

pytestmark = pytest.mark.integration


def settings_for(cfg: Path, **cache: Any) -> Any:
    """CacheSettings selecting the Milvus backend described by ``cfg``."""
    return parse_config(
        {"semantic_cache": {"backend_type": "milvus", "backend_config_path": str(cfg), **cache}}
    )


async def open_cache(
    model: tuple[EncodeFn, int], cfg: Path, ready: bool = True, **cache: Any
) -> SemanticCache:
    """A SemanticCache over a Milvus backend built the way the server builds it."""
    settings = settings_for(cfg, **cache)
    encode, dim = model
    backend = make_backend(settings, dim)
    await backend.start()
    if ready:
        assert await backend.wait_ready(60), backend.status()
    return SemanticCache(
        backend, Embedder(encode, dim), settings.similarity_threshold, 10, settings.ttl_seconds
    )


async def settle(cache: SemanticCache, state: str, seconds: float = 10.0) -> None:
    """Wait until the backend reports ``state`` (its connect runs in the background)."""
    for _ in range(int(seconds * 10)):
        if cache.backend.status()[0] == state:
            return
        await asyncio.sleep(0.1)


_created: list[str] = []


def collection() -> str:
    """A fresh collection name (dropped at the end of the module)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    _created.append(name)
    return name


def drop_created(server: MilvusServer) -> None:
    """Drop the collections this module created."""
    drop_collections(server, _created)


@pytest.fixture(scope="module", autouse=True)
def drop_test_collections(milvus_server: MilvusServer) -> Any:
    """Drop this module's collections at its end."""
    yield
    drop_created(milvus_server)


async def test_auto_create_reuse_and_restart_hits(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = milvus_yaml(
        tmp_path / "m.yaml", milvus_server.uri, collection(), search={"consistency_level": "Session"}
    )
    first = await open_cache(model, cfg)
    assert "(created)" in first.backend.status()[1]
    stored = await first.store(q("What is the capital of France?"), answer("Paris"))
    hit = await first.check(q("What's the capital city of France?"))
    assert hit.match == "semantic" and hit.entry is not None and hit.entry.response == answer("Paris")
    # search returns each candidate's stored vector (the learned verifier reads both embeddings)
    found = await first.backend.search(stored.partition, stored.vector, 1, time.time())
    assert found[0].vector is not None and np.allclose(found[0].vector, stored.vector, atol=1e-6)
    await first.close()

    again = await open_cache(model, cfg)  # a restarted processor
    state, detail = again.backend.status()
    assert state == "ready" and "(reused)" in detail and "entities=1" in detail
    exact = await again.check(q("What is the capital of France?"))
    assert exact.match == "exact" and exact.entry is not None and exact.entry.response == answer("Paris")
    assert (await again.check(q("What's the capital city of France?"))).match == "semantic"
    await again.close()
    assert "Milvus ready: backend=milvus" in caplog.text and "version=v2.3.5" in caplog.text


async def test_two_processors_share_one_collection(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    cfg = milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, collection())
    a, b = await open_cache(model, cfg), await open_cache(model, cfg)
    await a.store(q("How do I reverse a list in Python?"), answer("list[::-1]"))
    for _ in range(50):  # the other replica sees it within the consistency level
        result = await b.check(q("How can I reverse a Python list?"))
        if result.hit:
            break
        await asyncio.sleep(0.1)
    assert result.entry is not None and result.entry.response == answer("list[::-1]")
    await b.store(q("How do I reverse a list in Python?"), answer("reversed()"))  # same exact key: replaced
    assert await a.backend.count() == 1
    assert (await a.check(q("How do I reverse a list in Python?"))).entry.response == answer("reversed()")  # type: ignore[union-attr]
    await a.close()
    await b.close()


async def test_partitions_never_cross(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    cache = await open_cache(model, milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, collection()))
    prompt = "What is the boiling point of water?"
    await cache.store(q(prompt), answer("100 C"))
    assert (await cache.check(q(prompt))).hit
    for other in (q(prompt, model="m2"), q(prompt, scope="tenant-b"), q(prompt, fp="g")):
        assert not (await cache.check(other)).hit
    await cache.close()


async def test_ttl_expiry_and_sweep(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    no_sweep = {"sweep_interval_seconds": 3600}
    cache = await open_cache(
        model,
        milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, collection(), maintenance=no_sweep),
        ttl_seconds=1,
    )
    await cache.store(q("Where is the Eiffel Tower?"), answer("Paris"))
    assert (await cache.check(q("Where is the Eiffel Tower?"))).hit
    await asyncio.sleep(1.1)
    assert not (await cache.check(q("Where is the Eiffel Tower?"))).hit
    assert not (await cache.check(q("Where can I find the Eiffel Tower?"))).hit
    backend = cache.backend
    assert isinstance(backend, MilvusBackend)
    assert await backend.count() == 0  # stats count live rows: the expired one is not swept yet
    await backend.sweep(time.time())
    assert await backend.count() == 0
    await cache.close()


async def test_max_entries_evicts_oldest_first(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    cache = await open_cache(
        model, milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, collection()), max_entries=3
    )
    prompts = [f"Question number {i} about owls" for i in range(5)]
    for p in prompts:
        await cache.store(q(p), answer(p))
        await asyncio.sleep(0.01)
    backend = cache.backend
    assert isinstance(backend, MilvusBackend)
    await backend.sweep(time.time())
    assert await backend.count() == 3
    kept = [p for p in prompts if await backend.get_exact(q(p).exact_key, time.time())]
    assert kept == prompts[2:]
    await cache.close()


def test_eviction_policy_and_dimension_errors(tmp_path: Path, model: tuple[EncodeFn, int]) -> None:
    cfg = milvus_yaml(tmp_path / "m.yaml", "http://127.0.0.1:1", "x")
    with pytest.raises(
        ConfigError, match='eviction_policy "lru" is not supported with backend_type "milvus"'
    ):
        settings_for(cfg, eviction_policy="lru")
    assert settings_for(cfg).eviction_policy == "fifo"
    wrong = milvus_yaml(
        tmp_path / "w.yaml", "http://127.0.0.1:1", "x", collection={"vector_field": {"dimension": 768}}
    )
    with pytest.raises(ConfigError, match=r"dimension is 768 but the embedding model .* produces 384"):
        make_backend(settings_for(wrong), model[1])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "connection:\n  port: high\n  tls: {enabled: true, cafile: x}\nsearch:\n  consistency_level: Always\n"
    )
    with pytest.raises(ConfigError) as info:
        settings_for(bad)
    text = str(info.value)
    assert "connection.port: must be a port number" in text
    assert "connection.tls.cafile: unknown key" in text
    assert 'search.consistency_level: must be one of "Strong"' in text


async def test_schema_mismatch_and_missing_collection_bypass(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    from pymilvus import DataType, MilvusClient

    name = collection()
    client = MilvusClient(uri=milvus_server.uri)
    schema = MilvusClient.create_schema(auto_id=True)  # the runbook's minimal id/embedding/response schema
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=512)
    schema.add_field("response", DataType.VARCHAR, max_length=65535)
    client.create_collection(name, schema=schema)
    cache = await open_cache(model, milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, name), ready=False)
    await settle(cache, "schema_mismatch")
    state, detail = cache.backend.status()
    assert state == "schema_mismatch"
    assert (
        "missing field partition_key" in detail
        and "has dimension 512, the embedding model produces 384" in detail
    )
    assert "semantic-cache create-collection" in detail
    with pytest.raises(BackendUnavailable):
        await cache.check(q("anything"))
    assert client.has_collection(name)  # never dropped
    await cache.close()

    missing = milvus_yaml(
        tmp_path / "n.yaml", milvus_server.uri, collection(), development={"auto_create_collection": False}
    )
    cache = await open_cache(model, missing, ready=False)
    await settle(cache, "missing_collection")
    assert "does not exist and development.auto_create_collection is false" in cache.backend.status()[1]
    await cache.close()


def test_create_collection_command(milvus_server: MilvusServer, tmp_path: Path) -> None:
    from pymilvus import MilvusClient

    from tests.conftest import ROOT, python_exe

    name = collection()
    cfg = milvus_yaml(
        tmp_path / "m.yaml", milvus_server.uri, name, development={"auto_create_collection": False}
    )
    config = tmp_path / "config.yaml"
    config.write_text(f'semantic_cache:\n  backend_type: "milvus"\n  backend_config_path: "{cfg}"\n')
    for expect in ("created", "already exists"):
        done = subprocess.run(
            [python_exe(), "-m", "extproc.cli", "create-collection", "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert expect in done.stdout
    client = MilvusClient(uri=milvus_server.uri)
    assert client.has_collection(name) and client.has_collection(f"{name}_evidence")
    client.close()


async def test_a_collection_remembers_its_embedding_model(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """Another model of the same dimension writes vectors of another space: a search there
    compares unrelated vectors (a switch went unnoticed). The collection's vector field names the
    model that made it; another model's process refuses it, the same model under another
    name or path takes it, and a collection made before this was recorded is taken too."""
    from pymilvus import MilvusClient

    name = collection()
    cfg = milvus_yaml(tmp_path / "m.yaml", milvus_server.uri, name)
    first = await open_cache(model, cfg)  # all-MiniLM-L6-v2, the packaged default
    await first.store(q("What is the capital of France?"), answer("Paris."))
    await first.close()
    client = MilvusClient(uri=milvus_server.uri)
    fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
    assert fields["embedding"]["description"] == "embedding model: all-MiniLM-L6-v2"

    other = await open_cache(
        model, cfg, ready=False, embedding_model=str(tmp_path / "paraphrase-MiniLM-L6-v2")
    )
    await settle(other, "schema_mismatch")
    state, detail = other.backend.status()
    assert state == "schema_mismatch", detail
    assert (
        "from the embedding model 'all-MiniLM-L6-v2', this process embeds with 'paraphrase-MiniLM-L6-v2'"
        in detail
    )
    await other.close()

    served = await open_cache(
        model, cfg, embedding_endpoint="http://embed:8000/v1/embeddings",
        embedding_endpoint_model="sentence-transformers/all-MiniLM-L6-v2",
    )  # fmt: skip
    assert (await served.check(q("What is the capital of France?"))).match == "exact"
    await served.close()

    legacy = collection()  # made by an earlier version: no model named, taken as is
    legacy_cfg = milvus_yaml(tmp_path / "l.yaml", milvus_server.uri, legacy)
    create_collection(client, load_milvus_config(legacy_cfg), 384)
    again = await open_cache(model, legacy_cfg, embedding_model=str(tmp_path / "other-model"))
    assert again.backend.status()[0] == "ready"
    await again.close()
    client.close()


async def test_a_collection_indexed_with_another_metric_is_a_schema_mismatch(
    model: tuple[EncodeFn, int], milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """Reused under another metric_type, every search is refused ("metric type not match") while
    the backend said ready and stores went on: now refused at connect, naming both metrics."""
    name = collection()
    made = await open_cache(model, milvus_yaml(tmp_path / "ip.yaml", milvus_server.uri, name))  # IP
    await made.close()
    cosine = {"vector_field": {"name": "embedding", "dimension": 384, "metric_type": "COSINE"}}
    cache = await open_cache(
        model, milvus_yaml(tmp_path / "cos.yaml", milvus_server.uri, name, collection=cosine), ready=False
    )
    await settle(cache, "schema_mismatch")
    detail = cache.backend.status()[1]
    assert "uses metric IP, milvus.yaml says COSINE" in detail, detail
    await cache.close()


def test_response_compression_and_too_large() -> None:
    big = answer("word " * 40_000)  # 200 kB of very compressible text
    packed = encode_response(big)
    assert packed.startswith("zlib:") and len(packed) <= 65_535
    assert decode_response(packed) == big
    import os

    random_text = os.urandom(200_000).hex()
    with pytest.raises(EntryTooLarge):
        encode_response(answer(random_text))


async def test_milvus_lite_file_uri(
    model: tuple[EncodeFn, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "lite.yaml"
    cfg.write_text(
        f'connection:\n  uri: "{tmp_path / "cache.db"}"\n'
        "collection:\n  name: lite_cache\n  index:\n    type: FLAT\n    params: {}\n"
        "search:\n  params: {}\n  consistency_level: Strong\n"
    )
    cache = await open_cache(model, cfg)
    assert "address=" + str(tmp_path / "cache.db") in cache.backend.status()[1]
    await cache.store(q("How tall is Mount Everest?"), answer("8849 m"))
    result = await cache.check(q("What is the height of Mount Everest?"))
    assert result.entry is not None and result.entry.response == answer("8849 m")
    await cache.close()
    # Milvus Lite's harmless start-up noise is silenced: an ERROR line always means an error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Method not implemented" not in caplog.text and "ModuleNotFoundError" not in caplog.text


@pytest.fixture(scope="module")
def secured_milvus(tmp_path_factory: pytest.TempPathFactory, milvus_server: MilvusServer) -> Any:
    """A Milvus server with authentication and mutual TLS."""
    drop_created(milvus_server)
    base = tmp_path_factory.mktemp("milvus-secure")
    with tls_milvus_instead(milvus_server, base, 2, "--authorization-enabled", "true") as secured:
        yield secured


async def test_auth_and_tls(
    model: tuple[EncodeFn, int],
    secured_milvus: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, certs = secured_milvus
    tls = {
        "enabled": True,
        "ca_file": str(certs["ca.crt"]),
        "cert_file": str(certs["client.crt"]),
        "key_file": str(certs["client.key"]),
        "server_name": "localhost",
    }
    auth = {"enabled": True, "username": "${MILVUS_USERNAME}", "password": "${MILVUS_PASSWORD}"}
    name = collection()
    cfg = milvus_yaml(tmp_path / "m.yaml", server.uri, name, connection={"tls": tls, "auth": auth})

    monkeypatch.setenv("MILVUS_USERNAME", "root")
    monkeypatch.setenv("MILVUS_PASSWORD", "wrong-password")
    caplog.set_level(logging.WARNING)
    cache = await open_cache(model, cfg, ready=False)
    for _ in range(150):
        if cache.backend.status()[0] == "auth_failed":
            break
        await asyncio.sleep(0.1)
    state, detail = cache.backend.status()
    assert state == "auth_failed", detail
    assert "failed to connect to Milvus: authentication failed" in caplog.text
    assert "wrong-password" not in caplog.text and "wrong-password" not in detail
    with pytest.raises(BackendUnavailable):
        await cache.check(q("anything"))
    await cache.close()

    monkeypatch.setenv("MILVUS_PASSWORD", "Milvus")  # the server's default root password
    cache = await open_cache(model, cfg)
    await cache.store(q("What port does Milvus use?"), answer("19530"))
    assert (await cache.check(q("Which port does Milvus listen on?"))).hit
    await cache.close()

    no_tls = milvus_yaml(
        tmp_path / "n.yaml", server.uri.replace("https", "http"), name, connection={"auth": auth}
    )
    cache = await open_cache(model, no_tls, ready=False)
    await asyncio.sleep(2)
    assert cache.backend.status()[0] != "ready"  # a plaintext client cannot talk to a TLS server
    await cache.close()

    # The chart's way: no file keys, Secret milvus-tls mounted with all three files: mutual TLS.
    secret = tmp_path / "milvus-tls"
    secret.mkdir()
    for key in ("ca.crt", "client.crt", "client.key"):
        shutil.copy(certs[key], secret / key)
    monkeypatch.setattr("extproc.config.milvus.DEFAULT_TLS_DIR", str(secret))
    caplog.set_level(logging.INFO)
    conn = {"tls": {"enabled": True, "server_name": "localhost"}, "auth": auth}
    mounted = milvus_yaml(tmp_path / "s.yaml", server.uri, name, connection=conn)
    cache = await open_cache(model, mounted)
    assert (await cache.check(q("Which port does Milvus listen on?"))).hit
    assert f"uses mutual TLS (CA {secret}/ca.crt, client certificate {secret}/client.crt" in caplog.text
    await cache.close()
    # Only the CA (one-way TLS) against a server that requires a client certificate: refused.
    (secret / "client.crt").unlink()
    (secret / "client.key").unlink()
    cache = await open_cache(model, mounted, ready=False)
    state, detail = await settled(cache)
    assert state == "unavailable" and "failed to connect to Milvus" in detail, detail
    await cache.close()


async def settled(cache: SemanticCache, timeout: float = 60) -> tuple[str, str]:
    """The backend's status once its first connection attempt has ended."""
    deadline = time.monotonic() + timeout
    while cache.backend.status()[0] == "connecting" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return cache.backend.status()
