"""The shadow request: the client's request repeated as one JSON answer, marked so nothing caches it.

Preparing it (inflate, parse, re-encode) costs milliseconds per megabyte, so a body larger than
the request path's inline limit, or a compressed one, is prepared in a worker thread: shadows
run beside the requests on one event loop and must not stall them.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace

from extproc.protocol.encoding import GZIP, INLINE_BYTES, gunzip_bounded

HEADER = "x-semantic-cache"
"""The prefix of the cache's headers (``shared.HEADER``; not imported: ``Shared`` holds this component)."""
SHADOW_HEADER = f"{HEADER}-shadow"
"""Marks a shadow request (the processor bypasses it: it also says no-cache, no-store)."""
ENTRY_HEADER = f"{HEADER}-entry"
"""The opaque id of the entry a hit served (and that feedback names)."""
FEEDBACK_HEADER = f"{HEADER}-feedback"
"""``wrong`` on a ``cache-control: no-cache`` retry: the entry named by ENTRY_HEADER was wrong."""
DROPPED_HEADERS = frozenset(
    {"host", "content-length", "content-encoding", "accept-encoding", "cache-control", "connection",
     "transfer-encoding", "keep-alive", "te", "trailer", "upgrade", "expect"}
)  # fmt: skip
"""Client headers a shadow request does not repeat (the body is re-encoded, caching is refused;
``x-envoy-*`` and ``x-semantic-cache-*`` are dropped too)."""
REQUEST_IDENTITY_HEADERS = frozenset(
    {"x-request-id", "traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid",
     "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-ot-span-context", "uber-trace-id",
     "x-cloud-trace-context", "x-amzn-trace-id", "sw8", "grpc-trace-bin"}
)  # fmt: skip
"""Headers naming the client's request or its trace: a shadow is another request, so it carries
the verification span's ``traceparent`` instead, when tracing records it (the upstream's logs
and spans of the two calls stay apart, and its spans join the trace under
``semantic_cache.verify``); with tracing off, none."""
SIDE_EFFECTS = ("tools", "functions", "tool_choice")
"""Request fields that declare tools: the upstream may act on them, so never repeated."""
MAX_SHADOW_BYTES = 4 * 1024 * 1024
"""The largest request body (decompressed) a shadow request repeats."""


class Skip(Exception):
    """The request is not repeated; ``args[0]`` is the reason (a skip metric label)."""


def shadow_body(body: bytes, encoding: str) -> bytes:
    """The request body to send: inflated, non-streaming, as JSON.

    Raises :class:`Skip` (``unreadable``, ``side_effects``); a body that is not a JSON object
    raises ValueError (the shadow then counts as an error)."""
    raw = body
    if encoding in GZIP:
        try:
            inflated = gunzip_bounded(raw, MAX_SHADOW_BYTES)
        except (EOFError, zlib.error):
            inflated = None
        if inflated is None:
            raise Skip("unreadable")
        raw = inflated
    try:
        members = top_level(raw.decode())
    except UnicodeDecodeError:  # UTF-16/32 JSON (json.loads reads it): re-encoded whole
        members = {k: (v, json.dumps(v)) for k, v in _object(json.loads(raw)).items()}
    if any(members[name][0] for name in SIDE_EFFECTS if name in members):
        raise Skip("side_effects")
    members["stream"] = (False, "false")  # a stream is verified as one JSON answer
    members.pop("stream_options", None)
    # The members' own text is spliced back, never re-encoded: json.dumps of a large body holds
    # the GIL for milliseconds in one call, which a worker thread would not keep off the loop.
    return ("{" + ", ".join(f"{json.dumps(k)}: {text}" for k, (_, text) in members.items()) + "}").encode()


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("the request is not a JSON object")
    return value


def _ws(text: str, i: int) -> int:
    """The index of the first character at or after ``i`` that is not JSON whitespace."""
    space = _SPACE.match(text, i)
    return space.end() if space else i


def top_level(text: str) -> dict[str, tuple[Any, str]]:
    """The members of the JSON object ``text``: key -> (value, its JSON text as written).

    As :func:`json.loads` reads it (a repeated key: the last value, at the first place); raises
    ValueError when ``text`` is not one JSON object."""
    members: dict[str, tuple[Any, str]] = {}
    i = _ws(text, 0)
    if text[i : i + 1] != "{":
        raise ValueError("the request is not a JSON object")
    i = _ws(text, i + 1)
    try:
        while text[i : i + 1] != "}":
            if members:
                if text[i : i + 1] != ",":
                    raise ValueError(f"',' or '}}' expected at {i}")
                i = _ws(text, i + 1)
            if text[i : i + 1] != '"':
                raise ValueError(f"a member name expected at {i}")
            key, i = _DECODER.scan_once(text, i)
            i = _ws(text, i)
            if text[i : i + 1] != ":":
                raise ValueError(f"':' expected at {i}")
            start = _ws(text, i + 1)
            value, i = _DECODER.scan_once(text, start)
            members[key] = (value, text[start:i])
            i = _ws(text, i)
    except StopIteration as exc:  # the scanner's way of saying "no JSON value here"
        raise ValueError(f"a JSON value expected at {exc.value}") from None
    if _ws(text, i + 1) != len(text):
        raise ValueError("extra data after the request object")
    return members


async def prepare(body: bytes, encoding: str) -> bytes:
    """:func:`shadow_body`, off the event loop when the body is compressed or large."""
    if encoding in GZIP or len(body) > INLINE_BYTES:
        return await asyncio.to_thread(shadow_body, body, encoding)
    return shadow_body(body, encoding)


def shadow_headers(client: Mapping[str, str]) -> dict[str, str]:
    """The client's headers a shadow request repeats, plus its own marks and the current span's
    trace context when it is recorded (call it inside the verification span)."""
    headers = {
        k: v
        for k, v in client.items()
        if not k.startswith((":", HEADER, "x-envoy-"))
        and k not in DROPPED_HEADERS
        and k not in REQUEST_IDENTITY_HEADERS
    }
    headers |= {
        "content-type": "application/json",
        "cache-control": "no-cache, no-store",
        SHADOW_HEADER: "1",
    }
    if trace.get_current_span().is_recording():  # tracing off: no trace of its own to name
        propagate.inject(headers)
    return headers
