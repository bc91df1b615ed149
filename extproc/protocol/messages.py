"""Builders for ext_proc messages (envoy-data-plane types), so processors stay readable."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

from envoy_data_plane.envoy.config.core.v3 import (
    HeaderMap,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    ImmediateResponse,
    ProcessingRequest,
    ProcessingResponse,
    TrailersResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode

__all__ = ["ProcessingRequest", "ProcessingResponse"]

_OVERWRITE = HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


MAX_HEADERS_COUNT = 100
"""Envoy's default header-count limit (``max_headers_count``), which a mutation must not reach."""
MAX_HEADERS_BYTES = 60 * 1024
"""Envoy's default header-size limit (``max_request_headers_kb``: 60 KiB)."""
_HEADROOM = (4, 1024)
"""Headers Envoy may still add after ours (x-request-id, x-envoy-*…): count, bytes."""


def header_dict(headers: HeaderMap | None) -> dict[str, str]:
    """Envoy's header map as a dict of lowercase names; repeated headers joined with ``,``.

    Bytes that are not UTF-8 are kept as they were (``surrogateescape``), never folded into
    U+FFFD: ``t\\xff`` and ``t\\xfe`` stay two different values (scopes hash the raw bytes).
    """
    out: dict[str, str] = {}
    if headers is None:
        return out
    for h in headers.headers:
        value = h.raw_value.decode("utf-8", "surrogateescape") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def header_size(headers: HeaderMap | None) -> tuple[int, int]:
    """(count, bytes) of a header map, as Envoy counts them against its limits."""
    if headers is None:
        return 0, 0
    return len(headers.headers), sum(
        len(h.key) + len(h.raw_value or h.value.encode()) for h in headers.headers
    )


def near_header_limits(size: tuple[int, int], adding: Mapping[str, str] | None = None) -> bool:
    """True when a header mutation could take the map to Envoy's limits (it would answer 500)."""
    extra = adding or {}
    count = size[0] + len(extra) + _HEADROOM[0]
    nbytes = size[1] + sum(len(k) + len(v.encode()) for k, v in extra.items()) + _HEADROOM[1]
    return count > MAX_HEADERS_COUNT or nbytes > MAX_HEADERS_BYTES


def header_path(headers: HeaderMap | None) -> str:
    """The ``:path`` pseudo-header of a header map ("" when absent)."""
    for h in headers.headers if headers is not None else ():
        if h.key == ":path":
            return h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return ""


def mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> HeaderMutation | None:
    """A header mutation (values go in ``raw_value``), or None when there is nothing to do."""
    options = [
        HeaderValueOption(header=HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE)
        for k, v in (set_headers or {}).items()
    ]
    removed = list(remove)
    if not options and not removed:
        return None
    return HeaderMutation(set_headers=options, remove_headers=removed)


def _common(headers: HeaderMutation | None) -> CommonResponse:
    return CommonResponse(header_mutation=headers) if headers is not None else CommonResponse()


# Modes a processor can switch a stream to after the request headers.
SKIP_ALL = ProcessingMode(
    request_header_mode=ProcessingModeHeaderSendMode.SEND,
    request_body_mode=ProcessingModeBodySendMode.NONE,
    response_header_mode=ProcessingModeHeaderSendMode.SKIP,
    response_body_mode=ProcessingModeBodySendMode.NONE,
    request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
    response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
)
"""Not ours: Envoy sends nothing more for this stream."""

HEADERS_ONLY = ProcessingMode(
    request_header_mode=ProcessingModeHeaderSendMode.SEND,
    request_body_mode=ProcessingModeBodySendMode.NONE,
    response_header_mode=ProcessingModeHeaderSendMode.SEND,
    response_body_mode=ProcessingModeBodySendMode.NONE,
    request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
    response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
)
"""A chat request we bypass: only the response headers come back (to mark them)."""

NO_RESPONSE_BODY = ProcessingMode(
    request_header_mode=ProcessingModeHeaderSendMode.SEND,
    response_header_mode=ProcessingModeHeaderSendMode.SEND,
    request_body_mode=ProcessingModeBodySendMode.BUFFERED_PARTIAL,
    response_body_mode=ProcessingModeBodySendMode.NONE,
    request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
    response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
)
"""After the response headers: the body will not be stored, so do not stream it to us."""


def request_headers(
    headers: HeaderMutation | None = None, mode: ProcessingMode | None = None
) -> ProcessingResponse:
    """Continue after the request headers, optionally mutating them and changing the mode."""
    return ProcessingResponse(request_headers=HeadersResponse(response=_common(headers)), mode_override=mode)


def request_body() -> ProcessingResponse:
    """Let the (unchanged) request body go upstream."""
    return ProcessingResponse(request_body=BodyResponse(response=CommonResponse()))


def response_headers(
    headers: HeaderMutation | None = None, mode: ProcessingMode | None = None
) -> ProcessingResponse:
    """Continue after the response headers, optionally adding headers and changing the mode."""
    return ProcessingResponse(response_headers=HeadersResponse(response=_common(headers)), mode_override=mode)


def response_body() -> ProcessingResponse:
    """Pass a response body chunk on unchanged."""
    return ProcessingResponse(response_body=BodyResponse(response=CommonResponse()))


def continue_phase(phase: str) -> ProcessingResponse:
    """The unchanged "continue" reply to any phase (headers, body or trailers)."""
    if phase.endswith("_headers"):
        return ProcessingResponse(**{phase: HeadersResponse(response=CommonResponse())})
    if phase.endswith("_body"):
        return ProcessingResponse(**{phase: BodyResponse(response=CommonResponse())})
    return ProcessingResponse(**{phase: TrailersResponse()})


def extend_timeout(seconds: float) -> ProcessingResponse:
    """Ask Envoy to wait up to ``seconds`` for the reply to the current message."""
    return ProcessingResponse(override_message_timeout=timedelta(seconds=seconds))


def immediate(status: int, body: bytes, headers: Mapping[str, str]) -> ProcessingResponse:
    """Answer the client directly; the upstream is never called."""
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=StatusCode(status)),
            headers=mutation(headers),
            body=body,
        )
    )
