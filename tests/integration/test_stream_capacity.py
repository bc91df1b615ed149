"""A burst of ext_proc streams, as Envoy opens them when many requests arrive at once.

Every request on a cached route holds a stream for its whole life; one the processor does not
take is a request that goes upstream uncached (``failure_mode_allow``) and is never counted.
"""

from __future__ import annotations

import asyncio

import betterproto2
import grpc
import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue
from envoy_data_plane.envoy.service.ext_proc.v3 import HttpHeaders, ProcessingRequest, ProcessingResponse

from extproc.app import build_server
from extproc.config.settings import CacheSettings, ServerSettings, with_overrides
from tests.support.toy import DIM, toy_encode

pytestmark = pytest.mark.integration

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEADERS = [(":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")]


async def test_fifteen_hundred_streams_opened_at_once_are_all_taken() -> None:
    """grpc-core dropped new calls past 1000 waiting to be picked up: 63 of 1500 failed."""
    settings = with_overrides(
        CacheSettings(server=ServerSettings(grpc_address="127.0.0.1:0")),
        max_added_latency_ms=0,
        verifier_model="",
    )
    server = await build_server(settings, (toy_encode, DIM))
    port = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    opened = channel.stream_stream(
        METHOD, request_serializer=bytes, response_deserializer=ProcessingResponse.FromString
    )
    headers = HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS])
    calls = []

    async def one() -> str:
        call = opened()
        calls.append(call)
        try:
            await call.write(ProcessingRequest(request_headers=HttpHeaders(headers=headers)))
            reply = await asyncio.wait_for(call.read(), 30)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        if reply is grpc.aio.EOF:
            return "EOF"
        return betterproto2.which_one_of(reply, "response")[0] or "none"

    try:
        outcomes = await asyncio.gather(*(one() for _ in range(1500)))
        assert outcomes.count("request_headers") == 1500, {o: outcomes.count(o) for o in set(outcomes)}
    finally:
        for call in calls:
            call.cancel()
        await channel.close()
        await server.stop(0)
        await server.shared.cache.close()
