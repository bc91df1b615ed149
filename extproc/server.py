"""The grpc.aio server: the ext_proc stream loop, gRPC health, message limits, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import messages as m
from . import wire
from .cache import MemoryBackend, SemanticCache
from .cache.guards import build_guards
from .cache.schema import CacheBackend
from .config import CacheSettings, ConfigError
from .embedding import Embedder, EncodeFn, load_sentence_model
from .management import make_app, start_management
from .processor import Decision, Shared, StreamProcessor
from .telemetry import Metrics

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


class DecisionLog:
    """Counts decisions, feeds the metrics and logs one debug line per request (never prompt text)."""

    def __init__(self, metrics: Metrics | None = None, backend: str = "") -> None:
        self.counts: dict[str, int] = {"hit": 0, "miss": 0, "bypass": 0}
        self.metrics = metrics
        self.backend = backend

    def __call__(self, d: Decision) -> None:
        """Record one decision."""
        self.counts[d.outcome] = self.counts.get(d.outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.observe(d, self.backend)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "decision=%s reason=%s match=%s similarity=%.4f model=%s store=%s timings=%s",
                d.outcome,
                d.reason or "-",
                d.match or "-",
                d.similarity,
                d.model or "-",
                d.store or "-",
                {k: round(v, 2) for k, v in d.timings.items()},
            )


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
        processor = StreamProcessor(self.shared, context.invocation_metadata(), context.write)
        try:
            async for request in requests:
                reply = await processor.handle(request)
                await context.write(reply)
                if reply.immediate_response is not None:
                    return
        finally:
            processor.on_stream_closed()

    async def start(self, address: str) -> int:
        """Bind and start; return the bound port (useful with port 0)."""
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        await self.server.start()
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
        if self.management is not None:
            await self.management.cleanup()
            self.management = None


def make_backend(settings: CacheSettings, dim: int) -> CacheBackend:
    """The backend named by ``backend_type`` (a Milvus backend starts unconnected)."""
    if settings.backend_type == "memory":
        return MemoryBackend(dim, settings.max_entries, settings.eviction_policy)
    from .cache.milvus import MilvusBackend

    milvus = settings.milvus()
    if milvus.dimension != dim:
        raise ConfigError(
            f"{settings.backend_config_path}: collection.vector_field.dimension is {milvus.dimension} "
            f"but the embedding model {settings.embedding_model} produces {dim}-dimensional vectors; "
            f"set it to {dim}"
        )
    return MilvusBackend(milvus, dim, settings.max_entries)


async def make_cache(settings: CacheSettings, model: tuple[EncodeFn, int] | None = None) -> SemanticCache:
    """Model (unless given), backend and guards as ``settings`` say: used by the server and ``eval``."""
    if model is None:
        started = time.perf_counter()
        model = await asyncio.to_thread(
            load_sentence_model,
            settings.embedding_model,
            settings.embedding_threads,
            settings.embedding_backend,
        )
        log.info("model ready in %.2fs", time.perf_counter() - started)
    encode, dim = model
    embedder = Embedder(encode, dim, settings.embedding_batch_size)
    backend = make_backend(settings, dim)
    top_k = settings.milvus().topk if settings.backend_type == "milvus" else settings.top_k
    log.info(
        "cache backend=%s threshold=%.3f max_entries=%d ttl=%ds eviction=%s scope=%s",
        backend.name,
        settings.similarity_threshold,
        settings.max_entries,
        settings.ttl_seconds,
        settings.eviction_policy,
        settings.scope_mode,
    )
    guards = await build_guards(settings, embedder)
    log.info("guards: %s", ", ".join(g.name for g in guards) or "none")
    cache = SemanticCache(
        backend, embedder, settings.similarity_threshold, top_k, settings.ttl_seconds, guards
    )
    await backend.start()
    return cache


async def build_server(settings: CacheSettings, model: tuple[EncodeFn, int] | None = None) -> ExtProcServer:
    """Load the model (unless given), backend and guards; assemble a server (not yet listening)."""
    cache = await make_cache(settings, model)
    tasks = BackgroundTasks()
    metrics = Metrics()
    cache.embedder.on_batch = metrics.batch_size.observe
    decisions = DecisionLog(metrics, cache.backend.name)
    shared = Shared(settings=settings, cache=cache, spawn=tasks.spawn, on_decision=decisions)
    metrics.watch(shared)
    return ExtProcServer(shared, tasks, settings.server.max_message_bytes, metrics)


async def start_management_logged(server: ExtProcServer, address: str) -> None:
    """Start the management listener and log where it is."""
    port = await server.start_management(address)
    log.info(
        "management (metrics, healthz, readyz) listening on http://%s:%d", address.rpartition(":")[0], port
    )


async def serve(settings: CacheSettings, ready: asyncio.Event | None = None) -> None:
    """Run the processor until SIGINT / SIGTERM, then shut down gracefully."""
    from .admin import admin_preflight, start_admin

    admin_preflight(settings)
    server = await build_server(settings)
    port = await server.start(settings.server.grpc_address)
    host = settings.server.grpc_address.rpartition(":")[0]
    log.info("ext_proc gRPC listening on %s:%d", host, port)
    await start_management_logged(server, settings.server.metrics_address)
    admin = await start_admin(server.shared, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: draining streams for up to %.0fs", settings.server.shutdown_grace_seconds)
    await admin.stop()
    await server.stop(settings.server.shutdown_grace_seconds)
    await server.shared.cache.close()
    log.info("stopped")
