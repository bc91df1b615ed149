"""What a remote embedding model costs per lookup: the same MiniLM, local vs over HTTP.

    python -m bench.remote_embedding [--queries 200] [--concurrency 1,8]

Starts a small OpenAI-compatible ``/v1/embeddings`` server (aiohttp, in its own thread, serving
the bundled all-MiniLM-L6-v2) and times ``Embedder.embed`` of QQP questions through the local
encoder and through :class:`~extproc.embedding.remote.RemoteEncoder`; prints p50 / p99 per
concurrency. The difference is the HTTP round trip and JSON of the vectors (loopback here: add
the network's round trip for a real deployment).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from aiohttp import web

from extproc.embedding.base import EncodeFn
from extproc.embedding.batcher import Embedder
from extproc.embedding.loader import load_sentence_model, plan_workers, workers_for
from extproc.embedding.remote import RemoteEncoder

from .report import DATASET
from .workload import read_pairs


def serve(encode: EncodeFn) -> str:
    """Start the embeddings server in a thread of its own; return its URL."""
    ready: list[str] = []
    started = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        vectors = await asyncio.to_thread(encode, body["input"])
        data = [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        return web.json_response({"object": "list", "data": data})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        ready.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/embeddings")
        started.set()
        await asyncio.Event().wait()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    started.wait(30)
    return ready[0]


async def timed(embedder: Embedder, texts: Sequence[str], concurrency: int) -> list[float]:
    """Milliseconds per embed, ``concurrency`` callers at once."""
    out: list[float] = []
    queue = list(texts)

    async def caller() -> None:
        while queue:
            text = queue.pop()
            started = time.perf_counter()
            await embedder.embed(text)
            out.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return out


async def run(queries: int, levels: Sequence[int], data: Path = DATASET) -> None:
    """Time both encoders at each concurrency level and print the table."""
    encode, dim = load_sentence_model("all-MiniLM-L6-v2")
    url = serve(encode)
    texts = [p.a for p in read_pairs(data, limit=queries * 2)][:queries]
    local_workers = workers_for(encode, plan_workers(0, 0, "auto")[0])  # the server's defaults
    remote = RemoteEncoder(url, "minilm", timeout=5, budget=10)
    encoders = {"local": (encode, local_workers), "remote": (remote, 4)}
    print(f"{'encoder':8} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8}")
    for level in levels:
        for name, (fn, workers) in encoders.items():
            embedder = Embedder(fn, dim, 64, workers)
            await timed(embedder, texts[:20], level)  # warm up (connections, caches)
            ms = await timed(embedder, texts, level)
            p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
            print(f"{name:8} {level:>4} {p50:>8.2f} {p99:>8.2f}")
            embedder.close()


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--data", type=Path, default=DATASET)
    args = parser.parse_args()
    asyncio.run(run(args.queries, [int(c) for c in args.concurrency.split(",")], args.data))


if __name__ == "__main__":
    main()
