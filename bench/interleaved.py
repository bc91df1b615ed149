"""Two processors side by side at concurrency 1, rounds alternating: ``python -m bench.interleaved``.

On a shared VM the same build measured twice minutes apart differs by more than most changes
it is meant to show; measuring two builds (or two configs) one after the other compares the
machine's moods, not the builds.  This runs both at once, each behind its own Envoy in front of
one test upstream, and alternates rounds between them: per round 60 new prompts (misses), the
same 60 again (exact hits) and their Quora paraphrases (semantic hits where the cache serves
them), then the other processor with the next 60.  It prints the median client latency of each
outcome per side, and their ratio.

    python -m bench.interleaved --a-config '{"embedding_threads": 1}'      # a config change
    python -m bench.interleaved --a-root ../old-checkout                  # another build of ours

``--a-root`` runs side A from another checkout of this repository (e.g. a ``git worktree`` at
an older commit): its processor starts from that folder's ``extproc``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from . import load, stack
from .load import Request
from .report import DATASET, ROOT
from .workload import chat_body

CHAT = "/v1/chat/completions"
OUTCOMES = {"miss": "miss", "exact": "hit/exact", "semantic": "hit/semantic"}


def outcome_of(sample: load.Sample) -> str:
    """``miss``, ``hit/exact``, ``hit/semantic``, ``bypass``: as :meth:`load.Result.outcomes` counts."""
    return f"{sample.cache}/{sample.match}" if sample.match else sample.cache


def pairs(path: Path, skip: int, count: int) -> list[tuple[str, str]]:
    """``count`` duplicate pairs (a, b) of the QQP file after the first ``skip``."""
    out: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["label"] == 1:
                out.append((row["a"], row["b"]))
    return out[skip : skip + count]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both sides, ``args.rounds`` rounds each; medians per side and outcome."""
    per_round = args.per_round
    prompts = pairs(args.data, 1000, 2 * args.rounds * per_round)
    tmp = Path(tempfile.mkdtemp(prefix="interleaved-"))
    upstream, port = await stack.start_upstream(tmp)
    sides: dict[str, tuple[stack.Processor, Any]] = {}
    latencies: dict[str, dict[str, list[float]]] = {s: {k: [] for k in OUTCOMES} for s in ("A", "B")}
    headers = (("content-type", "application/json"),)
    try:
        for side, root, config in (("A", args.a_root, args.a_config), ("B", ROOT, args.b_config)):
            stack.ROOT = root  # the processor runs `python -m extproc.cli` in this folder
            processor = await stack.start_processor(tmp, backend_type="memory", **json.loads(config))
            sides[side] = (processor, await stack.start_envoy(tmp, processor.grpc_port, port))
        stack.ROOT = ROOT
        for r in range(args.rounds):
            for k, (side, (_, envoy)) in enumerate(sides.items()):
                chunk = prompts[(2 * r + k) * per_round : (2 * r + k + 1) * per_round]
                model = f"bench-{uuid.uuid4().hex[:8]}"

                def chats(texts: list[str], model: str = model) -> list[Request]:
                    return [Request("POST", CHAT, chat_body(model, t), headers) for t in texts]

                firsts, seconds = [a for a, _ in chunk], [b for _, b in chunk]
                for outcome, texts in (("miss", firsts), ("exact", firsts), ("semantic", seconds)):
                    await asyncio.sleep(0.2)  # stores run after each response
                    result = await load.run(envoy.url, chats(texts), 1, warmup=chats([f"warm {r}"]))
                    latencies[side][outcome] += [
                        s.latency_ms for s in result.samples if outcome_of(s) == OUTCOMES[outcome]
                    ]
    finally:
        stack.ROOT = ROOT
        for processor, envoy in sides.values():
            envoy.stop()
            processor.child.stop()
        upstream.stop()
    out: dict[str, Any] = {}
    for outcome in OUTCOMES:
        a, b = latencies["A"][outcome], latencies["B"][outcome]
        if a and b:
            ma, mb = statistics.median(a), statistics.median(b)
            out[outcome] = {"A_p50_ms": round(ma, 2), "B_p50_ms": round(mb, 2), "B_over_A": round(mb / ma, 3)}
            out[outcome] |= {"n": [len(a), len(b)]}
    return out


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a-root", type=Path, default=ROOT, help="checkout side A runs from (default: this one)")
    p.add_argument("--a-config", default="{}", help="semantic_cache settings of side A (JSON)")
    p.add_argument("--b-config", default="{}", help="semantic_cache settings of side B (JSON)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=60)
    p.add_argument("--data", type=Path, default=DATASET)
    args = p.parse_args()
    args.a_root = args.a_root.resolve()
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
