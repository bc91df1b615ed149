"""Building the cache and the server from settings: what ``serve``, ``eval``, tests and bench reuse."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from extproc.cache import MemoryBackend, SemanticCache
from extproc.cache.guards import build_guards, build_scorer
from extproc.cache.schema import CacheBackend
from extproc.config.settings import DEFAULT_EMBEDDING_MODEL, ENV_OVERRIDES, CacheSettings
from extproc.dataplane.decision import DecisionLog
from extproc.dataplane.server import BackgroundTasks, ExtProcServer
from extproc.dataplane.shared import Shared
from extproc.dataplane.verification import Verification
from extproc.embedding.base import EncodeFn, model_dimension, resolve_model_path
from extproc.embedding.batcher import Embedder, at_worker_priority
from extproc.embedding.loader import load_sentence_model, plan_workers, workers_for
from extproc.embedding.onnx_backend import usable_cores
from extproc.embedding.remote import API_KEY_ENV, RemoteEncoder
from extproc.errors import ConfigError
from extproc.observability.metrics import Metrics

if TYPE_CHECKING:
    from extproc.admin.api import AdminServer

log = logging.getLogger(__name__)

REMOTE_WORKERS = 4
"""Embedding requests in flight at once to a remote endpoint when ``embedding_workers`` is 0."""


def make_backend(settings: CacheSettings, dim: int) -> CacheBackend:
    """The backend named by ``backend_type`` (a Milvus backend starts unconnected)."""
    if settings.backend_type == "memory":
        return MemoryBackend(dim, settings.max_entries, settings.eviction_policy)
    from extproc.cache.backends.milvus import MilvusBackend

    check_dimension(settings, dim)
    return MilvusBackend(settings.milvus(), dim, settings.max_entries, embedding=settings.embedding_identity)


def check_dimension(settings: CacheSettings, dim: int) -> None:
    """Refuse a Milvus collection configured for another dimension than the model's."""
    milvus = settings.milvus()
    if milvus.dimension != dim:
        raise ConfigError(
            f"{settings.backend_config_path}: collection.vector_field.dimension is {milvus.dimension} "
            f"but the embedding model {embedding_source(settings)} produces {dim}-dimensional vectors; "
            f"set it to {dim}"
        )


def check_startable(settings: CacheSettings) -> list[str]:
    """The start's own refusals that need no model loaded and no connection (``check-config``
    runs them): raises :class:`ConfigError`; returns what only the start can check."""
    from extproc.admin.api import check_admin_address
    from extproc.admin.contract import TOKEN_ENV

    check_admin_address(settings.server.admin_address, os.environ.get(TOKEN_ENV))
    if settings.verifier_model:  # a truncated or foreign file passed here and crash-looped the pod
        from extproc.cache.guards.learned import load_model

        load_model(settings.verifier_model, settings.source)
    if settings.embedding_endpoint:
        return [f"the endpoint's dimension is checked at start ({embedding_source(settings)})"]
    dim = model_dimension(resolve_model_path(settings.embedding_model))
    if dim is None:
        return [f"the dimension of {settings.embedding_model} is checked when it loads at start"]
    if settings.backend_type == "milvus":
        check_dimension(settings, dim)
    return []


def embedding_source(settings: CacheSettings) -> str:
    """The embedding model as messages name it: the local model, or the endpoint and its model."""
    if settings.embedding_endpoint:
        name = settings.embedding_endpoint_model or settings.embedding_model
        return f"{name} at {settings.embedding_endpoint}"
    return settings.embedding_model


async def load_remote_model(settings: CacheSettings) -> tuple[EncodeFn, int]:
    """The endpoint's encoder and its dimension, probed now (the local model is never loaded)."""
    encoder = RemoteEncoder(
        settings.embedding_endpoint,
        settings.embedding_endpoint_model or settings.embedding_model,
        os.environ.get(API_KEY_ENV, ""),
        settings.embedding_timeout_ms / 1000,
        settings.embedding_retries,
        budget=settings.lookup_timeout_ms / 1000,
    )
    dim = await asyncio.to_thread(encoder.probe)
    log.info("remote embedding model %s: dim %d (no word vectors)", embedding_source(settings), dim)
    return encoder, dim


async def make_cache(settings: CacheSettings, model: tuple[EncodeFn, int] | None = None) -> SemanticCache:
    """Model (unless given), backend and guards as ``settings`` say: used by the server and ``eval``."""
    workers, threads = plan_workers(
        settings.embedding_workers, settings.embedding_threads, settings.embedding_backend
    )
    if model is None and settings.embedding_endpoint:
        model = await load_remote_model(settings)
        # HTTP passes overlap: several requests in flight by default, whatever the cores.
        workers = settings.embedding_workers or REMOTE_WORKERS
    if model is None:
        started = time.perf_counter()
        # torch, if ONNX cannot be used, runs one pass at a time: on every core unless told.
        fallback_threads = settings.embedding_threads or usable_cores()
        model = await asyncio.to_thread(
            load_sentence_model,
            settings.embedding_model,
            threads,
            settings.embedding_backend,
            fallback_threads,
        )
        log.info("model ready in %.2fs", time.perf_counter() - started)
    encode, dim = model
    workers = workers_for(encode, workers)
    solo = None
    if workers > 1 and not settings.embedding_threads and hasattr(encode, "with_threads"):
        # Side by side one-thread passes serve a burst best, but a lone query then runs on one
        # core: the same model on every core takes the passes that run alone (~90 MB more).
        cores = usable_cores()
        if getattr(encode, "threads", cores) < cores:
            solo = await at_worker_priority(encode.with_threads, cores)
    embedder = Embedder(encode, dim, settings.embedding_batch_size, workers, solo=solo)
    log.info("embedding: %d pass(es) at once, batches of up to %d", workers, settings.embedding_batch_size)
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
    scorer = build_scorer(settings, embedder, guards)
    log.info(
        "guards: %s; verifier: %s, min_confidence %.2f",
        ", ".join(g.name for g in guards) or "none",
        settings.verifier_model or "none",
        settings.min_confidence,
    )
    cache = SemanticCache(
        backend,
        embedder,
        settings.similarity_threshold,
        top_k,
        settings.ttl_seconds,
        guards,
        scorer=scorer,
        min_confidence=settings.min_confidence,
    )
    await backend.start()
    return cache


def reads_english_only(settings: CacheSettings) -> bool:
    """True when the embedding model is the English-only default: prompts mostly in another
    script hit on their exact repeats only (the server and ``eval`` alike)."""
    return not settings.embedding_endpoint and settings.embedding_model == DEFAULT_EMBEDDING_MODEL


async def build_server(settings: CacheSettings, model: tuple[EncodeFn, int] | None = None) -> ExtProcServer:
    """Load the model (unless given), backend and guards; assemble a server (not yet listening)."""
    cache = await make_cache(settings, model)
    tasks = BackgroundTasks()
    metrics = Metrics()
    cache.embedder.on_batch = metrics.batch_size.observe
    english_only = reads_english_only(settings)
    decisions = DecisionLog(metrics, cache.backend.name, english_only)
    shared = Shared(
        settings=settings, cache=cache, spawn=tasks.spawn, on_decision=decisions, english_only=english_only
    )
    shared.verification = Verification(lambda: shared.settings.verification, cache, tasks.spawn, metrics)
    outcomes = shared.verification.outcomes
    metrics.watch_false_hits(lambda: {m: (rate, upper) for m, (rate, upper, _) in outcomes.rates().items()})
    metrics.watch(lambda: shared.cache.backend, cache.backend.name)
    metrics.watch_embedder(lambda: shared.cache.embedder)
    metrics.watch_loop_lag(lambda: shared.loop_lag.seconds)
    metrics.watch_config(lambda: shared.config_error)
    metrics.watch_hit_ratio(lambda: decisions.counts)
    return ExtProcServer(shared, tasks, settings.server.max_message_bytes, metrics)


def bind_error(what: str, address: str, key: str, exc: BaseException) -> ConfigError:
    """A listener that cannot bind, as a :class:`ConfigError` naming the address and the fix."""
    detail = (getattr(exc, "strerror", None) or str(exc)).rstrip(".")
    variable = next(v for v, path in ENV_OVERRIDES.items() if path == f"server.{key}")
    return ConfigError(
        f"{what} cannot listen on {address}: {detail}. Is the port already in use (another "
        f"processor?) Stop it, or choose another address with {variable} or semantic_cache.server.{key}"
    )


async def start_grpc_logged(server: ExtProcServer, address: str) -> int:
    """Start the ext_proc gRPC listener, log where it is and return its port
    (:class:`ConfigError` if it cannot bind)."""
    try:
        port = await server.start(address)
    except (OSError, RuntimeError) as exc:  # grpc says "Failed to bind" with a RuntimeError
        raise bind_error("the ext_proc gRPC server", address, "grpc_address", exc) from exc
    log.info("ext_proc gRPC listening on %s:%d", address.rpartition(":")[0], port)
    return port


async def start_management_logged(server: ExtProcServer, address: str) -> None:
    """Start the management listener and log where it is (:class:`ConfigError` if it cannot bind)."""
    try:
        port = await server.start_management(address)
    except OSError as exc:
        what = "the management listener (metrics, healthz, readyz)"
        raise bind_error(what, address, "metrics_address", exc) from exc
    log.info(
        "management (metrics, healthz, readyz) listening on http://%s:%d", address.rpartition(":")[0], port
    )


async def start_listeners(server: ExtProcServer, settings: CacheSettings) -> tuple[int, AdminServer]:
    """Start gRPC, management and admin listeners: (the gRPC port, the admin server).
    When one cannot start, those that did are stopped and the cache closed before raising."""
    from extproc.admin.api import start_admin

    try:
        port = await start_grpc_logged(server, settings.server.grpc_address)
        await start_management_logged(server, settings.server.metrics_address)
        return port, await start_admin(server.shared, settings)
    except BaseException:
        # Stop what did start: a gRPC server left running is torn down after the loop closes.
        await server.stop(0)
        await server.shared.cache.close()
        raise


async def serve(settings: CacheSettings, ready: asyncio.Event | None = None) -> None:
    """Run the processor until SIGINT / SIGTERM, then shut down gracefully."""
    from extproc.admin.api import admin_preflight

    admin_preflight(settings)
    server = await build_server(settings)
    _, admin = await start_listeners(server, settings)
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
