"""Connecting to Milvus: what is logged at once, and a host DNS does not know fails at once."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from extproc.cache.backends.milvus.client import open_client
from extproc.config.milvus import parse_milvus_config


def test_unknown_host_fails_at_once_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    # timeout 60: without the DNS check pymilvus would wait all of it before failing.
    settings = parse_milvus_config({"connection": {"host": "no-such-host.invalid", "timeout": 60}}, "m.yaml")
    caplog.set_level(logging.INFO)
    with pytest.raises(ConnectionError, match=r"cannot resolve Milvus host 'no-such-host\.invalid'"):
        open_client(settings)
    assert "connecting to Milvus at no-such-host.invalid:19530" in caplog.text
    assert "Milvus connection attempt to no-such-host.invalid:19530 failed: cannot resolve" in caplog.text


def test_uri_host_is_resolved_too() -> None:
    settings = parse_milvus_config({"connection": {"uri": "https://no-such-host.invalid:443"}}, "m.yaml")
    with pytest.raises(ConnectionError, match=r"no-such-host\.invalid"):
        open_client(settings)


def test_a_connect_that_hangs_never_holds_the_exit(tmp_path: Path) -> None:
    """A server that does not answer holds a connect for connection.timeout (60 s): a processor
    told to stop must not wait for it (the interpreter joins executor threads at exit)."""
    with socket.socket() as listener:  # accepts the TCP connection, never speaks gRPC
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        script = tmp_path / "stop.py"
        script.write_text(
            "import asyncio\n"
            "from extproc.cache.backends.milvus import MilvusBackend\n"
            "from extproc.config.milvus import parse_milvus_config\n"
            "async def main():\n"
            f"    connection = {{'host': '127.0.0.1', 'port': {port}, 'timeout': 60}}\n"
            "    s = parse_milvus_config({'connection': connection}, 'm')\n"
            "    backend = MilvusBackend(s, 8, 10)\n"
            "    await backend.start()\n"
            "    await asyncio.sleep(1.0)\n"
            "    assert backend.state != 'ready'\n"
            "    await backend.close()\n"
            "asyncio.run(main())\n"
        )
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 30, f"the exit waited {took:.0f} s for the connect"
