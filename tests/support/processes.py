"""Starting ``semantic-cache`` as users do, waiting for its ports, and stopping it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

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


def serve_env(metrics_port: int | None = None) -> dict[str, str]:
    """The environment of a ``semantic-cache serve`` in a test: its management and admin
    listeners on free ports, never the defaults a ``make run`` on the machine may hold."""
    return dict(os.environ) | {
        "SEMANTIC_CACHE_METRICS_ADDRESS": f"127.0.0.1:{metrics_port or free_port()}",
        "SEMANTIC_CACHE_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
    }
