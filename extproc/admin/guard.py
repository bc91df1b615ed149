"""Refuses admin requests that a web page could make: browser Origins, foreign Hosts, non-JSON bodies.

An operator's browser can reach the admin API (``kubectl port-forward`` puts it on the laptop's
loopback), so any page it opens could send requests there.  Three checks, before the token and
for every route of the admin listener (an endpoint added later inherits them):

- ``Origin``: browsers send it with every cross-origin request and every POST; the CLI and curl
  send none.  A request carrying one is refused unless the origin is configured
  (``server.admin_allowed_origins``), which also answers that origin's CORS preflights.
- ``Host``: a DNS-rebinding page reaches the listener under the attacker's host name, so the
  name must be loopback (``localhost``), an IP address (a rebinding page can only send a name),
  the name the listener is bound to, or a configured name (``server.admin_allowed_hosts``).
  Only the host name is compared, never the port: a port-forward uses another local port.
- ``Content-Type``: state-changing methods need ``application/json`` (``application/x-ndjson``
  for an import); an HTML form or a "simple" ``fetch`` can only send form or text types.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing, so they need no body type."""
JSON = "application/json"
"""The body type of every state-changing request."""
NDJSON = "application/x-ndjson"
"""The body type of an import (JSON lines), as the CLI sends it."""
BODY_TYPES: dict[str, tuple[str, ...]] = {"/admin/import": (NDJSON, JSON)}
"""Content types a path accepts on state-changing methods (others: application/json only)."""
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
"""Listen hosts that are not a name clients use (all interfaces)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 address (brackets allowed), except 0.0.0.0 and ::.

    No client reaches a server by its unspecified address, but browsers on some systems send
    0.0.0.0 to loopback: a public page's way in ("0.0.0.0 day"), so it is not an address here.
    """
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host name of a ``Host`` header: no port, no brackets, lower-case, no trailing dot."""
    value = header.strip()
    if value.startswith("["):
        name = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        name = value.partition(":")[0]
    else:
        name = value
    return name.lower().rstrip(".")


def normalize_origin(origin: str) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, lower-case, no trailing slash."""
    return origin.strip().lower().rstrip("/")


class RequestGuard:
    """The Origin, Host and Content-Type checks of one admin listener."""

    def __init__(
        self, listen_host: str = "", allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()
    ) -> None:
        names = {host_name(h) for h in allowed_hosts}
        own = host_name(listen_host)
        if own not in WILDCARDS:
            names.add(own)
        self.hosts = frozenset(names)
        self.origins = frozenset(normalize_origin(o) for o in allowed_origins)

    def host_allowed(self, header: str | None) -> bool:
        """May a request with this ``Host`` header be served? (none: not a browser, allowed)."""
        if header is None:
            return True
        name = host_name(header)
        return name in self.hosts or is_loopback(name) or is_ip(name)

    def refusal(self, request: web.Request) -> tuple[int, str] | None:
        """(status, message) when ``request`` must be refused, else None."""
        origin = request.headers.get("Origin")
        if origin is not None and normalize_origin(origin) not in self.origins:
            return 403, (
                f"requests from web pages are refused (Origin: {origin}): the admin API is for "
                "semantic-cache admin and curl, which send no Origin; to allow a page, add its origin "
                "to server.admin_allowed_origins (SEMANTIC_CACHE_ADMIN_ALLOWED_ORIGINS)"
            )
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            return 403, (
                f"Host {host!r} is not a name of this admin API (a DNS-rebinding page sends its own): "
                "use 127.0.0.1, localhost or an IP address, or add the name to "
                "server.admin_allowed_hosts (SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS; Helm: admin.allowedHosts)"
            )
        if request.method not in SAFE_METHODS:
            wanted = BODY_TYPES.get(request.path, (JSON,))
            given = request.headers.get("Content-Type")
            if given is None or request.content_type not in wanted:
                return 415, (
                    f"{request.method} {request.path} needs Content-Type: {' or '.join(wanted)} "
                    f"(got {given or 'none'}); with curl add -H 'content-type: {wanted[0]}'"
                )
        return None

    def cors_headers(self, request: web.Request) -> dict[str, str]:
        """CORS headers for a configured origin (nothing for other requests)."""
        origin = request.headers.get("Origin")
        if origin is None or normalize_origin(origin) not in self.origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST",
            "Access-Control-Allow-Headers": "authorization, content-type",
            "Vary": "Origin",
        }

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The aiohttp middleware: refuse, answer a configured origin's preflight, or go on."""
        refused = self.refusal(request)
        if refused is not None:
            status, message = refused
            log.warning("admin API: %s %s refused: %s", request.method, request.path, message)
            return web.json_response({"error": message}, status=status)
        if request.method == "OPTIONS" and (cors := self.cors_headers(request)):
            return web.Response(status=204, headers=cors)
        return await handler(request)

    async def add_cors(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare`` hook: a configured origin may read every answer (streams too)."""
        response.headers.update(self.cors_headers(request))
