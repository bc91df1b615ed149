"""Milvus backend: a persistent cache shared by every replica that points at the same collection.

Every call runs on a small thread pool with a deadline; connection failures open a circuit
breaker and the processor bypasses the cache, so Milvus being down never fails a client request.
A call whose data is refused (see :mod:`.failures`, and rows are checked first: :mod:`.rows`)
fails alone and never opens the breaker.  Connecting, schema checks, TTL sweeps and the
``max_entries`` bound run in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from extproc.cache.backends.breaker import CircuitBreaker
from extproc.cache.backends.milvus.bulk import MilvusBulkOps, quote
from extproc.cache.backends.milvus.client import (
    create_collection,
    in_daemon_thread,
    open_client,
)
from extproc.cache.backends.milvus.consistency import RecentStores, distinct, lookup_read, newest
from extproc.cache.backends.milvus.evidence import MilvusEvidenceOps
from extproc.cache.backends.milvus.failures import auth_error, describe, duplicate_rows, is_data_error
from extproc.cache.backends.milvus.locks import KeyLocks
from extproc.cache.backends.milvus.maintenance import MilvusMaintenance
from extproc.cache.backends.milvus.rows import DEFAULT_LIMITS, NEVER, decode_response, entry_row
from extproc.cache.backends.milvus.schema import (
    SchemaProblem,
    check_schema,
    index_problems,
    varchar_limits,
    vector_index,
)
from extproc.cache.schema import CacheEntry, Candidate
from extproc.config.milvus import MilvusSettings
from extproc.errors import BackendUnavailable, DataRejected

log = logging.getLogger(__name__)
T = TypeVar("T")

DATA_ERROR_LOG_SECONDS = 10.0
"""At most one log line per this many seconds for refused data (one tenant may send a lot)."""
_OUTPUT = [
    "id",
    "partition_key",
    "model",
    "scope",
    "fingerprint",
    "prompt",
    "response",
    "created_at",
    "expires_at",
]


def _vector(value: Any) -> np.ndarray | None:
    """A stored vector from a search result (None when the server sent none back)."""
    return None if value is None else np.asarray(value, dtype=np.float32)


class MilvusBackend(MilvusBulkOps, MilvusEvidenceOps, MilvusMaintenance):
    """Entries in a Milvus collection (a server, or embedded Milvus Lite for a file URI)."""

    name = "milvus"

    def __init__(
        self,
        settings: MilvusSettings,
        dim: int,
        max_entries: int,
        call_timeout: float | None = None,
        embedding: str = "",
    ) -> None:
        self.settings = settings
        self.dim = dim
        self.embedding = embedding
        """The embedding model's identity: recorded in a collection created here, checked in one found."""
        self.max_entries = max_entries
        self.call_timeout = call_timeout or settings.search_timeout_ms / 1000
        self.breaker = CircuitBreaker()
        self.state = "connecting"
        self.detail = f"connecting to Milvus at {settings.address}"
        self.evictions = 0
        self.expired = 0
        self.known_entries = 0
        """Entity count as of the last connect or sweep (metrics read this, not Milvus)."""
        self.limits: dict[str, int] = dict(DEFAULT_LIMITS)
        """VARCHAR field -> max_length in bytes of the collection in use (rows are checked first)."""
        self.data_errors = 0
        """Calls whose data Milvus refused (they never count toward the breaker)."""
        self._data_error_logged = -DATA_ERROR_LOG_SECONDS
        self._client: Any = None
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="milvus")
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self._sweeping = asyncio.Lock()
        self._writing = KeyLocks()
        """Stores of one exact key take turns in this process (see :mod:`.locks`)."""
        self._recent = RecentStores(enabled=settings.consistency_level != "Strong")
        """This process's stores of the last second, which lookups do not wait for (see there)."""
        # pymilvus retries a failing call up to 75 times (minutes) unless told otherwise: bound it.
        self._fast: dict[str, Any] = {"timeout": self.call_timeout, "retry_times": 1}
        self._slow: dict[str, Any] = {"timeout": settings.timeout, "retry_times": 3}

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting (in the background) and sweeping; returns at once."""
        loop = asyncio.get_running_loop()
        self._tasks += [loop.create_task(self._connect_loop()), loop.create_task(self._sweep_loop())]

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and checked (tests and tools); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.state != "ready" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.state == "ready"

    async def close(self) -> None:
        """Stop background work and close the connection."""
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.get_running_loop().run_in_executor(self._executor, client.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def status(self) -> tuple[str, str]:
        """(state, human-readable detail) for /readyz, logs and metrics."""
        if self.state == "ready" and self.breaker.state != "closed":
            return (
                "unavailable",
                f"circuit breaker {self.breaker.state}: recent Milvus calls failed ({self.settings.address})",
            )
        return self.state, self.detail

    def _set_state(self, state: str, detail: str, level: int = logging.WARNING) -> None:
        if (state, detail) != (self.state, self.detail):
            log.log(level, "%s", detail)
        self.state, self.detail = state, detail

    async def _connect_loop(self) -> None:
        backoff = 1.0
        s = self.settings
        while not self._closed.is_set():
            try:
                # Not on the executor: a connect waits up to connection.timeout (60 s) for a server
                # that does not answer, and the interpreter joins executor threads at exit.
                info = await in_daemon_thread(self._connect)
            except Exception as exc:  # connection, auth or schema problem: stay up as pass-through
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                if isinstance(exc, SchemaProblem):
                    self._set_state(exc.state, f"Milvus collection problem: {exc}", logging.ERROR)
                elif auth_error(exc):
                    self._set_state(
                        "auth_failed",
                        f"failed to connect to Milvus: authentication failed: {reason} ({s.address}); "
                        "check the milvus-auth Secret (MILVUS_USERNAME / MILVUS_PASSWORD)",
                        logging.ERROR,
                    )
                else:
                    self._set_state("unavailable", f"failed to connect to Milvus: {reason} ({s.address})")
                with contextlib.suppress(TimeoutError):  # an interruptible sleep
                    await asyncio.wait_for(self._closed.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.breaker.success()
            self._set_state("ready", f"Milvus ready: {info}", logging.INFO)
            return

    def _connect(self) -> str:
        s = self.settings
        client = open_client(s)
        try:
            version = "lite" if s.is_lite else client.get_server_version()
            created = False
            if not client.has_collection(s.collection):
                if not s.auto_create_collection:
                    raise SchemaProblem(
                        "missing_collection",
                        f"collection {s.collection!r} does not exist and development.auto_create_collection "
                        "is false; create it with: semantic-cache create-collection --config FILE",
                    )
                create_collection(client, s, self.dim, self.embedding)
                created = True
            description = client.describe_collection(s.collection)
            index = vector_index(client, s)
            problems = check_schema(description, s, self.dim, self.embedding) + index_problems(index, s)
            if problems:
                raise SchemaProblem(
                    "schema_mismatch",
                    f"collection {s.collection!r} does not have the schema the cache needs: "
                    + "; ".join(problems)
                    + ". Point collection.name at a new collection (it is created automatically) or run "
                    "semantic-cache create-collection --config FILE with a new name; existing collections "
                    "are never dropped",
                )
            client.load_collection(s.collection)
            self.limits = varchar_limits(description)
            count = self.known_entries = self._count(client)
        except Exception:
            client.close()
            raise
        self._client = client
        action = "created" if created else "reused"
        return (
            f"backend=milvus address={s.address} version={version} collection={s.collection} ({action}) "
            f"index={index[0] or s.index_type}/{index[1] or s.metric_type} entities={count}"
        )

    # --- calls ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], T], timeout: float) -> T:
        client = self._client
        if client is None or self.state != "ready":
            raise BackendUnavailable(self.detail)
        if not self.breaker.allow():
            raise BackendUnavailable(f"circuit breaker open ({self.settings.address})")
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self._executor, fn, client), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_data_error(exc):
                # One caller's bad value says nothing about Milvus: the breaker stays as it is.
                self.breaker.release()
                self._data_error(exc)
                raise DataRejected(f"Milvus refused the data: {describe(exc)}") from exc
            was_closed = self.breaker.state == "closed"
            self.breaker.failure()
            if self.breaker.state == "open" and was_closed:
                # A fresh connection recovers faster than gRPC's own reconnect backoff.
                self._reconnect(f"lost connection to Milvus: {describe(exc)} ({self.settings.address})")
            raise BackendUnavailable(f"Milvus call failed: {type(exc).__name__}") from exc
        self.breaker.success()
        return result

    def _data_error(self, exc: BaseException) -> None:
        self.data_errors += 1
        now = time.monotonic()
        if now - self._data_error_logged >= DATA_ERROR_LOG_SECONDS:
            self._data_error_logged = now
            log.warning(
                "Milvus refused a call's data (%d so far): %s; a data error, not a connection problem "
                "(the circuit breaker is unaffected)",
                self.data_errors,
                describe(exc),
            )

    def _reconnect(self, reason: str) -> None:
        """Drop the client and connect again in the background (bypassing meanwhile)."""
        if self.state != "ready":
            return
        self._set_state("unavailable", f"{reason}; reconnecting")
        client, self._client = self._client, None
        loop = asyncio.get_running_loop()
        if client is not None:
            loop.run_in_executor(self._executor, client.close)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(loop.create_task(self._connect_loop()))

    def _entry(self, row: dict[str, Any], vector: np.ndarray | None = None) -> CacheEntry:
        expires = int(row["expires_at"])
        return CacheEntry(
            id=row["id"],
            model=row["model"],
            scope=row["scope"],
            fingerprint=row["fingerprint"],
            partition=row["partition_key"],
            exact_key=row["id"],
            prompt=row["prompt"],
            response=decode_response(row["response"]),
            vector=vector if vector is not None else np.empty(0, dtype=np.float32),
            created_at=int(row["created_at"]) / 1000,
            expires_at=0.0 if expires >= NEVER else expires / 1000,
        )

    async def get_exact(self, exact_key: str, now: float) -> CacheEntry | None:
        """The live entry stored under ``exact_key`` (the primary key), if any."""
        s = self.settings
        recent = self._recent.get(exact_key, now)  # stored a moment ago: Milvus may not show it yet
        flt = f'id == "{exact_key}" and expires_at > {int(now * 1000)}'

        def query(client: Any) -> list[dict[str, Any]]:
            return client.query(
                s.collection,
                filter=flt,
                output_fields=_OUTPUT,
                limit=1,
                **lookup_read(s.collection, s.consistency_level),
                **self._fast,
            )

        rows = await self._call(query, self.call_timeout)
        found = self._entry(rows[0]) if rows else None
        return newest(found, recent)

    async def search(self, partition: str, vector: np.ndarray, top_k: int, now: float) -> list[Candidate]:
        """Up to ``top_k`` live entries of ``partition``, most similar first (cosine)."""
        s = self.settings
        flt = f'partition_key == "{partition}" and expires_at > {int(now * 1000)}'
        params = s.search_request(top_k)

        def find(client: Any, fields: list[str]) -> list[tuple[dict[str, Any], float]]:
            hits = client.search(
                s.collection,
                data=[vector.tolist()],
                anns_field=s.vector_field,
                limit=top_k,
                filter=flt,
                search_params=params,
                output_fields=fields,
                **lookup_read(s.collection, s.consistency_level),
                **self._fast,
            )[0]
            return [(dict(h["entity"]) | {"id": h["id"]}, float(h["distance"])) for h in hits]

        def run(client: Any) -> list[tuple[dict[str, Any], float]]:
            try:  # the learned verifier reads both vectors
                return find(client, [*_OUTPUT, s.vector_field])
            except Exception as exc:
                if not duplicate_rows(exc):
                    raise
            # Milvus 2.3 fetches output vectors by id after the search and fails when an id has
            # two rows (docs/milvus.md#duplicate-rows): search without them, read them by id.
            found = find(client, _OUTPUT)
            if found:
                ids = ", ".join(quote(key, "id") for key in dict.fromkeys(row["id"] for row, _ in found))
                rows = client.query(
                    s.collection,
                    filter=f"id in [{ids}]",
                    output_fields=["id", s.vector_field],
                    **lookup_read(s.collection, s.consistency_level),
                    **self._fast,
                )
                vectors = {r["id"]: r[s.vector_field] for r in rows}
                for row, _ in found:
                    row[s.vector_field] = vectors.get(row["id"])
            return found

        found = await self._call(run, self.call_timeout)
        candidates = [
            Candidate(self._entry(row), self._similarity(distance), _vector(row.get(s.vector_field)))
            for row, distance in found
        ]
        # A store of a moment ago stands for its key unless Milvus shows a newer one (another
        # replica's): Milvus may still show the row it replaced, or not show it at all yet.
        recent = {c.entry.id: c for c in self._recent.search(partition, vector, now, top_k)}
        shown = {c.entry.id: c.entry for c in candidates if c.entry.id in recent}
        newer = {key for key, e in shown.items() if newest(e, recent[key].entry) is e}
        merged = [c for c in candidates if c.entry.id not in recent or c.entry.id in newer]
        merged += [c for key, c in recent.items() if key not in newer]
        return distinct(merged)[:top_k]  # both rows of a duplicated id can come back

    def _similarity(self, distance: float) -> float:
        # IP and COSINE on normalized vectors are cosine similarity; L2 is a squared distance:
        # |a - b|^2 = 2 - 2 cos(a, b).
        return 1.0 - distance / 2.0 if self.settings.metric_type == "L2" else distance

    def row(self, entry: CacheEntry) -> dict[str, Any]:
        """The collection row of ``entry``, checked against the collection's limits (no call)."""
        return entry_row(entry, self.settings.vector_field, self.limits)

    async def put(self, entry: CacheEntry) -> None:
        """Write one row (the exact key is the primary key, so a repeat replaces it)."""
        row = self.row(entry)
        collection, timeout = self.settings.collection, self.settings.timeout

        def write(client: Any) -> None:
            # Not upsert: Milvus 2.3 routes upserted rows outside their partition-key partition, so
            # a filtered search never finds them. Deleting by primary key first keeps keys unique.
            client.delete(collection, ids=[row["id"]], **self._slow)
            client.insert(collection, [row], **self._slow)

        async with self._writing.hold([row["id"]]):
            await self._call(write, timeout)
        self._recent.add(self._entry(row, np.asarray(entry.vector, dtype=np.float32)))

    async def record_hit(self, entry: CacheEntry) -> None:
        """Milvus entries are evicted oldest-first: hits change nothing."""

    async def count(self) -> int:
        """Live entities in the collection (expired rows the sweep has not removed yet are not)."""
        return await self._call(self._count, self.settings.timeout)

    def _count(self, client: Any) -> int:
        rows = client.query(
            self.settings.collection,
            filter=f"expires_at > {int(time.time() * 1000)}",
            output_fields=["count(*)"],
            consistency_level="Strong",
            **self._slow,
        )
        return int(rows[0]["count(*)"]) if rows else 0
