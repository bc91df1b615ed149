"""A closed-loop HTTP load generator: ``concurrency`` workers, each sending its next request at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from .report import summary


@dataclass(frozen=True)
class Request:
    """One HTTP request of a workload."""

    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Sample:
    """What one request measured."""

    latency_ms: float
    status: int
    cache: str = ""
    """The ``x-semantic-cache`` response header (``hit`` / ``miss`` / ``bypass`` / empty)."""
    match: str = ""
    ttft_ms: float = float("nan")
    """Time to the first body bytes."""
    gaps_ms: list[float] = field(default_factory=list)
    """Times between successive body chunks."""


@dataclass
class Result:
    """The samples of one phase and its wall time."""

    samples: list[Sample]
    wall_s: float

    @property
    def throughput(self) -> float:
        """Requests completed per second."""
        return len(self.samples) / self.wall_s if self.wall_s > 0 else float("nan")

    def latency(self) -> dict[str, float]:
        """p50 / p90 / p99 latency."""
        return summary([s.latency_ms for s in self.samples])

    def outcomes(self) -> dict[str, int]:
        """Counts of ``cache/match`` outcomes (e.g. ``hit/semantic``) and HTTP errors."""
        out: dict[str, int] = {}
        for s in self.samples:
            key = f"{s.cache}/{s.match}" if s.match else s.cache or "-"
            if s.status != 200:
                key = f"http_{s.status}"
            out[key] = out.get(key, 0) + 1
        return out


async def send(session: aiohttp.ClientSession, base: str, req: Request, stream: bool) -> Sample:
    """Send one request; for streams, time the first chunk and the gaps between chunks."""
    started = time.perf_counter()
    async with session.request(req.method, base + req.path, data=req.body or None, headers=req.headers) as r:
        ttft, gaps, last = float("nan"), [], 0.0
        if stream:
            async for _ in r.content.iter_any():
                now = time.perf_counter()
                if ttft != ttft:
                    ttft = (now - started) * 1000
                else:
                    gaps.append((now - last) * 1000)
                last = now
        else:
            await r.read()
        elapsed = (time.perf_counter() - started) * 1000
        return Sample(
            elapsed,
            r.status,
            r.headers.get("x-semantic-cache", ""),
            r.headers.get("x-semantic-cache-match", ""),
            ttft,
            gaps,
        )


async def run(
    base: str,
    requests: Sequence[Request],
    concurrency: int,
    stream: bool = False,
    warmup: Sequence[Request] = (),
) -> Result:
    """Send ``requests`` with ``concurrency`` workers on kept-alive connections; time the lot.

    ``warmup`` requests, sent first with the same concurrency, open the connections and are
    not measured.
    """
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def drive(todo: Iterator[Request], into: list[Sample]) -> None:
            for req in todo:
                into.append(await send(session, base, req, stream))

        warm = iter(warmup)
        await asyncio.gather(*(drive(warm, []) for _ in range(concurrency)))
        todo = iter(requests)
        samples: list[Sample] = []
        started = time.perf_counter()
        await asyncio.gather(*(drive(todo, samples) for _ in range(concurrency)))
        return Result(samples, time.perf_counter() - started)
