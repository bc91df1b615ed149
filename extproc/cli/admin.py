"""``semantic-cache admin …``: the admin API from a shell, including through ``kubectl exec``.

Export writes JSON lines to stdout (or ``-o FILE``) and import reads them from stdin (or a
file), so both work through ``kubectl exec -i``; progress goes to stderr.  The URL defaults to
the local admin address (``$SEMANTIC_CACHE_ADMIN_ADDRESS``, else ``127.0.0.1:9191``) and the
token to ``$SEMANTIC_CACHE_ADMIN_TOKEN``, so inside the processor container no flag is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from extproc.admin.contract import ADDRESS_ENV, DEFAULT_ADDRESS, FLUSH_CONFIRMATION, TOKEN_ENV

CHUNK = 256 * 1024
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


class AdminError(Exception):
    """A failed admin call; the message says what to do."""


def default_url() -> str:
    """http:// + the local admin address (0.0.0.0 / :: are reached on loopback)."""
    address = os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"  # an IPv6 listener takes IPv6 only (asyncio sets IPV6_V6ONLY)
    return f"http://{host}:{port}"


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``6h`` or ``7d``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 90m, 6h or 7d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _clean_token(token: str | None) -> str | None:
    """The token without surrounding whitespace (a Secret file often ends in a newline); None if unset.

    Never echoes the token: it is a secret.
    """
    clean = (token or "").strip()
    if not clean:  # only whitespace is no token, as the processor reads it
        return None
    if not clean.isprintable():
        raise AdminError(
            f"the admin token (--token or ${TOKEN_ENV}) contains control characters (a line break?); "
            "it cannot be sent in a header"
        )
    return clean


class Client:
    """One admin API endpoint."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError(f"--url {url!r} must look like http://127.0.0.1:9191")
        try:
            port = parts.port
        except ValueError as exc:  # a port that is not a number, or above 65535
            raise AdminError(f"--url {url!r}: {exc}; it must look like http://127.0.0.1:9191") from exc
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, port
        self.token = _clean_token(token)
        self.timeout = timeout

    def connect(self) -> http.client.HTTPConnection:
        """A fresh connection."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=self.timeout)

    def headers(self, **extra: str) -> dict[str, str | bytes]:
        """Request headers with the bearer token, if any."""
        out: dict[str, str | bytes] = dict(extra)
        if self.token:
            # As UTF-8 bytes, as curl sends them and the processor reads them (http.client would
            # send a str as Latin-1: a token with "ä" never matched).
            out["authorization"] = f"Bearer {self.token}".encode()
        return out

    def send(self, method: str, path: str, body: Any = None, **kw: Any) -> http.client.HTTPResponse:
        """Send a request; connection problems become :class:`AdminError` with the fix."""
        conn = self.connect()
        try:
            conn.request(method, path, body=body, **kw)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(
                f"cannot reach the admin API at {self.url}: {exc}. Is the processor running? In Kubernetes "
                "run the command in the pod (kubectl exec deploy/semantic-router -c processor -- "
                "semantic-cache admin …) or kubectl port-forward deploy/semantic-router 9191"
            ) from exc

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """A JSON request and its JSON answer; non-2xx answers raise :class:`AdminError`."""
        body = json.dumps(payload).encode() if payload is not None else None
        response = self.send(method, path, body, headers=self.headers(**{"content-type": "application/json"}))
        return self.answer(response)

    def answer(self, response: http.client.HTTPResponse) -> Any:
        """The JSON body of ``response``; its error message when it is not a success."""
        raw = response.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw.decode("utf-8", "replace")[:500]}
        if response.status >= 400 and not (isinstance(data, dict) and "imported" in data):
            message = data.get("error", "") if isinstance(data, dict) else str(data)
            raise AdminError(f"{self.url} answered {response.status}: {message}")
        return data


class Progress:
    """Rate-limited progress lines on stderr."""

    def __init__(self, verb: str, quiet: bool, every: float = 2.0) -> None:
        self.verb, self.quiet, self.every = verb, quiet, every
        self.started = self.last = time.monotonic()

    def rate(self, n: int) -> float:
        """Items per second so far."""
        return n / max(time.monotonic() - self.started, 1e-6)

    def update(self, n: int, total: int | None = None) -> None:
        """Print a line at most every ``every`` seconds."""
        now = time.monotonic()
        if self.quiet or now - self.last < self.every:
            return
        self.last = now
        of = f"/{total}" if total is not None else ""
        print(f"{self.verb}: {n}{of} entries ({self.rate(n):.0f}/s)", file=sys.stderr, flush=True)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _selector(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("model", "scope", "fingerprint"):
        if getattr(args, name, None) is not None:  # "" too: the server refuses it, never "every entry"
            out[name] = getattr(args, name)
    if getattr(args, "older_than", None) is not None:
        out["older_than_seconds"] = args.older_than
    return out


def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    """Print /admin/stats."""
    _print(client.call("GET", "/admin/stats"))
    return 0


def cmd_invalidate(client: Client, args: argparse.Namespace) -> int:
    """Dry-run (default) or apply an invalidation."""
    payload = _selector(args) | {"dry_run": not args.apply}
    if args.prompt is not None:
        payload["prompt"] = args.prompt
    if args.min_similarity is not None:
        payload["min_similarity"] = args.min_similarity
    if args.limit is not None:
        payload["limit"] = args.limit
    result = client.call("POST", "/admin/invalidate", payload)
    _print(result)
    verb = "would delete" if result.get("dry_run") else "deleted"
    count = result.get("matched") if result.get("dry_run") else result.get("deleted")
    print(f"invalidate: {verb} {count} entries", file=sys.stderr)
    return 0


def cmd_flush(client: Client, args: argparse.Namespace) -> int:
    """Delete every entry (needs --yes)."""
    payload = {"confirm": FLUSH_CONFIRMATION} if args.yes else {}
    _print(client.call("POST", "/admin/flush", payload))
    return 0


def cmd_switch(client: Client, args: argparse.Namespace) -> int:
    """Turn caching on or off (pass-through) without a restart."""
    _print(client.call("POST", "/admin/enabled", {"enabled": args.command_name == "enable"}))
    return 0


def cmd_feedback(client: Client, args: argparse.Namespace) -> int:
    """Report a served entry (its x-semantic-cache-entry) wrong (deleted) or right."""
    _print(client.call("POST", "/v1/feedback", {"entry": args.entry, "verdict": args.verdict}))
    return 0


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    """Stream every entry as JSON lines to stdout or a file."""
    query = urlencode(_selector(args))
    target = Path(args.output) if args.output and args.output != "-" else None
    partial = target.with_name(target.name + ".partial") if target else None
    # The file is opened first: a wrong path is reported before the server starts streaming.
    try:
        out: IO[bytes] = partial.open("wb") if partial else sys.stdout.buffer
    except OSError as exc:
        raise AdminError(f"cannot write {partial}: {exc.strerror or exc}") from exc
    try:
        response = client.send(
            "GET", "/admin/export" + (f"?{query}" if query else ""), headers=client.headers()
        )
        if response.status != 200:
            client.answer(response)
    except AdminError:
        if partial:
            out.close()
            partial.unlink(missing_ok=True)  # nothing was exported
        raise
    header = response.getheader("x-semantic-cache-entries")
    total = int(header) if header and header.isdigit() else None
    progress = Progress("export", args.quiet)
    count = 0
    try:
        while chunk := response.read1(CHUNK):
            out.write(chunk)
            count += chunk.count(b"\n")
            progress.update(count, total)
    except (OSError, http.client.HTTPException) as exc:
        where = f" ({partial} kept)" if partial else ""
        raise AdminError(f"export incomplete after {count} entries{where}: {exc!r}; run it again") from exc
    finally:
        out.flush()
        if partial:
            out.close()
    if partial and target:
        try:
            partial.replace(target)
        except OSError as exc:
            raise AdminError(f"cannot rename {partial} to {target}: {exc.strerror or exc}") from exc
    if not args.quiet:
        dest = target or "stdout"
        print(
            f"exported {count} entries to {dest} in {time.monotonic() - progress.started:.1f}s "
            f"({progress.rate(count):.0f}/s)",
            file=sys.stderr,
        )
        if total is not None and count < total:
            print(
                f"{total} entries were live when the export began: {total - count} were evicted, "
                "deleted or expired while it ran",
                file=sys.stderr,
            )
    return 0


def _chunks(source: IO[bytes], progress: Progress, counter: list[int]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        counter[0] += chunk.count(b"\n")
        progress.update(counter[0])
        yield chunk


def _open(file: str) -> IO[bytes]:
    """``file`` opened for reading; :class:`AdminError` saying why it cannot be."""
    try:
        return Path(file).open("rb")
    except OSError as exc:
        raise AdminError(f"cannot read {file}: {exc.strerror or exc}") from exc


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    """Send JSON lines from a file or stdin; print the report; exit 1 if any line was refused."""
    progress = Progress("import (sent)", args.quiet)
    sent = [0]
    path = "/admin/import" + ("?reembed=1" if args.reembed else "")
    with contextlib.ExitStack() as stack:
        # The file is opened first: a wrong path is reported before anything is asked of the server.
        source: IO[bytes] = (
            sys.stdin.buffer if args.file in (None, "-") else stack.enter_context(_open(args.file))
        )
        stats = client.call("GET", "/admin/stats")
        if stats.get("backend_state") != "ready":
            raise AdminError(
                f"the {stats.get('backend')} backend is not ready ({stats.get('backend_state')}: "
                f"{stats.get('backend_detail')}); import when it is"
            )
        response = client.send(
            "POST",
            path,
            _chunks(source, progress, sent),
            headers=client.headers(**{"content-type": "application/x-ndjson"}),
            encode_chunked=True,
        )
        report = client.answer(response)
    _print(report)
    for rejection in report.get("rejections", []):
        print(f"line {rejection['line']}: {rejection['reason']}", file=sys.stderr)
    if not args.quiet:
        print(
            f"imported {report.get('imported')} of {report.get('lines')} lines into the "
            f"{stats.get('backend')} cache in {report.get('elapsed_seconds')}s "
            f"({report.get('entries_per_second')}/s); {report.get('rejected')} rejected",
            file=sys.stderr,
        )
    if report.get("evicted"):
        print(
            f"{report['evicted']} entries were evicted meanwhile to stay within max_entries "
            f"({stats.get('max_entries', '?')}): a file larger than the cache's room does not all stay",
            file=sys.stderr,
        )
    if report.get("error"):
        print(f"import stopped: {report['error']}", file=sys.stderr)
    return 1 if report.get("rejected") or report.get("error") else 0


COMMANDS = {
    "stats": cmd_stats,
    "invalidate": cmd_invalidate,
    "flush": cmd_flush,
    "export": cmd_export,
    "import": cmd_import,
    "enable": cmd_switch,
    "disable": cmd_switch,
    "feedback": cmd_feedback,
}


def cmd_admin(args: argparse.Namespace) -> int:
    """Run one admin subcommand."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    try:
        client = Client(args.url or default_url(), token, args.timeout)
        return COMMANDS[args.command_name](client, args)
    except AdminError as exc:
        print(f"semantic-cache admin: {exc}", file=sys.stderr)
        return 1


def add_admin_parser(sub: Any) -> None:
    """Register ``semantic-cache admin`` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help=f"admin API (default: http://${ADDRESS_ENV}, else http://{DEFAULT_ADDRESS})"
    )
    common.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    common.add_argument("--timeout", type=float, default=300.0, help="seconds per network operation")
    select = argparse.ArgumentParser(add_help=False)
    select.add_argument("--model", help="only entries of this model")
    select.add_argument("--scope", help='only entries of this scope ("global", "header:…", "auth:…")')
    select.add_argument("--fingerprint", help="only entries with this request fingerprint")
    select.add_argument(
        "--older-than", type=parse_duration, help="only entries stored longer ago (90m, 6h, 7d)"
    )

    admin = sub.add_parser("admin", help="operate a running processor through its admin API")
    actions = admin.add_subparsers(dest="command_name", required=True)
    admin.set_defaults(func=cmd_admin)
    actions.add_parser("stats", parents=[common], help="entries, hit/miss/bypass, backend, uptime")
    inv = actions.add_parser(
        "invalidate", parents=[common, select], help="remove entries (a dry run unless --apply)"
    )
    inv.add_argument("--prompt", help="entries nearest to this prompt (at or above --min-similarity)")
    inv.add_argument("--min-similarity", type=float, help="default: the cache's similarity_threshold")
    inv.add_argument("--limit", type=int, help="nearest entries examined for --prompt (default: top_k)")
    inv.add_argument("--apply", action="store_true", help="delete (default: only report what would go)")
    flush = actions.add_parser("flush", parents=[common], help="delete every entry (needs --yes)")
    flush.add_argument("--yes", action="store_true", help="confirm deleting every entry")
    export = actions.add_parser("export", parents=[common, select], help="entries as JSON lines")
    export.add_argument("-o", "--output", help="file (written as FILE.partial, renamed when complete)")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    imp = actions.add_parser("import", parents=[common], help="load JSON lines (file, or - for stdin)")
    imp.add_argument("file", nargs="?", help="JSON lines file (default: stdin)")
    imp.add_argument("--reembed", action="store_true", help="embed prompts again (another embedding model)")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    actions.add_parser("disable", parents=[common], help="pass every request through, without a restart")
    actions.add_parser("enable", parents=[common], help="resume caching")
    feedback = actions.add_parser(
        "feedback", parents=[common], help="a served entry was wrong (deleted) or right"
    )
    feedback.add_argument("entry", help="the x-semantic-cache-entry header of the hit")
    feedback.add_argument("--verdict", choices=("wrong", "right"), default="wrong")
