"""``GET /admin/export`` and ``POST /admin/import``: the JSON-lines endpoints of the admin API.

The line format is :mod:`extproc.admin.transfer`, the streaming import :mod:`extproc.admin.importer`.
Query parameters are checked like bodies (:mod:`extproc.admin.params`): an unknown or repeated
key is a 400, since a misspelt selector would otherwise export (or treat) every entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from aiohttp import web

from extproc.admin.guard import Handler
from extproc.admin.importer import Importer
from extproc.admin.params import SELECTORS, BadParameter, parse_selector, query_params
from extproc.admin.transfer import entry_to_line
from extproc.cache.schema import BulkBackend
from extproc.dataplane.shared import Shared
from extproc.errors import BackendUnavailable

log = logging.getLogger(__name__)

IMPORT_OPTIONS = ("reembed",)
"""The query parameters of ``POST /admin/import``."""
_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")


def _backend(shared: Shared) -> BulkBackend:
    return cast(BulkBackend, shared.cache.backend)


def export_handler(shared: Shared) -> Handler:
    """The handler of ``GET /admin/export``: every live selected entry as JSON lines, streamed."""

    async def export(request: web.Request) -> web.StreamResponse:
        now = time.time()
        selector = parse_selector(query_params(request.query.items(), SELECTORS), now, query=True)
        backend = _backend(shared)
        total = await backend.count_matching(selector, now)
        response = web.StreamResponse(
            headers={"content-type": "application/x-ndjson", "x-semantic-cache-entries": str(total)}
        )
        await response.prepare(request)
        written = 0
        started = time.monotonic()
        embedding = shared.settings.embedding_identity
        try:
            async for batch in backend.entries(selector, now):
                text = await asyncio.to_thread(
                    lambda b=batch: "".join(entry_to_line(e, embedding) + "\n" for e in b)
                )
                await response.write(text.encode("utf-8"))
                written += len(batch)
        except BackendUnavailable as exc:
            # Headers are sent: break the chunked body so the client sees an incomplete export.
            log.error("admin API: export aborted after %d entries: %s", written, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        except ConnectionError as exc:  # the client went away (aiohttp's reset is one): one line
            log.warning("admin API: export stopped after %d entries: the client left (%s)", written, exc)
            return response
        await response.write_eof()
        log.info("admin API: exported %d entries in %.1fs", written, time.monotonic() - started)
        return response

    return export


def import_handler(shared: Shared) -> Handler:
    """The handler of ``POST /admin/import``: checks every line, writes the valid ones, reports the rest."""

    async def import_(request: web.Request) -> web.StreamResponse:
        reembed = query_params(request.query.items(), IMPORT_OPTIONS).get("reembed", "").lower()
        if reembed not in _YES + _NO:
            raise BadParameter("reembed must be 1, true or yes (or 0, false, no)")
        backend = _backend(shared)
        state, detail = backend.status()
        if state != "ready":
            message = f"the {backend.name} backend cannot take an import ({state}: {detail})"
            return web.json_response({"error": message}, status=503)
        cache = shared.cache
        embedding = shared.settings.embedding_identity
        importer = Importer(backend, cache.embedder, reembed in _YES, cache.ttl_seconds, embedding)
        report = await importer.run(request.content.iter_any())
        log.info(
            "admin API: import of %d lines: %d imported, %d rejected%s",
            report.lines,
            report.imported,
            report.rejected,
            f", stopped: {report.error}" if report.error else "",
        )
        return web.json_response(report.as_dict(), status=503 if report.error else 200)

    return import_
