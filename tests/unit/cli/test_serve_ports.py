"""``serve`` with a port already taken: a configuration error naming it, and nothing left listening."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from extproc import app
from extproc.config.settings import CacheSettings, ServerSettings
from extproc.dataplane.server import ExtProcServer
from extproc.errors import ConfigError
from tests.support.toy import DIM, toy_encode


@pytest.fixture
def busy() -> Iterator[str]:
    """An address another process would hold: a listening socket on a free port."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield f"127.0.0.1:{held.getsockname()[1]}"


def refused(port: int) -> bool:
    """True when nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("listener", "hint"),
    [
        ("grpc_address", "SEMANTIC_CACHE_GRPC_ADDRESS or semantic_cache.server.grpc_address"),
        ("metrics_address", "SEMANTIC_CACHE_METRICS_ADDRESS or semantic_cache.server.metrics_address"),
        ("admin_address", "SEMANTIC_CACHE_ADMIN_ADDRESS"),
    ],
)
async def test_a_busy_port_is_a_config_error_and_the_started_listeners_stop(
    busy: str, listener: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"grpc_address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0", "admin_address": "127.0.0.1:0"}
    settings = CacheSettings(verifier_model="", server=ServerSettings(**(free | {listener: busy})))
    built: list[ExtProcServer] = []
    real_build = app.build_server

    async def build_with_toy_model(s: CacheSettings) -> ExtProcServer:
        # The real server, with the toy embedding model instead of a downloaded one.
        built.append(await real_build(s, (toy_encode, DIM)))
        return built[0]

    monkeypatch.setattr(app, "build_server", build_with_toy_model)
    with pytest.raises(ConfigError) as info:
        await app.serve(settings)
    message = str(info.value)
    assert f"cannot listen on {busy}" in message and hint in message
    server = built[0]
    if listener != "grpc_address":
        assert server.port and refused(server.port)  # the gRPC server that did start was stopped
    if listener == "admin_address":
        assert server.management is None and refused(server.management_port)


async def test_run_with_a_busy_grpc_port_is_the_same_error_and_stops_the_demo_upstream(
    busy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``semantic-cache run`` (make run) starts the demo upstream first: it goes too."""
    import importlib

    from extproc.cli import demo_upstream

    cli = importlib.import_module("extproc.cli.main")  # the package exports main() by that name

    free = {"metrics_address": "127.0.0.1:0", "admin_address": "127.0.0.1:0"}
    settings = CacheSettings(verifier_model="", server=ServerSettings(grpc_address=busy, **free))
    demos: list[int] = []
    real_demo = demo_upstream.start_demo_upstream

    async def recorded_demo(host: str, port: int) -> object:
        runner, bound = await real_demo(host, port)
        demos.append(bound)
        return runner, bound

    monkeypatch.delenv("UPSTREAM_URL", raising=False)
    monkeypatch.setattr(demo_upstream, "start_demo_upstream", recorded_demo)
    real_build = app.build_server
    monkeypatch.setattr(app, "build_server", lambda s: real_build(s, (toy_encode, DIM)))
    with pytest.raises(ConfigError, match=f"cannot listen on {busy}"):
        await cli._run(settings, "error")
    assert demos and refused(demos[0])
