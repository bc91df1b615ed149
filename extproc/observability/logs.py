"""Log formatting: plain text by default, one JSON object per line on request."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

_LINE_BREAKING = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every character that could end or forge a log line escaped (``\\x0a``):
    a request's model name or header value in a message never starts a line of its own."""
    return _LINE_BREAKING.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text
    )


class PlainFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: message``, the message on one line (a traceback follows on its own)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The message part, control characters escaped."""
        record.message = one_line(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


CLIENT_INPUT_LOGGERS = ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span")
"""Loggers that warn about what a client sent: an over-long ``traceparent``, a malformed
``tracestate`` member (the trace context of a request that came without Envoy's)."""


class OncePerInterval(logging.Filter):
    """Lets one record through per ``interval`` seconds, shortened, with a count of those dropped.

    For warnings a client can cause at will: one per request would let any client fill the log
    (and write its header into it)."""

    MAX_MESSAGE = 200

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """True for the first record of an interval (rewritten), False for the rest."""
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        self._next = now + self.interval
        message = record.getMessage()
        if len(message) > self.MAX_MESSAGE:
            message = message[: self.MAX_MESSAGE] + "…"
        note = f"; {self._dropped} more like it not logged" if self._dropped else ""
        record.msg, record.args = f"{message} (from a request's trace headers{note})", None
        self._dropped = 0
        return True


def setup_logging(level: str, fmt: str | None = None) -> None:
    """Plain text by default; JSON with ``SEMANTIC_CACHE_LOG_FORMAT=json``."""
    fmt = (fmt or os.environ.get("SEMANTIC_CACHE_LOG_FORMAT", "plain")).lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("sentence_transformers", "transformers", "httpx", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in CLIENT_INPUT_LOGGERS:
        client_input = logging.getLogger(name)
        client_input.filters = [f for f in client_input.filters if not isinstance(f, OncePerInterval)]
        client_input.addFilter(OncePerInterval())
