"""Settings that change without a restart: the pass-through switch and the model revision.

Both the admin API (``POST /admin/enabled``) and the config file (a Kubernetes ConfigMap is
updated in place in the pod) change them.  Every ext_proc stream reads the shared settings
when it starts, so the next request sees the change; requests in flight finish as they began.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import fields, replace
from pathlib import Path

from extproc.config.env import read_digest
from extproc.config.settings import CacheSettings, load_config
from extproc.dataplane.shared import Shared
from extproc.errors import ConfigError

log = logging.getLogger(__name__)

LIVE_KEYS = ("enabled", "revision", "revision_header")


def set_enabled(shared: Shared, enabled: bool, source: str) -> bool:
    """The file's ``enabled``: caching on, or off (a default: a policy's ``enabled: true`` still
    caches its traffic); True if it changed."""
    if shared.settings.enabled == enabled:
        return False
    shared.settings = replace(shared.settings, enabled=enabled)
    if enabled:
        log.warning("cache enabled by %s: lookups and stores resume", source)
    else:
        log.warning("cache disabled by %s: requests no policy enables pass through", source)
    return True


def set_switch(shared: Shared, enabled: bool, source: str) -> bool:
    """The pass-through switch (admin API): off, every request passes through untouched,
    whatever a policy says; on, caching resumes (``enabled`` too); True if it changed."""
    if not enabled:
        if shared.paused:
            return False
        shared.paused = True
        log.warning("cache switched off by %s: every request passes through (no lookups, no stores)", source)
        return True
    was_paused, shared.paused = shared.paused, False
    if set_enabled(shared, True, source):  # logs "cache enabled by …" itself
        return True
    if was_paused:
        log.warning("cache switched on by %s: lookups and stores resume", source)
    return was_paused


class ConfigWatcher:
    """Re-reads the config file every ``interval`` seconds and applies :data:`LIVE_KEYS`."""

    def __init__(self, shared: Shared, path: str, interval: float = 5.0) -> None:
        self.shared = shared
        self.path = Path(path)
        self.interval = interval
        # The bytes the running settings came from, not the file as it is now: an edit made while
        # the processor started (the model loading) must still be applied.
        self._digest = read_digest(self.path)
        self._task: asyncio.Task[None] | None = None

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def start(self) -> None:
        """Begin polling."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            digest = await asyncio.to_thread(self._read_digest)
            if digest is None or digest == self._digest:
                continue
            self._digest = digest
            await self.reload()

    async def reload(self) -> bool:
        """Read the file and apply it; if it is invalid keep the running settings and say so."""
        try:
            fresh = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            self._reject(str(exc))
            return False
        except Exception as exc:  # the watcher must outlive any bad file
            self._reject(f"{type(exc).__name__}: {exc}")
            return False
        if self.shared.config_error:
            log.warning("%s is valid again; applying it", self.path)
            self.shared.config_error = ""
        self.apply(fresh)
        return True

    def _reject(self, problem: str) -> None:
        # A restart would not start (serve exits on an invalid config), so the running settings
        # are kept until the file is fixed: the error goes to the log, /readyz and
        # semantic_cache_config_valid.
        self.shared.config_error = (
            f"{self.path} changed but is invalid; running with the last good settings "
            f"(a restart would fail): {problem}"
        )
        log.error("%s", self.shared.config_error)

    def apply(self, fresh: CacheSettings) -> None:
        """Take the live keys from ``fresh``; log which other changes need a restart."""
        current = self.shared.settings
        set_enabled(self.shared, fresh.enabled, str(self.path))
        if (fresh.revision, fresh.revision_header) != (current.revision, current.revision_header):
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.shared.settings = replace(
                self.shared.settings, revision=fresh.revision, revision_header=fresh.revision_header
            )
            log.warning(
                "model revision is now %r (header %r) from %s at %s: answers of other revisions are "
                "no longer served; remove those stored before now with: semantic-cache admin invalidate "
                "--model NAME --older-than <seconds since %s> --apply",
                fresh.revision,
                fresh.revision_header,
                self.path,
                now,
                now,
            )
        skip = {*LIVE_KEYS, "source", "milvus_config", "notes"}  # notes: advice, no setting
        pending = [
            f.name
            for f in fields(CacheSettings)
            if f.name not in skip and getattr(fresh, f.name) != getattr(current, f.name)
        ]
        if pending:
            log.warning("%s changed %s: restart the processor to apply", self.path, ", ".join(pending))
