"""A remote embedding model: any OpenAI-compatible ``/v1/embeddings`` (vLLM, TEI, Infinity, OpenAI).

:class:`RemoteEncoder` is an encode function like the local models, so the
:class:`~extproc.embedding.batcher.Embedder` batches, queues and predicts its wait the same way;
its passes are HTTP requests, which may run side by side (``thread_safe``).  One keep-alive
connection per worker thread.  Failed attempts (connection errors, 408 / 429 / 5xx) are retried
while the lookup budget lasts; the vectors are normalized here, whatever the server does.  It
has no word vectors: the content guard decides on stems alone (docs/embeddings.md).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

from extproc.errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "SEMANTIC_CACHE_EMBEDDING_API_KEY"
_RETRYABLE = {408, 429, 500, 502, 503, 504}
"""Answers another attempt may change (501, 505… will not)."""
_REFUSED = {400, 413, 422}
"""Answers refusing the input itself (vLLM and TEI past the model's context)."""
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
FAIL_FAST_SECONDS = 1.0
"""After a pass failed every attempt, passes fail at once for this long, then one tries again:
an endpoint that is down cost every lookup its whole latency budget (reported as overload)."""


class RemoteEmbeddingError(RuntimeError):
    """The endpoint failed every attempt, or answered something that is not embeddings."""


class InputRefused(RemoteEmbeddingError):
    """The endpoint refused the texts asked (not the request as such): some may be fine alone."""


class EndpointDown(RemoteEmbeddingError):
    """Every attempt failed to get an answer (connection errors, timeouts, 408 / 429 / 5xx)."""


class RemoteEncoder:
    """Texts → unit vectors through an OpenAI-compatible embeddings endpoint."""

    thread_safe = True
    """Several passes may run at once: each worker thread has its own connection."""
    words = None
    """No per-word vectors over this API."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str = "",
        timeout: float = 1.0,
        retries: int = 2,
        budget: float = 1.5,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"embedding_endpoint must be http(s)://host[:port]/path, got {url!r}")
        self.url, self.model = url, model
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/v1/embeddings") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"content-type": "application/json"}
        api_key = api_key.strip()  # a Secret made from a file written by `echo` ends in a newline
        if api_key:
            if not api_key.isascii() or not api_key.isprintable():
                raise ConfigError(f"${API_KEY_ENV} holds characters an HTTP header cannot carry")
            self._headers["authorization"] = f"Bearer {api_key}"
        self.timeout, self.retries, self.budget = timeout, retries, budget
        self._local = threading.local()
        self.dim: int | None = None
        """The dimension :meth:`probe` found; every later answer must have it."""
        self.requests = 0
        self.failures = 0
        self._failing: tuple[float, Exception] | None = None
        """(until when, why) passes fail at once (see FAIL_FAST_SECONDS)."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``, one request (retried within the budget).

        When the server refuses the input (400, 413, 422: a text past its context, say), the
        texts are asked in halves, so that only the refused ones fail: each gets a row of NaN,
        which the batcher turns into an error for its caller alone."""
        now = time.monotonic()
        failing = self._failing
        if failing is not None and now < failing[0]:
            wait = failing[0] - now
            raise RemoteEmbeddingError(f"{self.url}: failing ({failing[1]}); next try in {wait:.2f} s")
        try:
            vectors = self._encode(list(texts), now + self.budget)
        except EndpointDown as exc:  # not a bad answer or a refused input: those are one pass's
            self._failing = (time.monotonic() + FAIL_FAST_SECONDS, exc)
            raise
        self._failing = None
        return vectors

    def _encode(self, texts: list[str], deadline: float) -> np.ndarray:
        try:
            return self._ask(texts, deadline)
        except InputRefused:
            if self.dim is None:  # the probe: nothing to fill a refused row with
                raise
            if len(texts) == 1:
                return np.full((1, self.dim), np.nan, dtype=np.float32)
        half = len(texts) // 2
        return np.concatenate([self._encode(texts[:half], deadline), self._encode(texts[half:], deadline)])

    def _ask(self, texts: list[str], deadline: float) -> np.ndarray:
        """One request for ``texts``, retried within ``deadline``."""
        payload = json.dumps({"model": self.model, "input": texts}).encode()
        error: Exception | None = None
        tried = 0
        stale = False  # a kept-alive connection the server had closed: one more try, not counted
        attempt = 0
        while attempt <= self.retries:
            remaining = deadline - time.monotonic()
            if remaining <= 0.005:
                break
            tried += 1
            try:
                return self._decode(self._post(payload, min(self.timeout, remaining)), len(texts))
            except _Stale as exc:
                error = exc.__cause__ or exc
                self._drop_connection()
                if not stale:
                    stale = True
                    continue  # at once, on a new connection
            except _Retryable as exc:
                error = exc.__cause__ or exc
                self.failures += 1
                self._drop_connection()
                if attempt < self.retries:
                    time.sleep(min(0.05 * 2**attempt, max(0.0, deadline - time.monotonic() - 0.01)))
            attempt += 1
        raise EndpointDown(f"{self.url}: no embeddings after {tried} attempt(s): {error!r}")

    def probe(self) -> int:
        """The endpoint's dimension, from one real request (at start: a failure stops the process)."""
        try:
            self.dim = int(self(["dimension probe"]).shape[1])
        except RemoteEmbeddingError as exc:
            raise ConfigError(
                f"embedding_endpoint {self.url} (model {self.model!r}) did not answer at start: {exc}. "
                f"Check the URL, embedding_endpoint_model and ${API_KEY_ENV}"
            ) from exc
        return self.dim

    def _post(self, payload: bytes, timeout: float) -> bytes:
        conn = getattr(self._local, "conn", None)
        reused = conn is not None and conn.sock is not None
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        self.requests += 1
        # A socket timeout bounds each read, not the answer: a server trickling a byte at a
        # time would hold this worker for ever. The watchdog ends the attempt at ``timeout``.
        cut = threading.Event()
        watchdog = threading.Timer(timeout, _cut, (conn, cut))
        watchdog.start()
        late = RemoteEmbeddingError(f"no complete answer within {timeout:.3f} s")
        try:
            conn.request("POST", self._path, body=payload, headers=self._headers)
            response = conn.getresponse()
            body = response.read()
        except Exception as exc:  # the watchdog's close fails a read in many ways
            if cut.is_set():
                raise _Retryable from late
            if reused and isinstance(exc, _CLOSED_WHILE_IDLE):
                raise _Stale from exc  # the server closed it while idle (uvicorn: after 5 s)
            if isinstance(exc, OSError | http.client.HTTPException):
                raise _Retryable from exc
            raise
        finally:
            watchdog.cancel()
        if cut.is_set():  # read up to the close the watchdog made: a part of the answer at most
            raise _Retryable from late
        if response.status in _RETRYABLE:
            raise _Retryable from RemoteEmbeddingError(f"HTTP {response.status}")
        if response.status != 200:
            kind = InputRefused if response.status in _REFUSED else RemoteEmbeddingError
            raise kind(f"{self.url}: HTTP {response.status}: {body[:200]!r}")
        return body

    def _decode(self, body: bytes, n: int) -> np.ndarray:
        """The unit vectors of an answer; anything that is not n finite vectors of the
        endpoint's dimension, one per input, is an error (never a vector served from)."""
        try:
            data = json.loads(body)["data"]
            index = [row["index"] for row in data]
            vectors = np.asarray([row["embedding"] for row in data], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteEmbeddingError(f"{self.url}: not an embeddings response: {body[:200]!r}") from exc
        if vectors.ndim != 2 or len(vectors) != n:
            raise RemoteEmbeddingError(f"{self.url}: {len(vectors)} embeddings for {n} inputs")
        first = min(index, default=0)  # 0-based as OpenAI's; some servers count from 1
        if (
            any(type(i) is not int for i in index)
            or sorted(index) != list(range(first, first + n))
            or first > 1
        ):
            raise RemoteEmbeddingError(
                f"{self.url}: the answer's indexes are not one per input: {index[:20]}"
            )
        vectors = vectors[np.argsort(index)]
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise RemoteEmbeddingError(
                f"{self.url}: {vectors.shape[1]}-dimensional embeddings, {self.dim} at start"
            )
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an inf norm: refused below
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if vectors.shape[1] == 0 or not np.isfinite(norms).all() or not (norms > 0).all():  # NaN, inf, 1e300
            raise RemoteEmbeddingError(f"{self.url}: empty, zero or non-finite embeddings")
        return (vectors / norms).astype(np.float32)

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _cut(conn: http.client.HTTPConnection, cut: threading.Event) -> None:
    """End a connection's attempt from the watchdog: a read blocked on it returns at once."""
    cut.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    conn.close()


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not (its cause says how)."""


class _Stale(_Retryable):
    """A kept-alive connection the server had closed while idle: retried at once on a new one."""
