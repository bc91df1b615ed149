"""The guard protocol every guard implements."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

LONG_PROMPT_CHARS = 1000
"""Above this many characters (query + candidate) sync guards run in a worker thread."""


class Guard(Protocol):
    """Vetoes a candidate whose prompt looks like the query but means something else.

    ``reject`` may also be a coroutine (a verifier that needs a model); the cache awaits it.
    """

    name: str

    def reject(self, query: str, candidate: str) -> bool | Awaitable[bool]:
        """True when ``candidate``'s answer must not be served for ``query``."""
        ...
