"""Streaming import for the admin API: read JSON lines, check each one, write valid ones in batches.

A line is written whole or not at all: it is checked completely (see :mod:`extproc.admin.transfer`)
before its batch is written, and a batch is one backend write.  Entries are keyed by their
exact key, so running the same import twice leaves the cache as after the first run.  No entry
outlives the cache's own ``ttl_seconds`` from the time of the import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from extproc.admin.embedding import embed_texts
from extproc.admin.transfer import MAX_LINE_BYTES, LineError, line_to_entry
from extproc.cache.schema import BulkBackend, CacheEntry
from extproc.embedding.batcher import Embedder
from extproc.errors import BackendUnavailable, EmbeddingFailed, Overloaded

log = logging.getLogger(__name__)

BATCH_LINES = 256
BATCH_BYTES = 4 * 1024 * 1024
MAX_REPORTED = 1000


@dataclass
class ImportReport:
    """What an import did, line by line for the lines it refused."""

    lines: int = 0
    imported: int = 0
    rejected: int = 0
    superseded: int = 0
    """Valid lines replaced by a later line with the same exact key in the same batch."""
    not_attempted: int = 0
    """Lines after a backend or embedding failure (nothing from them was written)."""
    evicted: int = 0
    """Entries the cache evicted while the import ran, to stay within ``max_entries`` (imported
    ones among them: a file larger than the cache's room does not all stay)."""
    rejections: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def reject(self, line: int, reason: str) -> None:
        """Record one refused line."""
        self.rejected += 1
        if len(self.rejections) < MAX_REPORTED:
            self.rejections.append({"line": line, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of the import response."""
        elapsed = time.monotonic() - self.started
        out: dict[str, Any] = {
            "lines": self.lines,
            "imported": self.imported,
            "rejected": self.rejected,
            "superseded": self.superseded,
            "not_attempted": self.not_attempted,
            "evicted": self.evicted,
            "rejections": self.rejections,
            "elapsed_seconds": round(elapsed, 3),
            "entries_per_second": round(self.imported / elapsed, 1) if elapsed > 0 else None,
        }
        if self.rejected > len(self.rejections):
            out["rejections_truncated"] = f"only the first {MAX_REPORTED} rejections are listed"
        if self.error:
            out["error"] = self.error
        return out


async def read_lines(chunks: AsyncIterator[bytes], report: ImportReport) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line; lines over MAX_LINE_BYTES are rejected here."""
    buffer = b""
    number = 0
    skipping = False  # inside a line that is too long: drop bytes up to its newline
    async for chunk in chunks:
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_LINE_BYTES and not skipping:
                    number += 1
                    report.lines += 1
                    report.reject(number, f"line longer than {MAX_LINE_BYTES} bytes")
                    skipping = True
                if skipping:
                    buffer = b""
                break
            line, buffer = buffer[:end], buffer[end + 1 :]
            if skipping:
                skipping = False
                continue
            if line.strip():
                number += 1
                yield number, line
            else:
                number += 1
    if buffer.strip() and not skipping:
        yield number + 1, buffer


class Importer:
    """Imports one request body into a backend."""

    def __init__(
        self,
        backend: BulkBackend,
        embedder: Embedder,
        reembed: bool,
        ttl_seconds: int = 0,
        embedding: str = "",
    ) -> None:
        self.backend = backend
        self.embedder = embedder
        self.reembed = reembed
        self.ttl_seconds = ttl_seconds
        self.embedding = embedding
        """The embedding model of this cache (lines of another are refused without reembed)."""
        self.report = ImportReport()

    async def run(self, chunks: AsyncIterator[bytes]) -> ImportReport:
        """Consume the whole body (even after a failure, so the client gets its answer)."""
        batch: list[tuple[int, bytes]] = []
        size = 0
        evictions = getattr(self.backend, "evictions", 0)
        async for number, line in read_lines(chunks, self.report):
            self.report.lines += 1
            if self.report.error:
                self.report.not_attempted += 1
                continue
            batch.append((number, line))
            size += len(line)
            if len(batch) >= BATCH_LINES or size >= BATCH_BYTES:
                await self._write(batch)
                batch, size = [], 0
        if batch and not self.report.error:
            await self._write(batch)
        # Milvus trims to max_entries in its background sweep only: run it now, so `evicted`
        # says what this import pushed out rather than 0 before a silent eviction.
        sweep = getattr(self.backend, "sweep", None)
        if sweep is not None and self.report.imported and not self.report.error:
            with contextlib.suppress(BackendUnavailable):
                await sweep(time.time())
        self.report.evicted = getattr(self.backend, "evictions", 0) - evictions
        return self.report

    async def _write(self, batch: list[tuple[int, bytes]]) -> None:
        now = time.time()
        dim, reembed, ttl, embedding = self.backend.dim, self.reembed, self.ttl_seconds, self.embedding

        def parse() -> list[tuple[int, CacheEntry | str]]:
            out: list[tuple[int, CacheEntry | str]] = []
            for number, line in batch:
                try:
                    out.append((number, line_to_entry(line, dim, now, reembed, ttl, embedding)))
                except LineError as exc:
                    out.append((number, str(exc)))
                except Exception as exc:  # a check that missed a hostile value: that line only
                    log.warning("import line %d: unexpected %s", number, type(exc).__name__, exc_info=True)
                    out.append((number, f"unreadable entry ({type(exc).__name__})"))
            return out

        latest: dict[str, tuple[int, CacheEntry]] = {}
        for number, result in await asyncio.to_thread(parse):
            if isinstance(result, str):
                self.report.reject(number, result)
                continue
            if result.exact_key in latest:
                self.report.superseded += 1
            latest[result.exact_key] = (number, result)
        if not latest:
            return
        numbers = [n for n, _ in latest.values()]
        entries = [e for _, e in latest.values()]
        try:
            if self.reembed:
                vectors = await embed_texts(self.embedder, [e.prompt for e in entries])
                for entry, vector in zip(entries, vectors, strict=True):
                    entry.vector = vector
        except (EmbeddingFailed, Overloaded) as exc:
            # Before this batch's write: the earlier batches stay written, say from where not.
            self._stop(
                len(entries),
                f"the embedding model failed on lines from {min(numbers)} on ({exc})",
                "the embedding model answers again",
            )
            return
        try:
            refused = await self.backend.put_many(entries)
        except BackendUnavailable as exc:
            self._stop(
                len(entries),
                f"the {self.backend.name} backend failed while writing lines from {min(numbers)} on ({exc})",
                "/admin/stats shows backend_state ready",
            )
            return
        for index, reason in refused.items():
            self.report.reject(numbers[index], reason)
        self.report.imported += len(entries) - len(refused)

    def _stop(self, count: int, what: str, when: str) -> None:
        """Record the failure that ends the import at this batch (nothing from it was written)."""
        self.report.not_attempted += count
        self.report.error = (
            f"{what}; nothing from those lines was written. Run the same import again when {when}: "
            "it is idempotent"
        )
        log.warning("admin import stopped: %s", self.report.error)
