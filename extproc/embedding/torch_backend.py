"""The torch (sentence-transformers) backend: sentence vectors and per-word vectors."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extproc.embedding.base import (
    EncodeFn,
    SentenceEncoder,
    TokenWindow,
    WordsFn,
    WordVectors,
    unknown_pieces,
    word_vectors,
)

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "Install the torch extra (pip install 'semantic-cache[torch]'), or serve with embedding_backend "
    "auto|onnx and an ONNX export made where torch is installed "
    "(python -m extproc.embedding.onnx_backend MODEL_DIR $SEMANTIC_CACHE_MODEL_CACHE/onnx/<name>; "
    "the image's build stage does this)"
)


def torch_installed() -> bool:
    """Are torch and sentence-transformers importable (the package's ``torch`` extra)?"""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "sentence_transformers"))


def load_torch_model(name: str, path: Path, threads: int) -> tuple[EncodeFn, int]:
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

    encoder = SentenceEncoder(encode, _word_encoder(model), _window(model))
    encoder(["warm up"])
    log.info(
        "embedding model %s loaded from %s in %.2fs (dim %d, backend torch)",
        name,
        path,
        time.perf_counter() - started,
        dim,
    )
    return encoder, dim


def _window(model: Any) -> TokenWindow | None:
    """What the model reads of a text: ``max_seq_length`` tokens of its tokenizer (None when it
    has neither)."""
    tokenizer = getattr(model, "tokenizer", None)
    limit = getattr(model, "max_seq_length", None)
    if tokenizer is None or not limit:
        return None

    def ids_offsets(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return encoded["input_ids"], encoded["offset_mapping"]

    fast = getattr(tokenizer, "is_fast", False)  # only fast tokenizers give character offsets
    return TokenWindow(
        int(limit),
        lambda text: len(tokenizer(text, truncation=False, verbose=False)["input_ids"]),
        unknown_pieces(ids_offsets, tokenizer.unk_token_id) if fast else None,
    )


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
