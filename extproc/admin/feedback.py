"""``POST /v1/feedback``: a client (through its operator's token) says a served answer was wrong or right.

Body: ``{"entry": "<x-semantic-cache-entry of the hit>", "verdict": "wrong" | "right"}``.
``wrong`` deletes the entry; both are counted (``semantic_cache_feedback_total``). An id that
this deployment did not issue, or whose entry is gone or was replaced by a newer answer under
the same key (ids name one version), is a 404 (they are not told apart). Longer ``entry``
values than MAX_ID_CHARS are no id (a 400).
"""

from __future__ import annotations

from aiohttp import web

from extproc.admin.guard import Handler
from extproc.admin.params import parse_body
from extproc.dataplane.shared import Shared
from extproc.dataplane.verification.entry_ids import MAX_ID_CHARS

VERDICTS = ("wrong", "right")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def feedback_handler(shared: Shared) -> Handler:
    """The handler of ``POST /v1/feedback`` over one server's shared state."""

    async def feedback(request: web.Request) -> web.StreamResponse:
        data = parse_body(await request.read()) if request.can_read_body else {}
        unknown = sorted(set(data) - {"entry", "verdict"})
        if unknown:
            return _error(400, f"unknown field(s) {', '.join(unknown)}; known: entry, verdict")
        entry, verdict = data.get("entry"), data.get("verdict")
        if not isinstance(entry, str) or not 0 < len(entry) <= MAX_ID_CHARS:
            return _error(400, "entry must be the x-semantic-cache-entry header of a hit")
        if verdict not in VERDICTS:
            return _error(400, 'verdict must be "wrong" or "right"')
        verification = shared.verification
        if verification is None:
            return _error(503, "this server keeps no entry ids")
        if not await verification.feedback(entry, verdict):
            return _error(404, "no live entry has this id (it expired, was deleted, or is not ours)")
        return web.json_response({"entry": entry, "verdict": verdict, "deleted": verdict == "wrong"})

    return feedback
