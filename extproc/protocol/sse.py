"""Server-sent events framing (the WHATWG event-stream format): reading events, writing data events.

Lines end at CR, LF or CRLF and nowhere else: ``str.splitlines()`` would also split at U+2028,
U+2029, U+0085 and other characters that JSON carries unescaped inside an event's data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")

# Characters that JSON may leave raw but that line-splitting helpers (Python's str.splitlines,
# some client libraries) treat as line breaks: written escaped, they cannot cut an event.
_ESCAPE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: its type (``""`` when unnamed) and its data lines joined by LF."""

    event: str
    data: str


def iter_sse_events(text: str) -> Iterator[SseEvent]:
    """Yield the events of a complete SSE body (already decoded from UTF-8).

    Follows the spec's interpretation rules: ``:`` lines are comments, one space after the
    colon is dropped, ``id`` and ``retry`` are ignored. Unlike the spec, an event that names a
    type but has no data is still yielded (an ``event: error`` must never go unseen), and an
    event still open when the body ends counts, as if the final blank line had been sent.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    event, data, pending = "", [], False
    for line in _LINE_END.split(text):
        if not line:
            if pending:
                yield SseEvent(event, "\n".join(data))
            event, data, pending = "", [], False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
            pending = True
        elif name == "event":
            event = value
            pending = True
    if pending:
        yield SseEvent(event, "\n".join(data))


def iter_sse_data(body: bytes) -> Iterator[str]:
    """The data of every event of a complete SSE body, in order (raises UnicodeDecodeError)."""
    for event in iter_sse_events(body.decode("utf-8")):
        yield event.data


def dump_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON with line-break characters escaped.

    Text with lone surrogates (a pair split across two deltas, each sent as a ``\\u`` escape)
    cannot be UTF-8: it is then written with ASCII escapes, which JSON readers join back.
    """
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return text.translate(_ESCAPE_BREAKS).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def sse_data(payload: Any) -> bytes:
    """One unnamed event carrying ``payload`` as :func:`dump_json`."""
    return b"data: " + dump_json(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"
"""The event that ends an OpenAI stream."""
