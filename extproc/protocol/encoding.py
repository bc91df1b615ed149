"""Content-encoding of bodies: gzip decompressed incrementally, never past a size limit.

A small compressed body can expand a thousandfold (a "decompression bomb"); the output is
produced in pieces and the work stops as soon as it passes the limit, so memory stays bounded
by the limit whatever the input.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

GZIP = frozenset({"gzip", "x-gzip"})
IDENTITY = frozenset({"", "identity"})
INLINE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop; larger or compressed ones in a thread
(parsing costs milliseconds per megabyte, and one event loop serves every stream)."""


def gunzip_bounded(data: bytes, limit: int) -> bytes | None:
    """The decompressed ``data`` (gzip, one or more members), or None once it exceeds ``limit`` bytes.

    Raises :class:`zlib.error` or :class:`EOFError` on a corrupt or truncated stream.
    """
    out = bytearray()
    pending = data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            chunk = inflater.decompress(pending, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                return None
            pending = inflater.unconsumed_tail
            if not chunk and not pending and not inflater.eof:
                raise EOFError("the gzip stream ends before its last block")
        pending = inflater.unused_data
        if not pending.strip(b"\x00"):  # nothing, or padding, after the last member
            return bytes(out)


def json_media_type(content_type: str) -> bool:
    """True for a request body servers read as JSON: ``application/json``, ``application/*+json``,
    or no content-type at all (FastAPI, and so vLLM, parses a body without one as JSON). A hit
    for ``text/plain`` or a form (``curl -d``) would be a 200 where the server answers 415 / 422."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media:
        return True
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def declared_length(headers: Mapping[str, str]) -> int:
    """The body size ``content-length`` declares (0 when absent or not a plain number: a chunked
    body's size is known only once it has arrived)."""
    value = headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else 0
