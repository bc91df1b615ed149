"""The bound's evidence shared through the cache backend: every replica counts every replica's
verified outcomes, and a restarted process keeps what the ones before it learned.

Each process owns one document in the backend (Milvus: the ``<collection>_evidence``
collection; the memory backend keeps it in the process) holding its own per-bin counts, and
rewrites it when it has learned something (at most every :data:`WRITE_SECONDS`, and when it
stops). Every :data:`SYNC_SECONDS` it reads everyone's
documents and takes the others' sum as :attr:`Outcomes.shared`. No outcome is counted twice: a
process counts its own bins once, and each other process's once, however often it reads them.

Documents are made under one *calibration* (the verifier's identity, or ``cosine``): a process
with another verifier reads none of them, since its confidence bins mean something else.
Sharing is best-effort bookkeeping: a failing backend leaves each process with its own evidence
(as without sharing) and is retried at the next sync; it never touches a request. It runs while
the evidence is in use: the section shadows or sets δ, or a request was decided under a δ (a
policy may set one where the section sets none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable

from extproc.cache import SemanticCache
from extproc.cache.schema import EvidenceStore
from extproc.config.verification import VerificationSettings
from extproc.dataplane.verification.outcomes import Outcomes
from extproc.errors import BackendUnavailable

log = logging.getLogger(__name__)

FORMAT = "semantic-cache-verification-evidence"
VERSION = 1
SYNC_SECONDS = 10.0
"""How often a process reads the others' evidence."""
WRITE_SECONDS = 60.0
"""How often at most a process rewrites its document (when it learned something; and on stop)."""
REFRESH_SECONDS = 3600.0
"""A process rewrites its document at least this often, so a live one never ages out."""


def owner_name() -> str:
    """This process's name in the backend: its host (the pod) and a random part (ASCII)."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ.get("POD_NAME") or socket.gethostname())[:80]
    return f"{host or 'process'}-{uuid.uuid4().hex[:12]}"


def calibration_of(cache: SemanticCache) -> str:
    """What the confidence bins mean here: the verifier's identity, else ``cosine``."""
    return cache.scorer.identity if cache.scorer is not None else "cosine"


class EvidenceSync:
    """Writes this process's evidence to the backend and adopts every other process's."""

    def __init__(
        self, outcomes: Outcomes, cache: SemanticCache, settings: Callable[[], VerificationSettings]
    ) -> None:
        self.outcomes = outcomes
        self.cache = cache
        self._settings = settings
        self.owner = owner_name()
        self.processes = 0
        """Other processes whose evidence was adopted at the last successful read."""
        self.problem = ""
        """Why the last sync failed ("" when it did not)."""
        self._written: tuple[int, float] | None = None
        """(outcomes learned, time) of the last write."""
        self._task: asyncio.Task[None] | None = None
        self._bound_at: float | None = None
        """Monotonic time of the last decision under a δ (a policy's counts: see :meth:`bounded`)."""
        self._wake = asyncio.Event()

    @property
    def store(self) -> EvidenceStore | None:
        """The backend, when sharing is on and it keeps documents."""
        backend = self.cache.backend
        if self._settings().share_evidence and isinstance(backend, EvidenceStore):
            return backend
        return None

    @property
    def wanted(self) -> bool:
        """True while the evidence is in use: the section shadows or sets δ, or a request was
        decided under a δ (a policy's) within the last REFRESH_SECONDS."""
        if self._settings().active:
            return True
        return self._bound_at is not None and time.monotonic() - self._bound_at < REFRESH_SECONDS

    def bounded(self) -> None:
        """A candidate was decided under a δ. A δ set only by a policy leaves the section
        inactive, so this is what tells the sync the evidence is in use; the first such
        decision syncs at once (a restarted process adopts the fleet's evidence without
        waiting a period)."""
        first = self._bound_at is None
        self._bound_at = time.monotonic()
        if first:
            self._wake.set()

    def start(self) -> None:
        """Sync every SYNC_SECONDS in the background until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            if self.wanted:
                try:
                    await self.sync()
                except Exception as exc:  # bookkeeping: never let one bad sync end the loop
                    self.problem = f"{type(exc).__name__}: {exc}"
                    log.warning("verification evidence sync failed: %s", self.problem)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SYNC_SECONDS)
            self._wake.clear()

    async def sync(self, now: float | None = None) -> bool:
        """Write this process's evidence if it moved, then adopt the others'; False on failure."""
        store = self.store
        if store is None:
            return False
        now = time.time() if now is None else now
        try:
            await self.write(store, now)
            since = now - self._settings().evidence_max_age_days * 86_400.0
            documents = await store.load_evidence(since)
        except BackendUnavailable as exc:
            self.problem = str(exc)
            log.debug("verification evidence not shared this time: %s", exc)
            return False
        calibration = calibration_of(self.cache)
        others = []
        for owner, document in documents.items():
            rows = self._rows(document, calibration) if owner != self.owner else None
            if rows is not None:
                others.append(rows)
        self.outcomes.adopt(others)
        self.processes, self.problem = len(others), ""
        return True

    async def write(self, store: EvidenceStore, now: float, final: bool = False) -> None:
        """Write this process's document if it learned something since the last write, at most
        every WRITE_SECONDS unless ``final`` (or, learning nothing, hourly: a live process must
        not age out)."""
        if not self.outcomes.bins:
            return
        learned = self.outcomes.learned
        if self._written is not None:
            count, at = self._written
            moved = count != learned and (final or now - at >= WRITE_SECONDS)
            if not moved and now - at < REFRESH_SECONDS:
                return
        document = {
            "format": FORMAT,
            "version": VERSION,
            "calibration": calibration_of(self.cache),
            "bins": self.outcomes.export(),
        }
        await store.save_evidence(self.owner, json.dumps(document, separators=(",", ":")), now)
        self._written = (learned, now)

    @staticmethod
    def _rows(document: str, calibration: str) -> list[list[str | float]] | None:
        """The bins of a document made under ``calibration`` (None for any other document)."""
        try:
            raw = json.loads(document)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
            return None
        bins = raw.get("bins")
        return bins if raw.get("calibration") == calibration and isinstance(bins, list) else None

    async def close(self) -> None:
        """Stop syncing and write what this process learned since its last write."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        store = self.store
        if store is not None:
            with contextlib.suppress(BackendUnavailable):
                await self.write(store, time.time(), final=True)
