"""Documents beside the entries: a second, small collection every replica reads and writes.

The verification evidence (docs/verification.md) of each process is one document, stored as
rows of ``<collection>_evidence``: ``chunks`` pieces of at most :data:`CHUNK` characters, all
stamped with the time of the write. A write deletes the owner's rows and inserts the new ones
(not upsert, as for entries); a reader takes each owner's newest complete set, so a write in
progress reads as that owner's previous document or as none, never as a mix. The backend never
reads inside a document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from extproc.cache.backends.milvus.bulk import quote
from extproc.cache.backends.milvus.failures import describe
from extproc.config.milvus import MilvusSettings
from extproc.errors import BackendUnavailable

if TYPE_CHECKING:
    from extproc.cache.backends.breaker import CircuitBreaker

log = logging.getLogger(__name__)
T = TypeVar("T")

SUFFIX = "_evidence"
"""The evidence collection is named after the entries' collection plus this."""
CHUNK = 60_000
"""Characters per row (the VARCHAR holds 65,535 bytes; documents are ASCII)."""
OWNER_LEN = 128
MAX_ROWS = 16_384
"""Rows read at most (a query's limit): thousands of owners' documents."""
_VECTOR = "v"
"""Milvus requires a vector field; this one is constant and never searched."""


def evidence_collection(settings: MilvusSettings) -> str:
    """The name of the evidence collection beside ``settings.collection``."""
    return settings.collection + SUFFIX


def create_evidence_collection(client: Any, settings: MilvusSettings) -> None:
    """Create the evidence collection (never drops an existing one)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False, description="semantic cache: verification evidence"
    )
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=OWNER_LEN + 24)
    schema.add_field("owner", DataType.VARCHAR, max_length=OWNER_LEN)
    schema.add_field("chunk", DataType.INT64)
    schema.add_field("chunks", DataType.INT64)
    schema.add_field("document", DataType.VARCHAR, max_length=65_535)
    schema.add_field("updated_at", DataType.INT64)  # unix ms
    schema.add_field(_VECTOR, DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index(field_name=_VECTOR, index_type="FLAT", metric_type="L2", params={})
    name = evidence_collection(settings)
    client.create_collection(
        name,
        schema=schema,
        index_params=index,
        consistency_level="Strong",
        timeout=settings.timeout,
        retry_times=3,
    )
    log.info("Milvus collection %s created (verification evidence)", name)


class EvidenceUnusable(Exception):
    """The evidence collection is missing (and may not be created) or has another schema."""


def open_evidence(client: Any, settings: MilvusSettings) -> str:
    """Make the evidence collection ready (creating it where the settings allow); its name."""
    name = evidence_collection(settings)
    if not client.has_collection(name):
        if not settings.auto_create_collection:
            raise EvidenceUnusable(
                f"Milvus collection {name} does not exist and development.auto_create_collection is "
                "false; create it with: semantic-cache create-collection --config FILE"
            )
        create_evidence_collection(client, settings)
    fields = {f["name"] for f in client.describe_collection(name).get("fields", [])}
    missing = {"id", "owner", "chunk", "chunks", "document", "updated_at"} - fields
    if missing:
        raise EvidenceUnusable(f"Milvus collection {name} lacks the fields {', '.join(sorted(missing))}")
    client.load_collection(name)
    return name


def check_document(owner: str, document: str) -> None:
    """Raise ValueError unless both are ASCII and ``owner`` fits its field (a caller's mistake)."""
    if not document.isascii() or not owner.isascii() or len(owner) > OWNER_LEN:
        raise ValueError("evidence documents and owners are ASCII (owners at most 128 characters)")


def write_document(client: Any, name: str, owner: str, document: str, now: float, **call: Any) -> None:
    """Replace ``owner``'s rows with ``document`` (both ASCII: see :func:`check_document`).

    The new rows go in first, under ids of their own, and only then are the owner's older rows
    deleted: a reader in between finds both writes and keeps the newest complete one. (Deleting
    first, a replica reading in that moment adopted none of this owner's outcomes for a sync
    period, its disagreements included, and served what the fleet had found wrong.)"""
    stamp = int(now * 1000)
    pieces = [document[i : i + CHUNK] for i in range(0, len(document), CHUNK)] or [""]
    rows = [
        {
            "id": f"{owner}/{stamp}/{k}",  # at most OWNER_LEN + 1 + 13 + 1 + 5 characters
            "owner": owner,
            "chunk": k,
            "chunks": len(pieces),
            "document": piece,
            "updated_at": stamp,
            _VECTOR: [1.0, 0.0],
        }
        for k, piece in enumerate(pieces)
    ]
    client.insert(name, rows, **call)
    client.delete(name, filter=f"owner == {quote(owner)} and updated_at < {stamp}", **call)


def read_documents(client: Any, name: str, since: float, **call: Any) -> dict[str, str]:
    """owner -> document of each owner's newest complete write at ``since`` or later; rows
    older than ``since`` are deleted (their owners stopped writing: gone or restarted)."""
    cutoff = int(since * 1000)
    rows = client.query(
        name,
        filter='id != ""',
        output_fields=["id", "owner", "chunk", "chunks", "document", "updated_at"],
        limit=MAX_ROWS,
        **call,
    )
    aged = [row["id"] for row in rows if int(row["updated_at"]) < cutoff]
    if aged:
        client.delete(name, ids=aged, **call)
    writes: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for row in rows:
        if int(row["updated_at"]) >= cutoff:
            writes.setdefault((row["owner"], int(row["updated_at"])), {})[int(row["chunk"])] = row
    newest: dict[str, tuple[int, str]] = {}
    for (owner, stamp), pieces in writes.items():
        total = int(next(iter(pieces.values()))["chunks"])
        if sorted(pieces) != list(range(total)):
            continue  # a write in progress
        if owner not in newest or stamp > newest[owner][0]:
            newest[owner] = (stamp, "".join(pieces[k]["document"] for k in range(total)))
    return {owner: document for owner, (_, document) in newest.items()}


class MilvusEvidenceOps:
    """The backend's :class:`~extproc.cache.schema.EvidenceStore` over the evidence collection.

    Opened on first use, not on connect: a cache that verifies nothing never creates it. A
    problem with it never stops the cache; the evidence then stays in each process.
    """

    _evidence_client: Any = None
    """The client the evidence collection was opened with (a new connection opens it again)."""
    _evidence_problem = ""

    if TYPE_CHECKING:
        settings: MilvusSettings
        state: str
        detail: str
        breaker: CircuitBreaker
        _client: Any
        _executor: ThreadPoolExecutor
        _slow: dict[str, Any]

    async def save_evidence(self, owner: str, document: str, now: float) -> None:
        """Replace ``owner``'s document in the evidence collection."""
        check_document(owner, document)
        name = evidence_collection(self.settings)
        await self._side_call(lambda c: write_document(c, name, owner, document, now, **self._slow))

    async def load_evidence(self, since: float) -> dict[str, str]:
        """Every owner's newest document written at ``since`` or later (older rows are deleted)."""
        name = evidence_collection(self.settings)
        return await self._side_call(lambda c: read_documents(c, name, since, **self._slow))

    async def _side_call(self, fn: Callable[[Any], T]) -> T:
        """A call on the evidence collection: it needs a healthy connection but, failing, never
        counts against it (the breaker guards clients' lookups, not this bookkeeping)."""
        client = self._client
        if client is None or self.state != "ready" or self.breaker.state != "closed":
            raise BackendUnavailable(self.detail)

        def run(client: Any) -> T:
            if client is not self._evidence_client:
                open_evidence(client, self.settings)
                self._evidence_client = client
            return fn(client)

        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(self._executor, run, client), self.settings.timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problem = str(exc) if isinstance(exc, EvidenceUnusable) else describe(exc)
            if problem != self._evidence_problem:
                log.warning("verification evidence stays in this process: %s", problem)
                self._evidence_problem = problem
            raise BackendUnavailable(f"Milvus evidence call failed: {problem}") from exc
        if self._evidence_problem:
            log.info("verification evidence is shared again (%s)", evidence_collection(self.settings))
            self._evidence_problem = ""
        return result
