"""Runs ``milvus-server`` so that a restart can take back its old port, beside any other Milvus.

The wrapper probes each port with a plain bind before starting Milvus; right after a stop the
port is in TIME_WAIT, the probe fails and the wrapper silently moves to the next port, so the
restarted server would not be where its clients are.  Milvus itself binds with SO_REUSEADDR;
the probe here does the same.

Milvus standalone locks one pid file per machine (``/run/milvus/standalone.pid``), so a second
server exits at once while another runs (a user's ``milvus-server``, say).  Started with
``--alias``, Milvus names its pid file after the alias instead: the tests' server takes an
alias of its own (its proxy port) and runs beside any other.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import milvus

_popen = subprocess.Popen


def _try_bind_port(self: milvus.MilvusServerConfig, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def _popen_with_alias(args: Any, *rest: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
    if isinstance(args, list) and args[1:3] == ["run", "standalone"]:
        port = sys.argv[sys.argv.index("--proxy-port") + 1] if "--proxy-port" in sys.argv else "0"
        args = [*args, "--alias", f"tests-{port}"]
    return _popen(args, *rest, **kwargs)


_write_config = milvus.MilvusServerConfig.write_config


def _write_config_with_etcd_ports(self: milvus.MilvusServerConfig) -> None:
    """Also give the embedded etcd a peer port of its own (it defaults to the fixed 2380)."""
    _write_config(self)
    configs = Path(self.base_data_dir) / "configs"
    client = int(self.configurable_items["etcd_port"][1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        peer = s.getsockname()[1]
    embed = configs / "embed-etcd.yaml"
    embed.write_text(
        f"listen-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\n"
    )
    config = configs / "milvus.yaml"
    config.write_text(config.read_text().replace("\netcd:\n", f"\netcd:\n  config:\n    path: {embed}\n", 1))


milvus.MilvusServerConfig.try_bind_port = _try_bind_port  # type: ignore[method-assign]
milvus.MilvusServerConfig.write_config = _write_config_with_etcd_ports  # type: ignore[method-assign]
milvus.subprocess.Popen = _popen_with_alias  # type: ignore[misc]

if __name__ == "__main__":
    sys.argv[0] = "milvus-server"
    sys.exit(milvus.main())
