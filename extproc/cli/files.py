"""Files the command-line tools write or read whole: checked before the long work, not after."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from extproc.errors import ConfigError


def check_writable(path: str | Path) -> None:
    """Refuse an output path that cannot be written, before minutes of work (exit 2, no traceback)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ConfigError(f"{target}: is a folder, not a file to write")
    if not folder.is_dir():
        raise ConfigError(f"{target}: the folder {folder} does not exist")
    # Asked, not tried: opening the file would leave an empty one behind if the work then fails.
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise ConfigError(f"{target}: cannot be written (permission denied)")


def weights_fingerprint(model_dir: Path) -> str:
    """A digest of a model folder's files (names, sizes, times): other weights, another digest."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.rglob("*") if p.is_file()) if model_dir.is_dir() else [model_dir]
    for file in files:
        size, mtime = (file.stat().st_size, file.stat().st_mtime_ns) if file.exists() else (0, 0)
        digest.update(f"{file.name}|{size}|{mtime}\n".encode())
    return digest.hexdigest()[:16]
