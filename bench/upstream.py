"""The tests' fake OpenAI-compatible upstream (tests/support/upstream.py) as a process of its own.

Run as ``python -m bench.upstream PORT``.
Its latency is set per request by the client: ``x-test-mode: slow`` and ``x-test-delay-ms``.
Streamed answers are 7 SSE events 5 ms apart.
"""

from __future__ import annotations

import sys

from aiohttp import web

from tests.support.upstream import FakeUpstream, make_app


def main() -> None:
    """Serve on 127.0.0.1:PORT until killed."""
    web.run_app(
        make_app(FakeUpstream()),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        max_field_size=64 * 1024,  # headers as large as Envoy lets through
        max_line_size=64 * 1024,
    )


if __name__ == "__main__":
    main()
