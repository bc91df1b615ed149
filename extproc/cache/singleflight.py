"""Single-flight for identical misses: one request goes upstream, the others wait for its answer."""

from __future__ import annotations

import asyncio
import contextlib


class InFlight:
    """Exact keys whose response is being fetched upstream right now, in this process."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def lead(self, key: str) -> bool:
        """Claim ``key``: True if this caller fetches it, False if another already does."""
        if key in self._flights:
            return False
        self._flights[key] = asyncio.get_running_loop().create_future()
        return True

    async def wait(self, key: str, timeout: float) -> bool:
        """Wait (bounded) for the leader of ``key`` to finish; False on timeout or no leader."""
        flight = self._flights.get(key)
        if flight is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(flight), timeout)
            return True
        return False

    def done(self, key: str) -> None:
        """The leader of ``key`` finished (stored, skipped or failed): release the waiters."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(None)
