"""A fast protobuf codec for the ext_proc messages this processor exchanges with Envoy.

The generated envoy-data-plane classes (betterproto2 + pydantic) rebuild a pydantic validator
for every message parsed or serialized: about 0.4 ms to parse a request-headers message and as
much to serialize an immediate response, which was most of the processor's CPU per request
(see bench/README.md).  This module reads and writes the wire format directly:

* :func:`decode_request` returns a light object shaped like ``ProcessingRequest`` for the four
  phases the processor handles (``betterproto2.which_one_of`` works on it); any other field is
  parsed with the generated class on first access, and other messages are parsed by it.
* :func:`encode_response` writes a generated ``ProcessingResponse`` without validating it; a
  response using a field not written here is serialized by the generated class.
"""

from __future__ import annotations

from typing import Any

from extproc.protocol import messages as m

# --- decoding -------------------------------------------------------------------------------


class _Unsupported(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Unsupported("varint too long")


def _fields(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, value or start, stop) of every field in ``buf[pos:end]``."""
    out = []
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, 0, value, pos))
        elif wire == 2:
            size, pos = _varint(buf, pos)
            out.append((number, 2, pos, pos + size))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _Unsupported(f"wire type {wire}")
    if pos != end:
        raise _Unsupported("truncated message")
    return out


class HeaderValue:
    """``config.core.v3.HeaderValue``."""

    __slots__ = ("key", "raw_value", "value")

    def __init__(self, key: str = "", value: str = "", raw_value: bytes = b"") -> None:
        self.key, self.value, self.raw_value = key, value, raw_value


class HeaderMap:
    """``config.core.v3.HeaderMap``."""

    __slots__ = ("headers",)

    def __init__(self, headers: list[HeaderValue]) -> None:
        self.headers = headers


class HttpHeaders:
    """``HttpHeaders`` (the deprecated ``attributes`` map is not read)."""

    __slots__ = ("end_of_stream", "headers")

    def __init__(self, headers: HeaderMap | None, end_of_stream: bool) -> None:
        self.headers, self.end_of_stream = headers, end_of_stream


class HttpBody:
    """``HttpBody``."""

    __slots__ = ("body", "end_of_stream", "end_of_stream_without_message", "grpc_message_compressed")

    def __init__(self, body: bytes, end_of_stream: bool, without_message: bool, compressed: bool) -> None:
        self.body, self.end_of_stream = body, end_of_stream
        self.end_of_stream_without_message, self.grpc_message_compressed = without_message, compressed


def _header_map(buf: bytes, start: int, stop: int) -> HeaderMap:
    headers = []
    for number, wire, s, e in _fields(buf, start, stop):
        if number == 1 and wire == 2:
            h = HeaderValue()
            for n, w, hs, he in _fields(buf, s, e):
                if w != 2:
                    continue
                if n == 1:
                    h.key = buf[hs:he].decode()
                elif n == 2:
                    h.value = buf[hs:he].decode()
                elif n == 3:
                    h.raw_value = buf[hs:he]
            headers.append(h)
    return HeaderMap(headers)


def _http_headers(buf: bytes, start: int, stop: int) -> HttpHeaders:
    headers, eos = None, False
    for number, wire, s, e in _fields(buf, start, stop):
        if number == 1 and wire == 2:
            headers = _header_map(buf, s, e)
        elif number == 3 and wire == 0:
            eos = bool(s)
    return HttpHeaders(headers, eos)


def _http_body(buf: bytes, start: int, stop: int) -> HttpBody:
    body, flags = b"", [False, False, False]
    for number, wire, s, e in _fields(buf, start, stop):
        if number == 1 and wire == 2:
            body = buf[s:e]
        elif 2 <= number <= 4 and wire == 0:
            flags[number - 2] = bool(s)
    return HttpBody(body, *flags)


_REQUEST_META: Any = None


class ProcessingRequest:
    """The four phases of ``ProcessingRequest`` decoded; other fields parsed on first access."""

    __slots__ = (
        "_full",
        "_raw",
        "request_body",
        "request_headers",
        "request_trailers",
        "response_body",
        "response_headers",
        "response_trailers",
    )

    def __init__(self, raw: bytes) -> None:
        self._raw, self._full = raw, None
        self.request_headers = self.response_headers = None
        self.request_body = self.response_body = None
        self.request_trailers = self.response_trailers = None

    @property
    def _betterproto(self) -> Any:
        """The generated class's metadata (``betterproto2.which_one_of`` reads it)."""
        global _REQUEST_META
        if _REQUEST_META is None:
            _REQUEST_META = m.ProcessingRequest()._betterproto
        return _REQUEST_META

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = self._full
        if full is None:
            full = self._full = m.ProcessingRequest.FromString(self._raw)
        return getattr(full, name)


def decode_request(data: bytes) -> Any:
    """A ``ProcessingRequest`` from its wire bytes (light for headers and bodies)."""
    try:
        req = ProcessingRequest(data)
        for number, wire, s, e in _fields(data, 0, len(data)):
            if wire != 2:
                continue
            if number == 2:
                req.request_headers = _http_headers(data, s, e)
            elif number == 3:
                req.response_headers = _http_headers(data, s, e)
            elif number == 4:
                req.request_body = _http_body(data, s, e)
            elif number == 5:
                req.response_body = _http_body(data, s, e)
            elif number in (6, 7):
                raise _Unsupported("trailers")
        return req
    except (_Unsupported, IndexError, UnicodeDecodeError):
        return m.ProcessingRequest.FromString(data)


# --- encoding -------------------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, number: int, data: bytes) -> None:
    _put_varint(out, (number << 3) | 2)
    _put_varint(out, len(data))
    out += data


def _put_int(out: bytearray, number: int, value: int) -> None:
    if value:
        _put_varint(out, number << 3)
        _put_varint(out, value & 0xFFFFFFFFFFFFFFFF)


def _header_value(h: Any) -> bytes:
    out = bytearray()
    if h.key:
        _put_bytes(out, 1, h.key.encode())
    if h.value:
        _put_bytes(out, 2, h.value.encode())
    if h.raw_value:
        _put_bytes(out, 3, h.raw_value)
    return bytes(out)


def _header_mutation(hm: Any) -> bytes:
    out = bytearray()
    for option in hm.set_headers:
        if option.append is not None:
            raise _Unsupported("append")
        inner = bytearray()
        if option.header is not None:
            _put_bytes(inner, 1, _header_value(option.header))
        _put_int(inner, 3, int(option.append_action))
        _put_int(inner, 4, int(option.keep_empty_value))
        _put_bytes(out, 1, bytes(inner))
    for name in hm.remove_headers:
        _put_bytes(out, 2, name.encode())
    return bytes(out)


def _common(c: Any) -> bytes:
    if c.body_mutation is not None or c.trailers is not None:
        raise _Unsupported("body_mutation / trailers")
    out = bytearray()
    _put_int(out, 1, int(c.status))
    if c.header_mutation is not None:
        _put_bytes(out, 2, _header_mutation(c.header_mutation))
    _put_int(out, 5, int(c.clear_route_cache))
    return bytes(out)


def _wrapped_common(r: Any) -> bytes:
    out = bytearray()
    if r.response is not None:
        _put_bytes(out, 1, _common(r.response))
    return bytes(out)


def _trailers(r: Any) -> bytes:
    out = bytearray()
    if r.header_mutation is not None:
        _put_bytes(out, 1, _header_mutation(r.header_mutation))
    return bytes(out)


def _immediate(r: Any) -> bytes:
    if r.grpc_status is not None:
        raise _Unsupported("grpc_status")
    out = bytearray()
    if r.status is not None:
        status = bytearray()
        _put_int(status, 1, int(r.status.code))
        _put_bytes(out, 1, bytes(status))
    if r.headers is not None:
        _put_bytes(out, 2, _header_mutation(r.headers))
    if r.body:
        _put_bytes(out, 3, r.body if isinstance(r.body, bytes) else r.body.encode())
    if r.details:
        _put_bytes(out, 5, r.details.encode())
    return bytes(out)


_MODE_FIELDS = (
    "request_header_mode",
    "response_header_mode",
    "request_body_mode",
    "response_body_mode",
    "request_trailer_mode",
    "response_trailer_mode",
)


def _mode(mode: Any) -> bytes:
    out = bytearray()
    for number, name in enumerate(_MODE_FIELDS, start=1):
        _put_int(out, number, int(getattr(mode, name)))
    return bytes(out)


_RESPONSE_FIELDS = (
    ("request_headers", 1, _wrapped_common),
    ("response_headers", 2, _wrapped_common),
    ("request_body", 3, _wrapped_common),
    ("response_body", 4, _wrapped_common),
    ("request_trailers", 5, _trailers),
    ("response_trailers", 6, _trailers),
    ("immediate_response", 7, _immediate),
    ("mode_override", 9, _mode),
)


def encode_response(response: Any) -> bytes:
    """The wire bytes of a generated ``ProcessingResponse``."""
    if (
        response.dynamic_metadata is not None
        or response.override_message_timeout is not None
        or response.streamed_immediate_response is not None
        or response.request_drain
    ):
        return bytes(response)
    try:
        out = bytearray()
        for name, number, encode in _RESPONSE_FIELDS:
            value = getattr(response, name)
            if value is not None:
                _put_bytes(out, number, encode(value))
        return bytes(out)
    except _Unsupported:
        return bytes(response)
