"""A quiet ``http.server`` handler base for tests' small JSON servers (threads, not asyncio)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """Subclasses answer with :meth:`send_json`; nothing is logged to stderr."""

    def send_json(self, payload: Any, status: int = 200) -> None:
        """Answer with ``payload`` as a JSON body of known length."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""
