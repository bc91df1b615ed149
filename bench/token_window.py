"""Cost of knowing whether the model reads a whole prompt (the long-prompt rule), against encoding.

A prompt longer than the embedding model's window (256 tokens for the default) is served on its
exact repeats only (docs/embeddings.md#long-prompts); telling costs a token count on every
lookup whose prompt is over 252 bytes, and on every candidate above the prefilter. For prompts
of growing length it prints the median count time, as a ratio to the lone-query encode floor
measured in the same run and as a share of encoding that prompt itself.

    python -m bench.token_window [--repeat 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from extproc.embedding.batcher import Embedder
from extproc.embedding.loader import load_sentence_model

TEXT = "The quarterly report describes revenue growth in the EMEA region and what drove it. "
LENGTHS = (100, 300, 1000, 2000, 4000, 20000)


async def _median_ms(repeat: int, call: object) -> float:
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        await call(i)  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(repeat: int) -> list[dict[str, float]]:
    """The floor (chars 0: a lone short query's encode), then one row per prompt length:
    characters, fits, count ms, its ratio to the floor, the prompt's own encode ms."""
    encode, dim = load_sentence_model("all-MiniLM-L6-v2")
    embedder = Embedder(encode, dim)
    try:
        floor = await _median_ms(repeat, lambda i: embedder.embed(f"What is the capital of France? {i}"))
        rows = [{"chars": 0, "fits": 1.0, "count_ms": 0.0, "x_floor": 0.0, "encode_ms": floor}]
        for n in LENGTHS:
            text = (TEXT * (n // len(TEXT) + 1))[:n]
            count = await _median_ms(repeat, lambda _i, t=text: embedder.fits(t))
            own = await _median_ms(max(3, repeat // 3), lambda i, t=text: embedder.embed(f"{t} {i}"))
            rows.append(
                {
                    "chars": n,
                    "fits": float(await embedder.fits(text)),
                    "count_ms": count,
                    "x_floor": count / floor,
                    "encode_ms": own,
                }
            )
        return rows
    finally:
        embedder.close()


def main() -> None:
    """Print the floor, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    floor, *rows = asyncio.run(measure(args.repeat))
    print(f"lone-query encode floor p50 {floor['encode_ms']:.2f} ms")
    print(f"{'chars':>6} {'fits':>5} {'count ms':>9} {'x floor':>8} {'encode ms':>10} {'share':>6}")
    for r in rows:
        share = r["count_ms"] / r["encode_ms"] * 100
        print(
            f"{r['chars']:6.0f} {bool(r['fits'])!s:>5} {r['count_ms']:9.3f} {r['x_floor']:8.3f} "
            f"{r['encode_ms']:10.2f} {share:5.1f}%"
        )


if __name__ == "__main__":
    main()
