"""Export / import rate of the admin API through ``semantic-cache admin`` (the CLI as operators run it).

    python bench/transfer_rate.py --entries 20000                                   # memory
    python bench/transfer_rate.py --entries 20000 --milvus-uri http://127.0.0.1:19530

Fills a processor's cache with synthetic entries (unit vectors, 300-character answers), then
times ``admin export -o FILE``, ``admin flush --yes`` and ``admin import FILE``.  With
``--milvus-uri`` the entries go to a fresh collection that is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

from extproc.admin.api import AdminServer
from extproc.app import build_server
from extproc.cache import CacheQuery
from extproc.config.settings import CacheSettings, ServerSettings, parse_config
from extproc.embedding.loader import load_sentence_model
from extproc.protocol.openai import exact_key, partition_key


async def cli(*args: str) -> tuple[float, str]:
    """Run ``semantic-cache admin ARGS``; (seconds, stderr)."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extproc.cli", "admin", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    if process.returncode not in (0,):
        raise SystemExit(f"admin {args[0]} failed: {err.decode()}")
    return time.perf_counter() - started, err.decode()


async def main(entries: int, milvus_uri: str | None) -> None:
    """Fill, export, flush, import; print rates."""
    settings = CacheSettings(server=ServerSettings(grpc_address="127.0.0.1:0"), max_entries=entries * 2)
    tmp = Path(tempfile.mkdtemp(prefix="transfer-"))
    name = f"bench_{uuid.uuid4().hex[:8]}"
    if milvus_uri:
        cfg = tmp / "milvus.yaml"
        cfg.write_text(yaml.safe_dump({"connection": {"uri": milvus_uri}, "collection": {"name": name}}))
        settings = parse_config(
            {
                "semantic_cache": {
                    "backend_type": "milvus",
                    "backend_config_path": str(cfg),
                    "max_entries": entries * 2,
                }
            }
        )
    server = await build_server(settings, load_sentence_model("all-MiniLM-L6-v2"))
    backend = server.shared.cache.backend
    wait = getattr(backend, "wait_ready", None)
    if wait is not None and not await wait(60):
        raise SystemExit(f"Milvus not ready: {backend.status()}")
    rng = np.random.default_rng(0)
    answer = {
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x" * 300}, "finish_reason": "stop"}
        ],
    }
    started = time.perf_counter()
    for start in range(0, entries, 500):
        batch = []
        for i in range(start, min(start + 500, entries)):
            prompt = f"synthetic question number {i}"
            v = rng.standard_normal(384).astype(np.float32)
            query = CacheQuery("bench", "global", "f", prompt, partition_key("bench", "global", "f"),
                               exact_key("bench", "global", "f", prompt))  # fmt: skip
            batch.append(server.shared.cache.store(query, answer, v / np.linalg.norm(v)))
        await asyncio.gather(*batch)
    fill = time.perf_counter() - started
    admin = AdminServer(server.shared, "127.0.0.1:0")
    port = await admin.start()
    url = f"http://127.0.0.1:{port}"
    file = tmp / "export.jsonl"
    try:
        exported, _ = await cli("export", "--url", url, "-o", str(file), "--quiet")
        lines = sum(1 for _ in file.open("rb"))
        await cli("flush", "--url", url, "--yes")
        imported, _ = await cli("import", "--url", url, str(file), "--quiet")
        count = await backend.count()
    finally:
        await admin.stop()
        if milvus_uri:
            from pymilvus import MilvusClient

            client = MilvusClient(uri=milvus_uri)
            client.drop_collection(name)
            client.close()
        await server.shared.cache.close()
    size = file.stat().st_size / 1e6
    shutil.rmtree(tmp)
    print(
        f"backend={backend.name} entries={entries} file={size:.1f} MB "
        f"({size * 1e6 / max(lines, 1):.0f} B/entry)"
    )
    print(f"fill (cache.store, concurrent): {entries / fill:.0f}/s")
    print(f"export: {lines} lines in {exported:.2f}s = {lines / exported:.0f} entries/s")
    print(f"import: {count} entries in {imported:.2f}s = {count / imported:.0f} entries/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--milvus-uri")
    args = parser.parse_args()
    asyncio.run(main(args.entries, args.milvus_uri))
