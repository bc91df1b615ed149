"""The management HTTP endpoint: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc.dataplane.shared import Shared
from extproc.observability.metrics import Metrics


def make_app(shared: Shared, metrics: Metrics, started: float | None = None) -> web.Application:
    """Routes for the management listener (off the data path)."""
    started = time.time() if started is None else started

    async def metrics_route(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        # Liveness: the event loop answers. Never depends on Milvus (a backend outage is a
        # bypass, not a reason to restart the processor).
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        backend = shared.cache.backend
        state, detail = backend.status()
        why = "switched off (admin API)" if shared.paused else ""
        why = why or ("disabled (enabled: false)" if not shared.settings.enabled else "")
        why = why or (detail if state != "ready" else "")
        body = {
            # The model is loaded once this listener runs: every request is answered, through
            # the cache or around it (fail-open), so the endpoint is 200 either way.
            "serving": True,
            "caching": not why,
            "not_caching_because": why,
            "model": shared.settings.embedding_model,
            "backend": backend.name,
            "backend_state": state,
            "config_error": shared.config_error,
            "uptime_s": round(time.time() - started, 1),
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_management(app: web.Application, address: str) -> tuple[web.AppRunner, int]:
    """Listen on ``host:port``; return the runner (``cleanup()`` stops it) and the bound port."""
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port))  # "[::]:9190": IPv6, bracketed
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else int(port)
    return runner, int(bound)
