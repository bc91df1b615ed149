"""TokenWindow: whether the model reads a whole text, counting as few tokens as it can."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from extproc.embedding.base import INLINE_COUNT_CHARS, SPARSE_CHARS_PER_TOKEN, TokenWindow
from extproc.embedding.batcher import Embedder


class Counting:
    """Whitespace tokens plus two markers; remembers the lengths it was asked to count."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.threads: list[str] = []

    def __call__(self, text: str) -> int:
        self.asked.append(len(text))
        self.threads.append(threading.current_thread().name)
        return len(text.split()) + 2


def test_short_texts_need_no_count() -> None:
    counter = Counting()
    window = TokenWindow(64, counter)
    assert window.fits("x" * 15) and window.fits("é" * 15)  # 4 bytes a character at most
    assert counter.asked == []


def test_a_prefix_past_the_window_settles_it() -> None:
    counter = Counting()
    window = TokenWindow(64, counter)
    assert not window.fits("word " * 10_000)
    assert counter.asked == [64 * 8]  # one prefix counted, never the 50,000 characters


def test_a_text_whose_prefix_fits_is_counted_whole() -> None:
    counter = Counting()
    window = TokenWindow(64, counter)
    sparse = "a" + " " * 1000 + "b"  # few tokens in many characters (indentation, long words)
    assert window.fits(sparse) and counter.asked == [512, len(sparse)]
    dense_tail = "a" + " " * 1000 + " b" * 100
    assert not window.fits(dense_tail)


def test_the_embedder_counts_long_texts_off_the_event_loop() -> None:
    counter = Counting()

    def encode(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    encode.window = TokenWindow(64, counter)  # type: ignore[attr-defined]
    embedder = Embedder(encode, 4)

    async def main() -> tuple[bool, bool, bool]:
        short = await embedder.fits("a few words " * 20)
        long = await embedder.fits("word " * INLINE_COUNT_CHARS)
        unknown = await Embedder(lambda t: encode(t), 4).fits("word " * 10_000)  # no window
        return short, long, unknown

    try:
        short, long, unknown = asyncio.run(main())
    finally:
        embedder.close()
    assert short and not long and unknown
    assert counter.threads[0] == "MainThread" and counter.threads[-1] != "MainThread"


def test_a_sparse_text_past_the_bound_is_never_counted_whole() -> None:
    """1 MB of indentation holds few tokens per prefix; counting it whole took 377 ms. Longer
    than SPARSE_CHARS_PER_TOKEN characters a token, it is past the window uncounted, and what
    the model is given of it stops there too."""
    counter = Counting()
    window = TokenWindow(64, counter)
    sparse = ("a" + " " * 1000) * 1000
    assert not window.fits(sparse) and counter.asked == [512]
    assert window.head(sparse) == sparse[: 64 * SPARSE_CHARS_PER_TOKEN]
    within = "a" + " " * (64 * SPARSE_CHARS_PER_TOKEN - 2) + "b"
    assert window.fits(within) and window.head(within) == within
