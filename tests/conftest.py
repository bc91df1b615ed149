"""Session fixtures: the real model, a fake upstream, in-process processors and real Envoys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from extproc.app import build_server
from extproc.cli.envoy import envoy_command, render_envoy_config
from extproc.config.settings import CacheSettings, ServerSettings, with_overrides
from extproc.dataplane.server import ExtProcServer
from extproc.embedding.base import EncodeFn
from extproc.embedding.loader import load_sentence_model
from tests.support import upstream as fake

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()
"""Ports this test process has handed out already."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never one handed out before in this process: the port is
    closed again before its user binds it, and the kernel may offer it to the next call (two
    listeners of one process then meet on one port: an HTTP poll answered by a gRPC server)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


async def wait_http(url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=1)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready")


@dataclass
class Envoy:
    """A running Envoy process."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        """Base URL of the HTTP listener."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Terminate (then kill) the process."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


async def start_envoy(
    tmp: Path,
    extproc_port: int,
    upstream_port: int,
    edit: Callable[[str], str] | None = None,
    **env: str,
) -> Envoy:
    """Render envoy/envoy.yaml for these ports (``edit`` may change the text) and start Envoy."""
    port, admin = free_port(), free_port()
    values = (
        dict(os.environ)
        | {
            "ENVOY_LISTEN_PORT": str(port),
            "ENVOY_ADMIN_PORT": str(admin),
            "EXTPROC_PORT": str(extproc_port),
            "UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
        }
        | env
    )
    config = tmp / f"envoy-{port}.yaml"
    text = render_envoy_config(values)
    config.write_text(edit(text) if edit is not None else text)
    log = tmp / f"envoy-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(envoy_command(config, "info"), stdout=out, stderr=subprocess.STDOUT)
    envoy = Envoy(process, port, admin, log)
    try:
        await wait_http(f"http://127.0.0.1:{admin}/ready")
    except TimeoutError:
        envoy.stop()
        raise RuntimeError("Envoy did not start:\n" + log.read_text()[-4000:]) from None
    return envoy


@dataclass
class Stack:
    """Envoy → in-process processor → fake upstream."""

    envoy: Envoy
    server: ExtProcServer
    upstream: fake.FakeUpstream
    client: httpx.AsyncClient

    async def chat(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        """POST a chat request through Envoy."""
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def entries(self) -> int:
        """Entries in the processor's cache."""
        return await self.server.shared.cache.backend.count()

    async def wait_entries(self, n: int, timeout: float = 5.0) -> None:
        """Wait until the cache holds at least ``n`` entries (stores run after the response)."""
        deadline = time.monotonic() + timeout
        while await self.entries() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"cache has {await self.entries()} entries, expected {n}")
            await asyncio.sleep(0.02)

    async def settle(self) -> None:
        """Let background stores finish (returns as soon as they have; the bound is for a busy machine)."""
        await self.server.tasks.drain(30)
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def model() -> tuple[EncodeFn, int]:
    """The packaged all-MiniLM-L6-v2, loaded once."""
    return load_sentence_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[fake.FakeUpstream]:
    """The fake OpenAI-compatible upstream."""
    state = fake.FakeUpstream()
    runner = await fake.start(state)
    yield state
    await runner.cleanup()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture(scope="session")
async def make_stack(
    model: tuple[EncodeFn, int],
    upstream: fake.FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[StackFactory]:
    """Build (once per distinct settings) a processor + Envoy pair in front of the upstream."""
    made: dict[tuple[tuple[str, Any], ...], Stack] = {}
    tmp = tmp_path_factory.mktemp("envoy")

    async def factory(envoy_env: dict[str, str] | None = None, **overrides: Any) -> Stack:
        key = tuple(sorted(overrides.items())) + tuple(sorted((envoy_env or {}).items()))
        if key not in made:
            # Tests check decisions, not load behaviour: on a busy test machine a lookup must not
            # be shed as overloaded (test_load_shedding.py sets a budget of its own).
            settings = with_overrides(
                CacheSettings(server=ServerSettings(grpc_address="127.0.0.1:0")),
                **{"max_added_latency_ms": 0, **overrides},
            )
            server = await build_server(settings, model)
            ready = getattr(server.shared.cache.backend, "wait_ready", None)
            if ready is not None:
                assert await ready(60), server.shared.cache.backend.status()
            port = await server.start("127.0.0.1:0")
            envoy = await start_envoy(tmp, port, upstream.port, **(envoy_env or {}))
            client = httpx.AsyncClient(base_url=envoy.url, timeout=30)
            made[key] = Stack(envoy, server, upstream, client)
        return made[key]

    yield factory
    for stack in made.values():
        await stack.client.aclose()
        stack.envoy.stop()
        await stack.server.stop(1)
        await stack.server.shared.cache.close()


@pytest.fixture(params=["memory", "milvus"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Settings overrides selecting each backend in turn (Milvus: the session's real server)."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("milvus_server")
    path = tmp_path_factory.getbasetemp() / "e2e-milvus.yaml"
    if not path.exists():
        milvus_yaml(path, server.uri, "e2e_cache", search={"consistency_level": "Session"})
    return {"backend_type": "milvus", "backend_config_path": str(path)}


@pytest.fixture
async def stack(make_stack: StackFactory, backend: dict[str, Any]) -> Stack:
    """The default stack (global scope, default threshold) over each backend, its backend ready.

    The session's Milvus server outlives tests that restart it: a stack made earlier may still be
    reconnecting (its stores would be skipped as backend_unavailable), so wait until it serves.
    """
    made = await make_stack(**backend)
    ready = getattr(made.server.shared.cache.backend, "wait_ready", None)
    if ready is not None:
        assert await ready(60), made.server.shared.cache.backend.status()
    return made


def python_exe() -> str:
    """The interpreter running the tests (for subprocess CLIs)."""
    return sys.executable


# --- Milvus ---------------------------------------------------------------------------------


class MilvusServer:
    """A real Milvus standalone server (``milvus-server`` from the ``milvus`` wheel) on loopback."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.extra = list(extra)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The URI clients use."""
        scheme = "https" if "--tls-mode" in self.extra else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> None:
        """Start (or restart, keeping the data) and wait until it accepts connections."""
        launcher = Path(__file__).parent / "support" / "milvus_launcher.py"
        log = (self.data / "server.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(launcher),
                "--data",
                str(self.data),
                "--proxy-port",
                str(self.port),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"milvus-server exited:\n{(self.data / 'server.log').read_text()[-3000:]}")
            if self._serving(deadline):
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Milvus did not start:\n{(self.data / 'server.log').read_text()[-3000:]}")

    def _serving(self, deadline: float) -> bool:
        """Whether the server answers: a real call where no credentials are needed.

        The proxy accepts connections before the coordinators are ready (after an unclean stop,
        until the old sessions expire), so an open port alone is not a started server.
        """
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", self.port)) != 0:
                return False
        if "--tls-mode" in self.extra or "--authorization-enabled" in self.extra:
            time.sleep(1.0)  # its own tests connect with their credentials and wait for it
            return True
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            client.list_collections()
            client.close()
            return True
        except Exception:  # not serving yet, whatever the client raised
            return False

    def stop(self, graceful: bool = False) -> None:
        """Stop the server's whole process group (the wrapper and the milvus binary).

        ``graceful`` sends SIGTERM first and allows it 5 s; otherwise SIGKILL, like a crashed pod
        (the next start then waits for the old sessions to expire). Either way it returns once
        the milvus binary is gone: a restart probing the port earlier met the dying server.
        """
        import signal

        if self.process is not None:
            group = self.process.pid
            if graceful and _group_running(group):
                # The wrapper exits at once on SIGTERM; the milvus binary shuts down after it,
                # so wait for the whole group. Milvus 2.3 standalone can hang in its shutdown
                # (its proxy retrying a stopped root coordinator for minutes), hence the bound.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGTERM)
                _wait_group_gone(group, 5)
            if _group_running(group):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                _wait_group_gone(group, 10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.process = None


def _group_running(group: int) -> bool:
    """Whether a live (not zombie) process of process group ``group`` remains (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if fields[0] != "Z" and int(fields[2]) == group:
            return True
    return False


def _wait_group_gone(group: int, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for process group ``group`` to end (its port is then free)."""
    deadline = time.monotonic() + timeout
    while _group_running(group) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One Milvus server for the session (tests use their own collections)."""
    server = MilvusServer(tmp_path_factory.mktemp("milvus"))
    server.start()
    yield server
    server.stop(graceful=True)


@contextlib.contextmanager
def tls_milvus_instead(session: MilvusServer, base: Path, mode: int, *extra: str) -> Any:
    """A Milvus server with TLS (1: one-way, 2: mutual) and certificates made here, yielding (server, certs).

    Milvus 2.3 standalone locks /run/milvus/standalone.pid, so the session's server is stopped
    meanwhile and restarted (with its data) afterwards.
    """
    from tests.support.certs import make_certs

    session.stop(graceful=True)
    certs = make_certs(base / "certs")
    tls = ["--tls-mode", str(mode), "--server-pem-path", str(certs["server.crt"])]
    tls += ["--server-key-path", str(certs["server.key"]), "--ca-pem-path", str(certs["ca.crt"])]
    server = MilvusServer(base / "data", *extra, *tls)
    (base / "data").mkdir()
    try:
        server.start()
        yield server, certs
    finally:
        server.stop(graceful=True)
        session.start()


def drop_collections(server: MilvusServer, names: list[str]) -> None:
    """Drop the collections ``names`` (emptying the list) with their evidence collections: a
    module's own, at its end (Milvus restarts slow down with each collection)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, timeout=30)
    while names:
        name = names.pop()
        for made in (name, name + "_evidence"):
            if client.has_collection(made):
                client.drop_collection(made)
    client.close()


def milvus_yaml(path: Path, uri: str, name: str, **sections: Any) -> Path:
    """Write a milvus.yaml for ``uri`` and collection ``name`` (extra keys merged per section)."""
    import yaml

    doc: dict[str, Any] = {
        "connection": {"uri": uri, "timeout": 10},
        "collection": {
            "name": name,
            "vector_field": {"name": "embedding", "dimension": 384, "metric_type": "IP"},
            "index": {"type": "HNSW", "params": {"M": 16, "efConstruction": 64}},
        },
        # The first search of a new collection waits for its insert to be visible (Strong): on a
        # busy machine that passes the 1 s default, which no test here is about.
        "search": {"params": {"ef": 64}, "topk": 10, "consistency_level": "Strong", "timeout_ms": 10_000},
        "development": {"auto_create_collection": True},
        "maintenance": {"sweep_interval_seconds": 1},
    }
    for section, values in sections.items():
        doc.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(doc))
    return path
