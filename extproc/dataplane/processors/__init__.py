"""Processors per path: the first message of a stream (its request headers) picks one.

Caching another endpoint means registering a processor here, not adding a branch to the chat
one; every other path gets the pass-through processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import betterproto2

from extproc.dataplane.processors.base import PassThroughProcessor, Processor, Send
from extproc.dataplane.processors.chat import ChatCompletionsProcessor
from extproc.dataplane.processors.completions import CompletionsProcessor, ResponsesProcessor
from extproc.dataplane.shared import Shared
from extproc.protocol import messages as m
from extproc.protocol.completions import COMPLETIONS_PATH
from extproc.protocol.openai import CHAT_PATH
from extproc.protocol.responses import RESPONSES_PATH

__all__ = [
    "PROCESSORS",
    "ChatCompletionsProcessor",
    "CompletionsProcessor",
    "PassThroughProcessor",
    "Processor",
    "ResponsesProcessor",
    "open_processor",
]

PROCESSORS: dict[str, type[Processor]] = {
    CHAT_PATH: ChatCompletionsProcessor,
    COMPLETIONS_PATH: CompletionsProcessor,
    RESPONSES_PATH: ResponsesProcessor,
}
"""Request path (query string excluded) → the processor of its streams."""


def processor_for(path: str) -> type[Processor]:
    """The processor class registered for ``path`` (query string ignored), else pass-through."""
    return PROCESSORS.get(path.split("?", 1)[0], PassThroughProcessor)


def open_processor(
    first: m.ProcessingRequest,
    shared: Shared,
    metadata: Sequence[tuple[str, Any]] | None = None,
    send: Send | None = None,
) -> Processor:
    """The processor for the stream that ``first`` opens (pass-through unless it is request headers)."""
    phase, value = betterproto2.which_one_of(first, "request")
    path = ""
    if phase == "request_headers" and value is not None:
        path = m.header_path(value.headers)
    return processor_for(path)(shared, metadata, send)
