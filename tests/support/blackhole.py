"""A TCP proxy that can blackhole: a dead pod's address, where packets get no answer and no reset.

Fake of a network fault (the registries cannot give one). ``blackhole()`` stops forwarding on
every open connection and holds new ones unanswered; ``recover()`` forwards new connections again
(the Service points at a new pod) while the old ones stay dead, as they do after a node failure.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class BlackholeProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; :meth:`close` stops it."""

    def __init__(self, target: int) -> None:
        self.target = ("127.0.0.1", target)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._down = False
        self._generation = 0
        self._dead_below = 0
        self._closed = False
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        """Every open connection goes silent; new ones are held unanswered."""
        self._down = True
        self._generation += 1
        self._dead_below = self._generation

    def recover(self) -> None:
        """New connections are forwarded again; the silenced ones stay silent."""
        self._down = False

    def close(self) -> None:
        """Stop accepting and close every socket."""
        self._closed = True
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while self._down and not self._closed:
            time.sleep(0.05)
        generation = self._generation
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            return
        self._sockets.append(upstream)
        while not self._closed:
            if generation < self._dead_below:
                time.sleep(0.2)  # dead: nothing forwarded, nothing closed
                continue
            try:
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
            except (OSError, ValueError):
                return
