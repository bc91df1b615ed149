"""The local Milvus examples of the quick start: the shipped Milvus Lite config stores and hits."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from extproc.app import make_cache
from extproc.config.settings import load_config
from extproc.embedding.base import EncodeFn
from tests.conftest import ROOT
from tests.support.toy import answer
from tests.support.toy import query as q

pytestmark = pytest.mark.integration


async def test_shipped_milvus_lite_example(
    model: tuple[EncodeFn, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The repository's layout in a fresh working directory, so the Lite file is created there.
    (tmp_path / "config" / "semantic-cache").mkdir(parents=True)
    for name in ("config-milvus-lite.yaml", "semantic-cache/milvus-lite.yaml"):
        shutil.copy(ROOT / "config" / name, tmp_path / "config" / name)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    settings = load_config("config/config-milvus-lite.yaml")
    cache = await make_cache(settings, model)
    try:
        assert await cache.backend.wait_ready(60), cache.backend.status()  # type: ignore[attr-defined]
        await cache.store(q("How tall is Mount Everest?"), answer("8849 m"))
        assert (await cache.check(q("What is the height of Mount Everest?"))).hit
    finally:
        await cache.close()
    assert (tmp_path / "semantic-cache-lite.db").exists()
    assert "connecting to Milvus at semantic-cache-lite.db" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_every_shipped_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    monkeypatch.chdir(ROOT)
    for path in sorted((ROOT / "config").rglob("*.yaml")):
        done = subprocess.run(
            [sys.executable, "-m", "extproc.cli", "check-config", str(path.relative_to(ROOT))],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (path, done.stderr)
