"""The processes of an end-to-end run: the test upstream, the processor (the real CLI) and Envoys.

Each runs in its own process, as in production, so the load generator never shares a GIL with
what it measures.  Envoy is started with the tests' helper (tests/conftest.py); the Envoy-only
baseline is the same rendered config with the ext_proc filter removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Envoy, free_port, start_envoy, wait_http

from .report import ROOT, rss_mb


@dataclass
class Child:
    """A child process in its own process group (stopped as a group)."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def rss_mb(self) -> float:
        """Resident memory in MiB."""
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
                return


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    """Start ``args`` from the repository root with output to ``log``."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ | (env or {}),
        )
    return Child(process, log)


async def start_upstream(tmp: Path) -> tuple[Child, int]:
    """The tests' OpenAI-compatible upstream (bench/upstream.py) in its own process."""
    port = free_port()
    child = spawn([sys.executable, "-m", "bench.upstream", str(port)], tmp / "upstream.log")
    try:
        await wait_http(f"http://127.0.0.1:{port}/ping", timeout=30)
    except TimeoutError:
        child.stop()
        raise RuntimeError("upstream did not start:\n" + child.log.read_text()[-2000:]) from None
    return child, port


@dataclass
class Processor:
    """``semantic-cache serve`` with a generated config."""

    child: Child
    grpc_port: int
    management_port: int

    async def metrics(self) -> dict[str, float]:
        """Unlabelled sums of the Prometheus samples, by metric name (decision counts, entries)."""
        out: dict[str, float] = {}
        for key, value in (await self.samples()).items():
            name = key.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + value
        return out

    async def samples(self, *names: str) -> dict[str, float]:
        """Every Prometheus sample (``name{labels}`` → value), only of ``names`` if given."""
        import httpx

        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.management_port}/metrics")).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                if names and key.split("{", 1)[0] not in names:
                    continue
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out


async def start_processor(tmp: Path, log_level: str = "warning", **cache: Any) -> Processor:
    """Run the processor CLI with ``semantic_cache`` settings ``cache`` and wait until it serves."""
    grpc_port, management_port, admin_port = free_port(), free_port(), free_port()
    config = tmp / f"processor-{grpc_port}.yaml"
    section = {
        **cache,
        "server": {
            "grpc_address": f"127.0.0.1:{grpc_port}",
            "metrics_address": f"127.0.0.1:{management_port}",
            "admin_address": f"127.0.0.1:{admin_port}",
        },
    }
    config.write_text(yaml.safe_dump({"semantic_cache": section}))
    env = {"OTEL_TRACES_EXPORTER": os.environ.get("OTEL_TRACES_EXPORTER", "")}
    child = spawn(
        [sys.executable, "-m", "extproc.cli", "--log-level", log_level, "serve", "--config", str(config)],
        tmp / f"processor-{grpc_port}.log",
        env,
    )
    ready = asyncio.create_task(wait_http(f"http://127.0.0.1:{management_port}/readyz", timeout=600))
    while not ready.done() and child.process.poll() is None:  # fail fast if it exits
        await asyncio.wait({ready}, timeout=0.5)
    if not ready.done() or ready.exception() is not None:
        ready.cancel()
        child.stop()
        raise RuntimeError("processor did not start:\n" + child.log.read_text()[-3000:])
    return Processor(child, grpc_port, management_port)


def without_ext_proc(config_text: str) -> str:
    """The rendered Envoy config with the ext_proc HTTP filter removed (the Envoy-only baseline)."""
    doc = yaml.safe_load(config_text)
    for listener in doc["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                hcm = network_filter.get("typed_config", {})
                if "http_filters" in hcm:
                    hcm["http_filters"] = [
                        f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"
                    ]
                for host in hcm.get("route_config", {}).get("virtual_hosts", []):
                    for route in host.get("routes", []):
                        route.get("typed_per_filter_config", {}).pop("envoy.filters.http.ext_proc", None)
    return yaml.safe_dump(doc)


async def start_envoys(tmp: Path, processor_port: int, upstream_port: int) -> tuple[Envoy, Envoy]:
    """(Envoy with the processor, Envoy without it), both in front of the same upstream."""
    cached = await start_envoy(tmp, processor_port, upstream_port)
    try:
        plain = await start_envoy(tmp, processor_port, upstream_port, edit=without_ext_proc)
    except Exception:
        cached.stop()
        raise
    return cached, plain
