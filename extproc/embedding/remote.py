"""A remote embedding model: any OpenAI-compatible ``/v1/embeddings`` (vLLM, TEI, Infinity, OpenAI).

:class:`RemoteEncoder` is an encode function like the local models, so the
:class:`~extproc.embedding.batcher.Embedder` batches, queues and predicts its wait the same way;
its passes are HTTP requests, which may run side by side (``thread_safe``).  One keep-alive
connection per worker thread.  Failed attempts (connection errors, 408 / 429 / 5xx) are retried
while the lookup budget lasts; the vectors are normalized here, whatever the server does.  It
has no word vectors: the content guard decides on stems alone (docs/embeddings.md).
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

from extproc.errors import ConfigError

log = logging.getLogger(__name__)

API_KEY_ENV = "SEMANTIC_CACHE_EMBEDDING_API_KEY"
_RETRYABLE = {408, 429, 500, 502, 503, 504}


class RemoteEmbeddingError(RuntimeError):
    """The endpoint failed every attempt, or answered something that is not embeddings."""


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
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self.timeout, self.retries, self.budget = timeout, retries, budget
        self._local = threading.local()
        self.requests = 0
        self.failures = 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of ``texts``, one request (retried within the budget)."""
        deadline = time.monotonic() + self.budget
        payload = json.dumps({"model": self.model, "input": list(texts)}).encode()
        error: Exception | None = None
        tried = 0
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.005:
                break
            tried = attempt + 1
            try:
                return self._decode(self._post(payload, min(self.timeout, remaining)), len(texts))
            except _Retryable as exc:
                error = exc.__cause__ or exc
                self.failures += 1
                self._drop_connection()
                time.sleep(min(0.05 * 2**attempt, max(0.0, deadline - time.monotonic() - 0.01)))
        raise RemoteEmbeddingError(f"{self.url}: no embeddings after {tried} attempt(s): {error!r}")

    def probe(self) -> int:
        """The endpoint's dimension, from one real request (at start: a failure stops the process)."""
        try:
            return int(self(["dimension probe"]).shape[1])
        except RemoteEmbeddingError as exc:
            raise ConfigError(
                f"embedding_endpoint {self.url} (model {self.model!r}) did not answer at start: {exc}. "
                f"Check the URL, embedding_endpoint_model and ${API_KEY_ENV}"
            ) from exc

    def _post(self, payload: bytes, timeout: float) -> bytes:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = kind(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        self.requests += 1
        try:
            conn.request("POST", self._path, body=payload, headers=self._headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable from exc
        if response.status in _RETRYABLE:
            raise _Retryable from RemoteEmbeddingError(f"HTTP {response.status}")
        if response.status != 200:
            raise RemoteEmbeddingError(f"{self.url}: HTTP {response.status}: {body[:200]!r}")
        return body

    def _decode(self, body: bytes, n: int) -> np.ndarray:
        try:
            data = json.loads(body)["data"]
            rows = sorted(data, key=lambda d: d["index"])
            vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteEmbeddingError(f"{self.url}: not an embeddings response: {body[:200]!r}") from exc
        if vectors.ndim != 2 or len(vectors) != n:
            raise RemoteEmbeddingError(f"{self.url}: {len(vectors)} embeddings for {n} inputs")
        return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not (its cause says how)."""
