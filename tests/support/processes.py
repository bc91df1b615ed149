"""Starting ``semantic-cache`` as users do, waiting for its ports, and stopping it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, free_port, python_exe


def cli(*args: str, env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start ``semantic-cache ARGS`` with output to ``log`` (this checkout's code, from any ``cwd``)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [python_exe(), "-m", "extproc.cli", *args],
            env=env | {"PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


async def wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Wait until something listens on 127.0.0.1:port (or fail with the process log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"nothing listened on {port}:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Signal a process and wait for it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


@dataclass
class Serving:
    """A ``semantic-cache serve`` process on free ports."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    grpc_port: int
    log: Path


def start_serve(folder: Path, section: dict[str, Any], *python_args: str, timeout: float = 120) -> Serving:
    """``serve`` with ``semantic_cache`` settings ``section`` (plus free listen ports), once /healthz
    answers; ``python_args`` go to the interpreter (e.g. ``-X importtime``)."""
    grpc_port = free_port()
    config = {"semantic_cache": section | {"server": {"grpc_address": f"127.0.0.1:{grpc_port}"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metrics_port = free_port()
    metrics = f"127.0.0.1:{metrics_port}"
    env = serve_env(metrics_port)
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                python_exe(),
                *python_args,
                "-m",
                "extproc.cli",
                "serve",
                "--config",
                str(folder / "config.yaml"),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    serving = Serving(process, f"http://{metrics}", grpc_port, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"serve exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{serving.metrics_url}/healthz", timeout=2).read()
            return serving
        except OSError:
            if time.monotonic() > deadline:
                stop(process)
                raise AssertionError(f"/healthz never answered:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)


def unreachable_milvus(folder: Path) -> dict[str, Any]:
    """Settings selecting the Milvus backend on a closed port: serve starts and bypasses."""
    (folder / "milvus.yaml").write_text(
        f"connection:\n  host: 127.0.0.1\n  port: {free_port()}\n  timeout: 2\n"
    )
    return {"backend_type": "milvus", "backend_config_path": str(folder / "milvus.yaml")}


def serve_env(metrics_port: int | None = None) -> dict[str, str]:
    """The environment of a ``semantic-cache serve`` in a test: its management and admin
    listeners on free ports, never the defaults a ``make run`` on the machine may hold."""
    return dict(os.environ) | {
        "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{metrics_port or free_port()}",
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
    }
