"""Cost of the learned verifier per candidate, against the cost of encoding the query.

For each pair of a pairs file (default: the adversarial set) it times, one query at a time
as the server sees it: encoding the query (one forward pass), the verifier's text features,
embedding features and model (no word vectors; the two embeddings are the query's and the
stored entry's, already at hand), and the verifier including the word vectors it asks for (a
forward pass per prompt it has not seen, as on a cold cache).  Prints p50 / p90 in ms and the
ratios to the encode p50.  ``--model`` and ``--verifier`` measure another embedding model (a
local sentence-transformers folder) with a verifier trained for it (``train-verifier``).

    python -m bench.verifier_cost [--pairs tests/data/adversarial.jsonl] [--repeat 3]
        [--model all-MiniLM-L6-v2] [--verifier builtin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from extproc.cache.guards import build_scorer
from extproc.cache.guards.content import WordVectorCache
from extproc.cache.guards.features import finish, model_rows, text_part
from extproc.cache.guards.learned import BUILTIN, ConfidenceScorer
from extproc.cli.evaluate import read_pairs
from extproc.config.settings import DEFAULT_EMBEDDING_MODEL, CacheSettings
from extproc.embedding.batcher import Embedder
from extproc.embedding.loader import load_sentence_model
from extproc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


async def measure(
    pairs_file: Path, repeat: int, model_name: str = DEFAULT_EMBEDDING_MODEL, verifier: str = BUILTIN
) -> dict[str, float]:
    """p50 / p90 milliseconds of each step over every pair, ``repeat`` times."""
    encode, dim = load_sentence_model(model_name)
    embedder = Embedder(encode, dim)
    settings = CacheSettings(embedding_model=model_name, verifier_model=verifier)
    # The server's own choice and checks: the text-only model for "builtin" on another model's
    # vectors, a clear error for a file trained on vectors of another size.
    model = build_scorer(settings, embedder, []).model
    pairs = read_pairs(pairs_file)
    times: dict[str, list[float]] = {"encode": [], "verifier_text": [], "verifier_cold": []}
    for _ in range(repeat):
        for p in pairs:
            t0 = time.perf_counter()
            va = await embedder.embed(p.b)
            times["encode"].append((time.perf_counter() - t0) * 1000)
            vb = await embedder.embed(p.a)
            similarity = float(va @ vb)
            t0 = time.perf_counter()
            row = finish(text_part(p.b, p.a, similarity), None, None)[None, :]
            if model.embedding_dim:
                row = model_rows(row, va[None, :], vb[None, :])
            model.probability(row)
            times["verifier_text"].append((time.perf_counter() - t0) * 1000)
            scorer = ConfidenceScorer(model, WordVectorCache(embedder))  # cold: no word vectors yet
            t0 = time.perf_counter()
            await scorer.score(p.b, p.a, similarity, query_vector=va, candidate_vector=vb)
            times["verifier_cold"].append((time.perf_counter() - t0) * 1000)
    embedder.close()
    out = {}
    for key, values in times.items():
        out[f"{key}_p50_ms"] = round(float(np.percentile(values, 50)), 4)
        out[f"{key}_p90_ms"] = round(float(np.percentile(values, 90)), 4)
    out["verifier_text_over_encode_p50"] = round(out["verifier_text_p50_ms"] / out["encode_p50_ms"], 4)
    out["verifier_cold_over_encode_p50"] = round(out["verifier_cold_p50_ms"] / out["encode_p50_ms"], 4)
    out["pairs"] = len(pairs) * repeat
    return out


def main() -> None:
    """Run and print the numbers as one JSON object."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=Path, default=ROOT / "tests" / "data" / "adversarial.jsonl")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL, help="embedding model name or folder")
    parser.add_argument("--verifier", default=BUILTIN, help='"builtin" or a verifier file for --model')
    args = parser.parse_args()
    try:
        result = asyncio.run(measure(args.pairs, args.repeat, args.model, args.verifier))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
