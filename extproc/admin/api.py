"""The admin API: an aiohttp server on its own listener, off the ext_proc data path.

``GET /admin/stats``, ``POST /admin/invalidate`` (dry run by default), ``POST /admin/flush``
(needs ``{"confirm": "flush-all"}``), ``GET /admin/export`` and ``POST /admin/import`` (JSON
lines, see :mod:`extproc.admin.transfer_api`), ``POST /admin/enabled`` (the pass-through switch).

It listens on loopback (``127.0.0.1:9191``) unless ``SEMANTIC_CACHE_ADMIN_TOKEN`` is set; with a
token every request needs ``Authorization: Bearer <token>``, and a non-loopback address without
one refuses to start (the token is read without surrounding whitespace, such as a Secret file's
newline).  Before the token, :mod:`extproc.admin.guard` refuses what a web page could send (a
browser ``Origin``, a foreign ``Host``, a non-JSON body), and every parameter is checked
(:mod:`extproc.admin.params`) before it reaches a backend.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import Iterable
from typing import Any, cast

from aiohttp import web

from extproc import __version__
from extproc.admin.contract import FLUSH_CONFIRMATION, TOKEN_ENV
from extproc.admin.embedding import embed_one
from extproc.admin.feedback import feedback_handler
from extproc.admin.guard import Handler, RequestGuard, is_loopback
from extproc.admin.live_config import ConfigWatcher, set_switch
from extproc.admin.params import SELECTORS, BadParameter, integer, number, parse_body, parse_selector, text
from extproc.admin.transfer_api import export_handler, import_handler
from extproc.cache.schema import BulkBackend, CacheEntry, EntryFilter
from extproc.config.settings import CacheSettings
from extproc.dataplane.shared import Shared
from extproc.errors import BackendUnavailable, ConfigError, DataRejected, EmbeddingFailed, Overloaded
from extproc.observability.record import hit_ratio
from extproc.protocol.openai import normalize_text

log = logging.getLogger(__name__)

PREVIEW = 20
MAX_PROMPT_CHARS = 100_000
"""The longest ``prompt`` an invalidation embeds (longer ones are a 400, not a slow embedding)."""
NEAREST_OPTIONS = ("min_similarity", "limit")
"""Invalidation fields that only apply with a ``prompt`` (which of its nearest entries go)."""


def decision_counts(shared: Shared) -> dict[str, int]:
    """Hit / miss / bypass counts since start (the one place that knows where they live)."""
    counts = getattr(shared.on_decision, "counts", None)
    return {k: int(counts.get(k, 0)) for k in ("hit", "miss", "bypass")} if isinstance(counts, dict) else {}


def policy_stats(shared: Shared) -> list[dict[str, Any]]:
    """Each configured policy (first match wins) with the requests it applied to since start."""
    counts = getattr(shared.on_decision, "policy_counts", {})
    return [p.describe() | {"requests": int(counts.get(p.name, 0))} for p in shared.settings.policies]


def configured_token(token: str | None) -> str | None:
    """The configured token without surrounding whitespace; None (no token) when nothing is left.

    A Secret made with ``--from-file`` from ``echo s3cret > token`` ends in a newline that no
    client sends (the client's value is stripped too), so unstripped every request got a 401.
    """
    value = (token or "").strip()
    if token and not value:
        log.warning("%s holds only whitespace: treated as unset (no token)", TOKEN_ENV)
    return value or None


def check_admin_address(address: str, token: str | None) -> None:
    """Refuse a non-loopback admin address without a token (raises :class:`ConfigError`)."""
    host = address.rpartition(":")[0]
    if not (token or "").strip() and not is_loopback(host):
        raise ConfigError(
            f"the admin API would listen on {address}, which is not loopback, without a token: set "
            f"{TOKEN_ENV} (Helm: admin.tokenSecret.name) or bind it to 127.0.0.1 "
            "(SEMANTIC_CACHE_ADMIN_ADDRESS / semantic_cache.server.admin_address)"
        )


def error(status: int, message: str) -> web.Response:
    """A JSON error body."""
    return web.json_response({"error": message}, status=status)


def _entry_summary(entry: CacheEntry, similarity: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "exact_key": entry.exact_key,
        "model": entry.model,
        "scope": entry.scope,
        "fingerprint": entry.fingerprint,
        "prompt": entry.prompt if len(entry.prompt) <= 200 else entry.prompt[:200] + "…",
        "created_at": round(entry.created_at, 3),
        "expires_at": round(entry.expires_at, 3),
    }
    if similarity is not None:
        out["similarity"] = round(similarity, 4)
    return out


class AdminApi:
    """The request handlers over one server's shared state and backend."""

    def __init__(self, shared: Shared, token: str | None, guard: RequestGuard | None = None) -> None:
        self.shared = shared
        self.token = configured_token(token)
        self.guard = guard or RequestGuard()
        self.started = time.monotonic()

    @property
    def backend(self) -> BulkBackend:
        """The cache backend (every backend implements the bulk operations)."""
        return cast(BulkBackend, self.shared.cache.backend)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self.guard.middleware, self._auth, self._backend_errors])
        app.on_response_prepare.append(self.guard.add_cors)
        app.router.add_get("/admin/stats", self.stats)
        app.router.add_post("/admin/invalidate", self.invalidate)
        app.router.add_post("/admin/flush", self.flush)
        app.router.add_get("/admin/export", export_handler(self.shared))
        app.router.add_post("/admin/import", import_handler(self.shared))
        app.router.add_post("/admin/enabled", self.enabled)
        app.router.add_post("/v1/feedback", feedback_handler(self.shared))
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            # surrogatepass: a header or variable that is not UTF-8 still compares, never raises.
            given_token = value.strip().encode("utf-8", "surrogatepass")
            good = hmac.compare_digest(given_token, self.token.encode("utf-8", "surrogatepass"))
            if scheme.lower() != "bearer" or not good:
                log.warning("admin API: %s %s refused (missing or wrong token)", request.method, request.path)
                response = error(
                    401, f"missing or wrong bearer token: send Authorization: Bearer ${TOKEN_ENV}"
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    @web.middleware
    async def _backend_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BackendUnavailable as exc:
            state, detail = self.shared.cache.backend.status()
            return error(503, f"the {self.backend.name} backend cannot serve ({state}: {detail}); {exc}")
        except (EmbeddingFailed, Overloaded) as exc:
            # Raised before anything is changed (the embedding comes first): safe to retry.
            return error(503, f"the embedding model cannot serve now ({exc}); retry when it answers again")
        except (BadParameter, DataRejected) as exc:
            # The caller's value, not the backend's health: a 400 that names it.
            return error(400, str(exc))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_body(await request.read()) if request.can_read_body else {}

    # --- handlers ------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        """Entries, decision counts, backend, model, threshold, uptime."""
        settings: CacheSettings = self.shared.settings
        state, detail = self.shared.cache.backend.status()
        try:
            entries: int | None = await self.shared.cache.backend.count()
        except BackendUnavailable:
            entries = None
        counts = decision_counts(self.shared)
        return web.json_response(
            {
                "version": __version__,
                "enabled": settings.enabled and not self.shared.paused,
                "backend": self.backend.name,
                "backend_state": state,
                "backend_detail": detail,
                "entries": entries,
                "decisions": counts,
                "hit_ratio": hit_ratio(counts.get("hit", 0), counts.get("miss", 0)),
                **getattr(self.shared.on_decision, "breakdown", dict)(),
                "embedding_model": settings.embedding_model,
                "dimension": self.backend.dim,
                "similarity_threshold": self.shared.cache.similarity_threshold,
                "min_confidence": self.shared.cache.min_confidence,
                "ttl_seconds": settings.ttl_seconds,
                "max_entries": settings.max_entries,
                "revision": settings.revision,
                "scope_mode": settings.scope_mode,
                "policies": policy_stats(self.shared),
                "verification": self.shared.verification.stats() if self.shared.verification else None,
                "uptime_seconds": round(time.monotonic() - self.started, 1),
            }
        )

    async def invalidate(self, request: web.Request) -> web.Response:
        """Entries by model / scope / fingerprint / age / a prompt's nearest; a dry run by default."""
        data = await self._body(request)
        known = {*SELECTORS, "prompt", *NEAREST_OPTIONS, "dry_run"}
        unknown = sorted(set(data) - known)
        if unknown:
            return error(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        now = time.time()
        selector = parse_selector(data, now)
        prompt = data.get("prompt")
        dry_run = data.get("dry_run", True)
        if not isinstance(dry_run, bool):
            return error(400, "dry_run must be true or false")
        if prompt is not None and (not isinstance(prompt, str) or not normalize_text(prompt)):
            return error(400, "prompt must be a non-empty string")
        if prompt is not None:
            prompt = text("prompt", prompt, MAX_PROMPT_CHARS)
        # Checked whether or not a prompt comes with them: a bad value is a 400 either way.
        cache = self.shared.cache
        threshold = number("min_similarity", data.get("min_similarity", cache.similarity_threshold), 0, 1)
        limit = integer("limit", data.get("limit", cache.top_k), 1, 1000)
        given = [name for name in NEAREST_OPTIONS if name in data]
        if given and prompt is None:
            one = len(given) == 1
            return error(
                400,
                f"{' and '.join(given)} {'applies' if one else 'apply'} to a prompt's nearest entries "
                f"only: send a prompt, or leave {'it' if one else 'them'} out to select by model, "
                "scope, fingerprint or age",
            )
        if selector.everything and prompt is None:
            return error(
                400,
                "give at least one of model, scope, fingerprint, older_than_seconds, prompt; "
                "to remove every entry use POST /admin/flush",
            )
        if prompt is not None:
            vector = await embed_one(self.shared.cache.embedder, normalize_text(prompt))
            found = await self.backend.nearest(vector, selector, limit, now)
            result = [c for c in found if c.similarity >= threshold]
            preview = [_entry_summary(c.entry, c.similarity) for c in result]
            matched = len(result)
            deleted = 0 if dry_run else await self.backend.delete_ids([c.entry.exact_key for c in result])
        else:
            matched = await self.backend.count_matching(selector, now)
            preview = []
            batches = self.backend.entries(selector, now, batch_size=PREVIEW, vectors=False)
            async with contextlib.aclosing(batches):  # the first batch only; release the iterator
                async for batch in batches:
                    preview = [_entry_summary(e) for e in batch[:PREVIEW]]
                    break
            deleted = 0 if dry_run else await self.backend.delete_matching(selector)
        body: dict[str, Any] = {"dry_run": dry_run, "matched": matched, "deleted": deleted}
        body["entries"] = preview
        if dry_run:
            body["note"] = 'dry run: nothing was deleted; send "dry_run": false (CLI: --apply) to delete'
        else:
            log.warning("admin API: invalidated %d entries (%s, prompt: %s)", deleted, selector, bool(prompt))
        return web.json_response(body)

    async def flush(self, request: web.Request) -> web.Response:
        """Delete every entry; needs {"confirm": "flush-all"}."""
        data = await self._body(request)
        if data.get("confirm") != FLUSH_CONFIRMATION:
            try:
                entries = f"{await self.shared.cache.backend.count()} entries"
            except BackendUnavailable:
                entries = "every entry"
            return error(
                400,
                f"flush deletes {entries} of the {self.backend.name} cache (on Milvus: for every replica); "
                f'confirm with {{"confirm": "{FLUSH_CONFIRMATION}"}} (CLI: semantic-cache admin flush --yes)',
            )
        deleted = await self.backend.delete_matching(EntryFilter())
        log.warning("admin API: flushed the %s cache (%d entries)", self.backend.name, deleted)
        return web.json_response({"flushed": True, "deleted": deleted})

    async def enabled(self, request: web.Request) -> web.Response:
        """The pass-through switch: {"enabled": false} stops lookups and stores, true resumes."""
        data = await self._body(request)
        value = data.get("enabled")
        if not isinstance(value, bool):
            return error(400, 'send {"enabled": false} (pass every request through) or {"enabled": true}')
        changed = set_switch(self.shared, value, "the admin API")
        return web.json_response({"enabled": value, "changed": changed})


class AdminServer:
    """The admin API listener plus the config watcher, started and stopped with the processor."""

    def __init__(
        self,
        shared: Shared,
        address: str,
        token: str | None = None,
        watch_interval: float = 5.0,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> None:
        token = configured_token(token)
        check_admin_address(address, token)
        guard = RequestGuard(address.rpartition(":")[0], allowed_hosts, allowed_origins)
        self.api = AdminApi(shared, token, guard)
        self.address = address
        self.port = 0
        self._runner: web.AppRunner | None = None
        source = shared.settings.source
        self.watcher = (
            ConfigWatcher(shared, source, watch_interval) if source and not source.startswith("<") else None
        )

    async def start(self) -> int:
        """Bind and serve; return the bound port."""
        host, _, port = self.address.rpartition(":")
        self._runner = web.AppRunner(self.api.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"the admin API cannot listen on {self.address}: {exc.strerror or exc}; choose another "
                "port with SEMANTIC_CACHE_ADMIN_ADDRESS"
            ) from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        if self.watcher is not None:
            self.watcher.start()
        log.info(
            "admin API listening on http://%s:%d (%s)",
            host,
            self.port,
            "bearer token required" if self.api.token else "loopback only, no token",
        )
        return self.port

    async def stop(self) -> None:
        """Stop the watcher and the listener."""
        if self.watcher is not None:
            await self.watcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()


def admin_preflight(settings: CacheSettings) -> None:
    """Check the admin address and token before anything slow starts (raises :class:`ConfigError`)."""
    check_admin_address(settings.server.admin_address, os.environ.get(TOKEN_ENV))


async def start_admin(shared: Shared, settings: CacheSettings) -> AdminServer:
    """Start the admin API at ``settings.server.admin_address`` with the token from the environment."""
    server = settings.server
    admin = AdminServer(
        shared,
        server.admin_address,
        os.environ.get(TOKEN_ENV),
        allowed_hosts=server.admin_allowed_hosts,
        allowed_origins=server.admin_allowed_origins,
    )
    await admin.start()
    return admin
