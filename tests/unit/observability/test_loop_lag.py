"""The event-loop lag probe."""

from __future__ import annotations

import asyncio
import time

from extproc.observability.loop_lag import LoopLag


def test_lag_rises_at_once_and_decays() -> None:
    lag = LoopLag(decay=0.5)
    lag.observe(0.2)
    assert lag.seconds == 0.2
    lag.observe(0.0)
    assert lag.seconds == 0.1
    lag.observe(-0.001)  # a timer that fired early is no lag
    assert lag.seconds == 0.05 and lag.worst == 0.2


async def test_a_blocked_loop_is_measured() -> None:
    lag = LoopLag(interval=0.005)
    lag.start()
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.12)  # hold the loop, as a CPU-starved process would
        await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        assert lag.worst >= 0.08
        assert lag.seconds > 0.0
    finally:
        await lag.stop()
    assert lag._task is None
