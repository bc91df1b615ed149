"""preStop drain with real Envoy."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from extproc.cli.envoy import envoy_binary
from tests.conftest import free_port
from tests.support.json_handler import JsonHandler

from .helpers import RELEASE, render


class SlowUpstream(JsonHandler):
    """An LLM stand-in that takes ``delay`` seconds to answer."""

    delay = 1.5

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.delay)
        self.send_json({"object": "chat.completion", "choices": []})


def http_status(url: str, data: bytes | None = None, timeout: float = 10) -> int:
    """Status of one request (0 when the connection fails)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclass
class RunningEnvoy:
    """The chart's Envoy (its config and command line) on free loopback ports."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    drain_script: Path
    env: dict[str, str] = field(default_factory=dict)

    def drain(self, mode: str) -> subprocess.Popen[bytes]:
        """Start the preStop hook of one container."""
        return subprocess.Popen(["bash", str(self.drain_script), mode], env=os.environ | self.env)


@pytest.fixture
def chart_envoy(chart: Path, tmp_path: Path) -> Iterator[RunningEnvoy]:
    """Envoy from the rendered ConfigMap and container args, in front of a slow upstream."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, admin_port = free_port(), free_port()
    r = render(
        chart,
        {
            "upstream": {"url": f"http://127.0.0.1:{upstream.server_address[1]}"},
            # Loopback only in the test; the processor is absent (failure_mode_allow passes).
            "envoy": {"listenAddress": "127.0.0.1", "port": port, "adminPort": admin_port},
            "processor": {"grpcPort": free_port()},
            "drain": {"minSeconds": 0, "maxSeconds": 20},
        },
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(r.data(f"{RELEASE}-envoy", "envoy.yaml"))
    script = tmp_path / "drain.sh"
    script.write_text(r.data(f"{RELEASE}-envoy", "drain.sh"))
    container = r.container("envoy")
    args = [str(config) if a == "/etc/envoy/envoy.yaml" else a for a in container["args"]]
    log = (tmp_path / "envoy.log").open("wb")
    process = subprocess.Popen(
        [envoy_binary(), *args, "--use-dynamic-base-id"], stdout=log, stderr=subprocess.STDOUT
    )
    running = RunningEnvoy(
        process, port, admin_port, script, {e["name"]: e["value"] for e in container["env"]}
    )
    try:
        deadline = time.monotonic() + 30
        while http_status(f"http://127.0.0.1:{port}/healthz", timeout=1) != 200:
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "envoy.log"
            ).read_text()
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
        log.close()
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.integration
def test_prestop_drain_waits_for_streams_in_flight(chart_envoy: RunningEnvoy) -> None:
    url = f"http://127.0.0.1:{chart_envoy.port}"
    statuses: list[int] = []
    request = threading.Thread(
        target=lambda: statuses.append(
            http_status(f"{url}/v1/chat/completions", b'{"model": "m", "messages": []}')
        )
    )
    request.start()
    time.sleep(0.4)  # in flight now, answered after 1.5 s
    started = time.monotonic()
    hook = chart_envoy.drain("envoy")
    assert hook.wait(15) == 0
    waited = time.monotonic() - started
    request.join(5)
    assert statuses == [200], "the request in flight completed"
    assert 0.6 < waited < 10, f"the hook returned after {waited:.1f}s"
    assert chart_envoy.process.poll() is None, "Envoy itself stops on the kubelet's SIGTERM"
    status = http_status(f"{url}/healthz", timeout=2)
    assert status in (503, 0), "readiness fails (503), or the drained listener is closed"


@pytest.mark.integration
def test_prestop_keeps_the_processor_until_envoy_exits(chart_envoy: RunningEnvoy) -> None:
    hook = chart_envoy.drain("processor")
    time.sleep(2.5)
    assert hook.poll() is None, "the processor waits while Envoy runs"
    chart_envoy.process.terminate()
    chart_envoy.process.wait(10)
    assert hook.wait(5) == 0
