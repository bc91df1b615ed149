"""Micro-batching of sentence embeddings off the event loop (:class:`Embedder`).

Requests that arrive while a forward pass runs are queued and encoded together in the next
pass, so at high concurrency many requests share one batch, while a lone request is encoded
at once with no waiting window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from extproc.embedding.base import EncodeFn, WordVectors

log = logging.getLogger(__name__)


class _Queue:
    """Texts waiting for one encode function, and whether a drain task is running."""

    def __init__(self, fn: Callable[[Sequence[str]], Any]) -> None:
        self.fn = fn
        self.pending: list[tuple[str, asyncio.Future[Any]]] = []
        self.draining = False


class Embedder:
    """Async front of an encode function, with micro-batching on one worker thread."""

    def __init__(self, encode: EncodeFn, dim: int, max_batch: int = 64) -> None:
        self.dim = dim
        self.max_batch = max_batch
        self._encode = encode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._sentences = _Queue(encode)
        words = getattr(encode, "words", None)
        self._words = _Queue(words) if words is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.encoded = 0
        self.on_batch: Callable[[int], None] | None = None
        """Called with each forward pass's batch size (metrics)."""

    @property
    def has_words(self) -> bool:
        """True when the model can give per-word vectors (see :meth:`embed_words`)."""
        return self._words is not None

    async def embed(self, text: str) -> np.ndarray:
        """The normalized embedding of one text (batched with concurrent callers)."""
        result: np.ndarray = await self._submit(self._sentences, text)
        return result

    async def embed_words(self, text: str) -> WordVectors:
        """Per-word contextual vectors of one text, on the same worker and batched the same way."""
        if self._words is None:
            raise RuntimeError(
                "this embedding model gives no word vectors; disable guard_content or use a "
                "sentence-transformers model with a fast (BERT-style) tokenizer"
            )
        result: WordVectors = await self._submit(self._words, text)
        return result

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of many texts in batches of ``max_batch`` (for tools, not the hot path)."""
        loop = asyncio.get_running_loop()
        out = [
            await loop.run_in_executor(self._executor, self._encode, texts[i : i + self.max_batch])
            for i in range(0, len(texts), self.max_batch)
        ]
        return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the embedding worker thread (model calls never share a thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _submit(self, queue: _Queue, text: str) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        queue.pending.append((text, future))
        if not queue.draining:
            queue.draining = True
            task = loop.create_task(self._drain(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.pending:
                batch = queue.pending[: self.max_batch]
                del queue.pending[: self.max_batch]
                live = [(t, f) for t, f in batch if not f.done()]
                if not live:
                    continue
                try:
                    results = await loop.run_in_executor(self._executor, queue.fn, [t for t, _ in live])
                except Exception as exc:  # every waiter of the batch gets the error
                    for _, f in live:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                if queue is self._sentences:
                    self.batches += 1
                    self.encoded += len(live)
                    if self.on_batch is not None:
                        self.on_batch(len(live))
                for (_, f), r in zip(live, results, strict=True):
                    if not f.done():
                        f.set_result(r)
        finally:
            queue.draining = False

    def close(self) -> None:
        """Stop the worker thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
