"""How late the event loop runs callbacks: the queueing no embedding-queue model can see.

Every ext_proc message, every gRPC write and every embedding result goes through one asyncio
loop.  When the process is starved of CPU (a burst past capacity, a noisy neighbour), messages
wait in front of the loop before any processor code runs, so the time a request spent in the
processor is larger than what the processor can measure from its first message.  A ticker that
asks to wake up every ``interval`` seconds and measures how late it woke is the standard probe;
admission control adds the recent lag to its predicted wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class LoopLag:
    """Samples the event loop's scheduling delay; :attr:`seconds` is the recent lag."""

    def __init__(self, interval: float = 0.01, decay: float = 0.8) -> None:
        self.interval = interval
        self._decay = decay
        self._lag = 0.0
        self._task: asyncio.Task[None] | None = None
        self.worst = 0.0
        """The largest single delay seen since start (for tests and logs)."""

    @property
    def seconds(self) -> float:
        """Recent lag: rises at once with a late wake-up, decays by ``decay`` per on-time tick."""
        return self._lag

    def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def observe(self, late: float) -> None:
        """Fold in one wake-up that came ``late`` seconds after it was due."""
        late = max(0.0, late)
        self.worst = max(self.worst, late)
        self._lag = max(late, self._lag * self._decay)

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(time.perf_counter() - due)
