"""The fast ext_proc codec against the generated (betterproto2) classes."""

from __future__ import annotations

import betterproto2
import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue, Metadata
from envoy_data_plane.envoy.service.ext_proc.v3 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HttpBody,
    HttpHeaders,
    HttpTrailers,
    ProcessingRequest,
    ProcessingResponse,
)

from extproc.protocol import messages as m
from extproc.protocol import wire

RESPONSES = {
    "request_headers": m.request_headers(),
    "strip_accept_encoding": m.request_headers(m.mutation(remove=("accept-encoding",))),
    "skip_all": m.request_headers(mode=m.SKIP_ALL),
    "headers_only": m.request_headers(mode=m.HEADERS_ONLY),
    "request_body": m.request_body(),
    "marks": m.response_headers(m.mutation({"x-semantic-cache": "miss"})),
    "marks_no_body": m.response_headers(m.mutation({"x-semantic-cache": "bypass"}), m.NO_RESPONSE_BODY),
    "response_body": m.response_body(),
    "trailers": m.continue_phase("response_trailers"),
    "continue_body": m.continue_phase("request_body"),
    "immediate": m.immediate(
        200,
        b'{"choices": []}' * 40,
        {"content-type": "application/json", "x-semantic-cache": "hit", "é": "ü"},
    ),
    "immediate_empty": m.immediate(404, b"", {}),
}


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_responses_encode_as_the_generated_classes_do(name: str) -> None:
    response = RESPONSES[name]
    data = wire.encode_response(response)
    assert ProcessingResponse.FromString(data) == response
    assert data == bytes(response)


def test_unsupported_response_fields_fall_back() -> None:
    response = ProcessingResponse(
        request_body=BodyResponse(response=CommonResponse(body_mutation=BodyMutation(body=b"new")))
    )
    assert wire.encode_response(response) == bytes(response)


def _headers(pairs: list[tuple[str, str]], raw: bool) -> HeaderMap:
    values = [
        HeaderValue(key=k, raw_value=v.encode()) if raw else HeaderValue(key=k, value=v) for k, v in pairs
    ]
    return HeaderMap(headers=values)


PAIRS = [(":method", "POST"), (":path", "/v1/chat/completions"), ("x-tenant", "é"), ("x-tenant", "b")]
REQUESTS = {
    "request_headers": ProcessingRequest(request_headers=HttpHeaders(headers=_headers(PAIRS, True))),
    "request_headers_eos": ProcessingRequest(
        request_headers=HttpHeaders(headers=_headers(PAIRS, False), end_of_stream=True)
    ),
    "response_headers": ProcessingRequest(
        response_headers=HttpHeaders(headers=_headers([(":status", "200")], True))
    ),
    "request_body": ProcessingRequest(
        request_body=HttpBody(body=b'{"model": "m"}' * 100, end_of_stream=True)
    ),
    "response_body": ProcessingRequest(response_body=HttpBody(body=b"data: x\n\n")),
    "empty_body": ProcessingRequest(request_body=HttpBody(end_of_stream=True)),
    "with_metadata": ProcessingRequest(
        request_body=HttpBody(body=b"x"), metadata_context=Metadata(), observability_mode=True
    ),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_requests_decode_as_the_generated_classes_do(name: str) -> None:
    original = REQUESTS[name]
    fast = wire.decode_request(bytes(original))
    phase, value = betterproto2.which_one_of(fast, "request")
    expected_phase, expected = betterproto2.which_one_of(original, "request")
    assert phase == expected_phase
    if phase.endswith("_headers"):
        assert m.header_dict(value.headers) == m.header_dict(expected.headers)
        assert value.end_of_stream == expected.end_of_stream
    else:
        assert (value.body, value.end_of_stream) == (expected.body, expected.end_of_stream)
    assert fast.observability_mode == original.observability_mode  # parsed on demand


def test_other_requests_are_parsed_by_the_generated_class() -> None:
    trailers = ProcessingRequest(request_trailers=HttpTrailers(trailers=_headers([("x", "1")], True)))
    decoded = wire.decode_request(bytes(trailers))
    assert isinstance(decoded, ProcessingRequest) and decoded == trailers
    with pytest.raises(Exception):  # noqa: B017 - whatever the generated parser raises
        wire.decode_request(b"\x12\xff\xff")
