"""One-way TLS to a real Milvus server: a CA only (the Secret or a named file), or the system trust store.

Mutual TLS (client certificate and key) is in test_milvus.py::test_auth_and_tls, against a
server that requires a client certificate.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from extproc.app import make_backend
from extproc.cache import SemanticCache
from extproc.config.milvus import DEFAULT_TLS_DIR
from extproc.config.settings import parse_config
from extproc.embedding.base import EncodeFn
from extproc.embedding.batcher import Embedder
from tests.conftest import ROOT, MilvusServer, milvus_yaml, tls_milvus_instead
from tests.support.toy import answer
from tests.support.toy import query as q

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def one_way_milvus(tmp_path_factory: pytest.TempPathFactory, milvus_server: MilvusServer) -> Any:
    """A Milvus server with one-way TLS (it asks for no client certificate)."""
    with tls_milvus_instead(milvus_server, tmp_path_factory.mktemp("milvus-one-way"), 1) as secured:
        yield secured


def tls_yaml(path: Path, server: MilvusServer, **tls: str) -> Path:
    """A milvus.yaml with TLS on, verifying the name in the test server's certificate."""
    conn = {"tls": {"enabled": True, "server_name": "localhost", **tls}, "timeout": 10}
    return milvus_yaml(path, server.uri, f"tls_{uuid.uuid4().hex[:8]}", connection=conn)


async def store_and_hit(model: tuple[EncodeFn, int], cfg: Path) -> None:
    """Connect as the server does, store an answer and find it again by a paraphrase."""
    settings = parse_config({"semantic_cache": {"backend_type": "milvus", "backend_config_path": str(cfg)}})
    encode, dim = model
    backend = make_backend(settings, dim)
    await backend.start()
    try:
        assert await backend.wait_ready(60), backend.status()
        cache = SemanticCache(backend, Embedder(encode, dim), 0.88, 10, 3600)
        await cache.store(q("What port does Milvus use?"), answer("19530"))
        assert (await cache.check(q("Which port does Milvus listen on?"))).hit
    finally:
        await backend.close()


async def test_secret_with_only_the_ca_connects_one_way(
    model: tuple[EncodeFn, int],
    one_way_milvus: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, certs = one_way_milvus
    secret = tmp_path / "milvus-tls"  # the Secret as the chart mounts it, with ca.crt alone
    secret.mkdir()
    shutil.copy(certs["ca.crt"], secret / "ca.crt")
    monkeypatch.setattr("extproc.config.milvus.DEFAULT_TLS_DIR", str(secret))
    caplog.set_level(logging.INFO)
    await store_and_hit(model, tls_yaml(tmp_path / "m.yaml", server))
    assert f"uses one-way TLS (CA {secret}/ca.crt, no client certificate)" in caplog.text


async def test_named_ca_file_connects_one_way(
    model: tuple[EncodeFn, int], one_way_milvus: Any, tmp_path: Path
) -> None:
    server, certs = one_way_milvus
    await store_and_hit(model, tls_yaml(tmp_path / "m.yaml", server, ca_file=str(certs["ca.crt"])))


def create_collection(cfg: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``semantic-cache create-collection`` in a fresh process (gRPC reads its roots once per process)."""
    config = tmp_path / "config.yaml"
    config.write_text(f'semantic_cache:\n  backend_type: "milvus"\n  backend_config_path: "{cfg}"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_DEFAULT_SSL")}
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", "create-collection", "--config", str(config)],
        cwd=ROOT,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_ca_uses_the_system_trust_store(one_way_milvus: Any, tmp_path: Path) -> None:
    if Path(DEFAULT_TLS_DIR).exists():
        pytest.skip(f"{DEFAULT_TLS_DIR} exists on this machine: its files would be used instead")
    server, certs = one_way_milvus
    cfg = tls_yaml(tmp_path / "m.yaml", server)
    cfg.write_text(cfg.read_text().replace("timeout: 10", "timeout: 5"))
    # The test CA is not in the system store: the server's certificate is not trusted.
    untrusted = create_collection(cfg, tmp_path)
    assert untrusted.returncode != 0
    # The trust store gRPC uses, with the test CA in it: the same file connects.
    trusted = create_collection(cfg, tmp_path, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(certs["ca.crt"]))
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert "created at https://127.0.0.1" in trusted.stdout
    assert "one-way TLS (the system trust store, no client certificate)" in trusted.stderr
