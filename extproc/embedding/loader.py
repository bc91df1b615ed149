"""Loading the sentence model offline on the backend settings ask for (ONNX first, torch as fallback)."""

from __future__ import annotations

import logging
import os
import time

from extproc.embedding.base import EncodeFn, resolve_model_path
from extproc.embedding.onnx_backend import OnnxUnavailable, load_onnx_model, usable_cores
from extproc.embedding.torch_backend import INSTALL_HINT, load_torch_model, torch_installed
from extproc.errors import ConfigError

log = logging.getLogger(__name__)


def load_sentence_model(
    name: str, threads: int = 0, backend: str = "auto", fallback_threads: int = 0
) -> tuple[EncodeFn, int]:
    """Load a sentence-transformers model offline; return (encode function, dimension).

    ``backend`` is ``onnx`` (ONNX Runtime, exported once from the local model folder), ``torch``,
    or ``auto`` (ONNX when it can be used: a single query encodes about twice as fast on CPU;
    see bench/README.md).  When ONNX cannot be used the model runs on torch, with a log line why,
    on ``fallback_threads`` threads when given (``threads`` was planned for ONNX's passes side by
    side; torch runs one pass at a time).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"embedding backend must be auto, torch or onnx, got {backend!r}")
    path = resolve_model_path(name)
    if backend != "torch":
        started = time.perf_counter()
        try:
            encode, dim = load_onnx_model(path, threads)
        except OnnxUnavailable as exc:
            if not torch_installed():
                raise ConfigError(
                    f"embedding model {name}: the ONNX backend cannot be used ({exc}) and torch is "
                    f"not installed to run the model instead. {INSTALL_HINT}"
                ) from exc
            log.warning("ONNX embedding backend unavailable (%s); falling back to torch", exc)
            threads = fallback_threads or threads
        else:
            encode.warm()
            log.info(
                "embedding model %s loaded from %s in %.2fs (dim %d, backend onnx)",
                name,
                path,
                time.perf_counter() - started,
                dim,
            )
            return encode, dim
    if not torch_installed():
        # A slim install (no torch extra) asked for embedding_backend: torch.
        raise ConfigError(
            f"semantic_cache.embedding_backend: torch needs torch and sentence-transformers, "
            f"which are not installed. {INSTALL_HINT}"
        )
    return load_torch_model(name, path, threads)


def plan_workers(workers: int, threads: int, backend: str) -> tuple[int, int]:
    """(forward passes at once, threads per pass) for the ``embedding_workers`` /
    ``embedding_threads`` settings: by default one pass per usable core, one thread each, with
    ONNX Runtime (small batches use cores better side by side than split), one pass with torch."""
    cores = usable_cores()
    if workers <= 0:
        workers = cores if backend != "torch" else 1
    if threads <= 0:
        threads = max(1, cores // workers)
    return workers, threads


def workers_for(encode: EncodeFn, planned: int) -> int:
    """``planned`` if ``encode`` may run on several threads at once, else 1."""
    return planned if getattr(encode, "thread_safe", False) else 1
