"""The grpc.aio server: the ext_proc stream loop, gRPC health, message limits, graceful shutdown.

Each stream's first message picks its processor (:func:`extproc.dataplane.processors.open_processor`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.dataplane.health import make_app, start_management
from extproc.dataplane.processors import Processor, open_processor
from extproc.dataplane.shared import Shared
from extproc.observability.metrics import Metrics
from extproc.protocol import messages as m
from extproc.protocol import wire

log = logging.getLogger(__name__)

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


class BackgroundTasks:
    """Tracks fire-and-forget work (stores after a response) so shutdown can wait for it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for running tasks."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


class ExtProcServer:
    """Serves ``ExternalProcessor/Process`` and gRPC health on one address."""

    def __init__(
        self, shared: Shared, tasks: BackgroundTasks, max_message_bytes: int, metrics: Metrics | None = None
    ) -> None:
        self.shared = shared
        self.tasks = tasks
        self.metrics = metrics or Metrics()
        self.management: web.AppRunner | None = None
        self.management_port = 0
        self.health = health.aio.HealthServicer()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            # grpc-core drops new calls once 1000 wait to be picked up (at random up to 3000): a
            # burst of new streams lost some, and Envoy sent those requests upstream uncached. The
            # processor sheds load itself (max_added_latency_ms), with a reason on each request.
            ("grpc.server.max_pending_requests", 1 << 20),
            ("grpc.server.max_pending_requests_hard_limit", 1 << 20),
        ]
        self.server = grpc.aio.server(options=options)
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Process": grpc.stream_stream_rpc_method_handler(
                    self._process,
                    request_deserializer=wire.decode_request,
                    response_serializer=wire.encode_response,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def _process(
        self, requests: AsyncIterator[m.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        processor: Processor | None = None
        try:
            async for request in requests:
                if processor is None:  # the first message (request headers) picks the processor
                    metadata = context.invocation_metadata()
                    processor = open_processor(request, self.shared, metadata, context.write)
                reply = await processor.handle(request)
                await context.write(reply)
                if reply.immediate_response is not None or processor.finished:
                    return
        finally:
            if processor is not None:
                processor.on_stream_closed()

    async def start(self, address: str) -> int:
        """Bind and start; return the bound port (useful with port 0)."""
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
        self.shared.loop_lag.start()
        if self.shared.verification is not None:
            self.shared.verification.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def start_management(self, address: str) -> int:
        """Serve /metrics, /healthz and /readyz on ``address``; return the bound port."""
        app = make_app(self.shared, self.metrics)
        self.management, self.management_port = await start_management(app, address)
        return self.management_port

    async def stop(self, grace: float) -> None:
        """Stop taking streams, let open ones finish (up to ``grace`` s), then wait for stores."""
        await self.health.enter_graceful_shutdown()
        started = time.monotonic()
        await self.server.stop(grace)
        await self.tasks.drain(max(1.0, grace - (time.monotonic() - started)))
        if self.shared.verification is not None:  # after the drain: shadows in flight used it
            await self.shared.verification.close()
        await self.shared.loop_lag.stop()
        if self.management is not None:
            await self.management.cleanup()
            self.management = None
