"""Runs ``milvus-server`` so that a restart can take back its old port.

The wrapper probes each port with a plain bind before starting Milvus; right after a stop the
port is in TIME_WAIT, the probe fails and the wrapper silently moves to the next port, so the
restarted server would not be where its clients are.  Milvus itself binds with SO_REUSEADDR;
the probe here does the same.
"""

from __future__ import annotations

import socket
import sys

import milvus


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


milvus.MilvusServerConfig.try_bind_port = _try_bind_port  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "milvus-server"
    sys.exit(milvus.main())
