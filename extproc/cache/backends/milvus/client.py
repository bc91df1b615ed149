"""Connecting to Milvus (auth, TLS, a connection of our own) and creating the collection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from extproc.cache.backends.milvus.schema import REQUIRED_FIELDS, build_schema
from extproc.config.milvus import MilvusSettings, TlsFiles, tls_files

log = logging.getLogger(__name__)
T = TypeVar("T")


def open_client(s: MilvusSettings) -> Any:
    """A connected pymilvus client for these settings (auth and TLS included)."""
    log.info("connecting to Milvus at %s", s.address)
    from pymilvus import MilvusClient

    # pymilvus logs every failed RPC at ERROR (one line per request while Milvus is down) and
    # sets its loggers up on import; the backend logs each state change once instead.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("pymilvus")] + ["pymilvus"]:
        logging.getLogger(name).setLevel(logging.CRITICAL)

    if s.is_lite:
        quiet_milvus_lite()

    # An alias of our own: pymilvus otherwise shares one connection per (uri, user) in a process,
    # so closing one client would close another's, and a corrected password would be ignored.
    alias = f"semantic-cache-{uuid.uuid4().hex}"
    kwargs: dict[str, Any] = {"uri": s.client_uri(), "timeout": s.timeout, "alias": alias}
    if s.database:
        kwargs["db_name"] = s.database
    if s.auth_enabled:
        kwargs["user"], kwargs["password"] = s.username, s.password
    if s.tls_enabled:
        files = tls_files(s)
        kwargs.update(tls_kwargs(files))
        _log_once(f"Milvus connection to {s.address} uses {files.describe()}")
        if s.server_name:
            kwargs["server_name"] = s.server_name
    try:
        if not s.is_lite:
            resolve(s)
        return MilvusClient(**kwargs)
    except Exception as exc:
        # Every failed attempt says why (the backend logs only changes of state).
        log.info("Milvus connection attempt to %s failed: %s", s.address, first_line(exc))
        raise


class _NotImplementedProbe(logging.Filter):
    """Drops the traceback Milvus Lite's in-process gRPC server logs for a method it lacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, NotImplementedError) and "Method not implemented" in str(exc))


_PROBE_FILTER = _NotImplementedProbe()


def quiet_milvus_lite() -> None:
    """Silence Milvus Lite's harmless start-up noise, so that an ERROR line always means an error.

    pymilvus calls AllocTimestamp, which Milvus Lite does not implement: grpc logs it at ERROR
    with a traceback although the call's caller handles it. faiss logs, at INFO, two
    ModuleNotFoundError lines while it picks the build for this CPU. Other records pass.
    """
    grpc_log = logging.getLogger("grpc._server")
    if _PROBE_FILTER not in grpc_log.filters:
        grpc_log.addFilter(_PROBE_FILTER)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def resolve(s: MilvusSettings) -> None:
    """Fail at once on a host name DNS does not know (pymilvus would wait the whole timeout)."""
    host = urlsplit(s.client_uri()).hostname or s.host
    port = urlsplit(s.client_uri()).port or s.port
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve Milvus host {host!r}: {exc.strerror}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (pymilvus errors span many), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


_logged: set[str] = set()


def _log_once(line: str) -> None:
    # The backend reconnects every few seconds while Milvus is down: say how once per setting.
    if line not in _logged:
        _logged.add(line)
        log.info("%s", line)


def tls_kwargs(files: TlsFiles) -> dict[str, Any]:
    """pymilvus arguments for these TLS files.

    pymilvus reads the client pair only when the CA, certificate and key are all given, and
    takes ``server_pem_path`` as the trusted root otherwise; with no CA at all gRPC uses its
    default roots (the system trust store, or ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
    """
    if files.mutual:
        return {
            "secure": True,
            "ca_pem_path": files.ca,
            "client_pem_path": files.cert,
            "client_key_path": files.key,
        }
    return {"secure": True, "server_pem_path": files.ca or ""}


def create_collection(client: Any, settings: MilvusSettings, dim: int, embedding: str = "") -> None:
    """Create the collection with its one vector index (never drops an existing one); its vector
    field records the embedding model ``embedding``."""
    schema, index = build_schema(client, settings, dim, embedding)
    client.create_collection(
        settings.collection,
        schema=schema,
        index_params=index,
        consistency_level=settings.consistency_level,
        timeout=settings.timeout,
        retry_times=3,
    )
    log.info(
        "Milvus collection %s created (dim %d, %s/%s, fields %s)",
        settings.collection,
        dim,
        settings.index_type,
        settings.metric_type,
        ", ".join(REQUIRED_FIELDS),
    )


def in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """``fn()`` on a thread of its own that never holds the process's exit (a daemon)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # given up on (the backend closed)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="milvus-connect", daemon=True).start()
    return future
