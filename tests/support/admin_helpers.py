"""Helpers for the admin API tests: the CLI as a subprocess, chat requests, completions."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from typing import Any

from tests.conftest import ROOT, python_exe


@dataclass
class Result:
    """A finished CLI run."""

    code: int
    out: str
    err: str


async def admin_cli(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``semantic-cache admin ARGS`` without blocking the event loop the servers run on."""
    process = await asyncio.create_subprocess_exec(
        python_exe(),
        "-m",
        "extproc.cli",
        "admin",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def chat(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A chat request whose last user message is ``prompt``."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def fresh_model() -> str:
    """A model name no other test uses."""
    return f"ops-{uuid.uuid4().hex[:8]}"


def completion(text: str, model: str = "m") -> dict[str, Any]:
    """A stored chat.completion."""
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
