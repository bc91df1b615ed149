"""The config watcher: what it takes for the running settings' file."""

from __future__ import annotations

import asyncio
from pathlib import Path

from extproc.admin.live_config import ConfigWatcher
from extproc.config.settings import load_config
from extproc.dataplane.shared import Shared
from tests.support.toy import make_cache


async def test_an_edit_made_while_the_processor_started_is_applied(tmp_path: Path) -> None:
    """The watcher took the file as it was when the admin API was built (after the model had
    loaded) as its baseline: an edit in between was never applied."""
    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  enabled: true\n  revision: r1\n")
    settings = load_config(config, {})
    config.write_text("semantic_cache:\n  enabled: false\n  revision: r2\n")  # the model is loading
    shared = Shared(settings=settings, cache=make_cache(), spawn=asyncio.ensure_future)
    watcher = ConfigWatcher(shared, str(config), interval=0.02)
    watcher.start()
    try:
        for _ in range(250):
            if shared.settings.revision == "r2":
                break
            await asyncio.sleep(0.02)
        assert (shared.settings.enabled, shared.settings.revision) == (False, "r2")
    finally:
        await watcher.stop()


async def test_the_file_the_settings_came_from_is_not_reloaded(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  enabled: true\n")
    shared = Shared(settings=load_config(config, {}), cache=make_cache(), spawn=asyncio.ensure_future)
    watcher = ConfigWatcher(shared, str(config), interval=0.02)
    reloads = 0

    async def counted() -> bool:
        nonlocal reloads
        reloads += 1
        return True

    watcher.reload = counted  # type: ignore[method-assign]
    watcher.start()
    try:
        await asyncio.sleep(0.2)
        assert reloads == 0
        config.write_text("semantic_cache:\n  enabled: false\n")
        for _ in range(250):
            if reloads:
                break
            await asyncio.sleep(0.02)
        assert reloads == 1
    finally:
        await watcher.stop()
