"""More OpenAI endpoints: legacy ``POST /v1/completions`` and stateless ``POST /v1/responses``.

Everything but the wire format is the chat processor's: identity, scope, partitions, freshness,
policies, guards, single-flight, the store rules and the JSON / SSE switch.
"""

from __future__ import annotations

from extproc.dataplane.processors.chat import ChatCompletionsProcessor
from extproc.protocol.completions import (
    parse_completions_request,
    parse_json_text_completion,
    parse_sse_text_completion,
    render_text_completion,
    render_text_sse,
)
from extproc.protocol.responses import (
    parse_json_response,
    parse_responses_request,
    parse_sse_response,
    render_response,
    render_response_sse,
)


class CompletionsProcessor(ChatCompletionsProcessor):
    """Caches ``POST /v1/completions``: the chat processor with the text-completion format."""

    parse_request = staticmethod(parse_completions_request)
    parse_json = staticmethod(parse_json_text_completion)
    parse_sse = staticmethod(parse_sse_text_completion)
    render_json = staticmethod(render_text_completion)
    render_stream = staticmethod(render_text_sse)


class ResponsesProcessor(ChatCompletionsProcessor):
    """Caches stateless ``POST /v1/responses`` (``store: false``, no previous response)."""

    parse_request = staticmethod(parse_responses_request)
    parse_json = staticmethod(parse_json_response)
    parse_sse = staticmethod(parse_sse_response)
    render_json = staticmethod(render_response)
    render_stream = staticmethod(render_response_sse)
