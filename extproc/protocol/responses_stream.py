"""A stored ``response`` replayed as the Responses API streams one.

created, in_progress, then per output item: added (empty), its text as deltas, done; then
completed with the stored response.  Every kind of text the API streams is streamed: output text
(with the log probabilities of the tokens each delta spells, and its annotations), refusals,
reasoning summaries and reasoning text, function-call arguments and custom tool input.  Other
items (web search calls, images…) are added and done whole, as the API does.
"""

from __future__ import annotations

from typing import Any

from extproc.protocol.replay import content_with_logprobs, text_pieces

Event = dict[str, Any]


def item_events(index: int, item: dict[str, Any], size: int) -> list[Event]:
    """The events of one output item, its texts in deltas of about ``size`` characters."""
    kind = item.get("type")
    where = {"item_id": item.get("id", ""), "output_index": index}
    if kind == "message":
        return _message(index, item, where, size)
    if kind == "reasoning":
        return _reasoning(index, item, where, size)
    if kind == "function_call" and isinstance(item.get("arguments"), str):
        return _streamed_field(index, item, where, size, "arguments", "response.function_call_arguments")
    if kind == "custom_tool_call" and isinstance(item.get("input"), str):
        return _streamed_field(index, item, where, size, "input", "response.custom_tool_call_input")
    return [_added(index, dict(item, status="in_progress")), _done(index, item)]


def _added(index: int, item: dict[str, Any]) -> Event:
    return {"type": "response.output_item.added", "output_index": index, "item": item}


def _done(index: int, item: dict[str, Any]) -> Event:
    return {"type": "response.output_item.done", "output_index": index, "item": item}


def _deltas(kind: str, at: dict[str, Any], text: str, size: int, logprobs: Any = None) -> list[Event]:
    """``{kind}.delta`` events spelling ``text``; output text carries its tokens' logprobs."""
    if kind != "response.output_text":
        return [{"type": f"{kind}.delta", **at, "delta": piece} for piece in text_pieces(text, size)]
    if isinstance(logprobs, list) and logprobs:
        pieces = content_with_logprobs(text, logprobs, size)
        return [{"type": f"{kind}.delta", **at, "delta": p, "logprobs": group} for p, group in pieces]
    return [{"type": f"{kind}.delta", **at, "delta": p, "logprobs": []} for p in text_pieces(text, size)]


def _streamed_field(
    index: int, item: dict[str, Any], where: dict[str, Any], size: int, field: str, kind: str
) -> list[Event]:
    """A tool call: added with ``field`` empty, its deltas, ``.done`` with it whole, done."""
    value: str = item[field]
    events = [_added(index, dict(item, status="in_progress", **{field: ""}))]
    events += _deltas(kind, where, value, size)
    events.append({"type": f"{kind}.done", **where, field: value})
    return [*events, _done(index, item)]


def _reasoning(index: int, item: dict[str, Any], where: dict[str, Any], size: int) -> list[Event]:
    """Summary parts (added, text deltas, done) and reasoning text (deltas, done)."""
    summary = [s for s in item.get("summary") or () if isinstance(s, dict)]
    content = [c for c in item.get("content") or () if isinstance(c, dict)]
    started = dict(item, summary=[]) | ({"content": []} if "content" in item else {})
    events = [_added(index, started)]
    for i, part in enumerate(summary):
        at = where | {"summary_index": i}
        text = part.get("text") if isinstance(part.get("text"), str) else ""
        events.append({"type": "response.reasoning_summary_part.added", **at, "part": dict(part, text="")})
        events += _deltas("response.reasoning_summary_text", at, text, size)
        events.append({"type": "response.reasoning_summary_text.done", **at, "text": text})
        events.append({"type": "response.reasoning_summary_part.done", **at, "part": part})
    for i, part in enumerate(content):
        at = where | {"content_index": i}
        text = part.get("text") if isinstance(part.get("text"), str) else ""
        events += _deltas("response.reasoning_text", at, text, size)
        events.append({"type": "response.reasoning_text.done", **at, "text": text})
    return [*events, _done(index, item)]


def _message(index: int, item: dict[str, Any], where: dict[str, Any], size: int) -> list[Event]:
    """Each content part: added empty, its text or refusal in deltas (annotations after), done."""
    events = [_added(index, dict(item, status="in_progress", content=[]))]
    for c, part in enumerate(item.get("content") or ()):
        at = where | {"content_index": c}
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "output_text":
            text = part.get("text") if isinstance(part.get("text"), str) else ""
            logprobs = part.get("logprobs")
            empty = dict(part, text="", annotations=[]) | ({"logprobs": []} if "logprobs" in part else {})
            events.append({"type": "response.content_part.added", **at, "part": empty})
            events += _deltas("response.output_text", at, text, size, logprobs)
            for a, annotation in enumerate(part.get("annotations") or ()):
                events.append(
                    {
                        "type": "response.output_text.annotation.added",
                        **at,
                        "annotation_index": a,
                        "annotation": annotation,
                    }
                )
            done_logprobs = logprobs if isinstance(logprobs, list) else []
            events.append(
                {"type": "response.output_text.done", **at, "text": text, "logprobs": done_logprobs}
            )
        elif kind == "refusal":
            refusal = part.get("refusal") if isinstance(part.get("refusal"), str) else ""
            events.append({"type": "response.content_part.added", **at, "part": dict(part, refusal="")})
            events += _deltas("response.refusal", at, refusal, size)
            events.append({"type": "response.refusal.done", **at, "refusal": refusal})
        else:
            events.append({"type": "response.content_part.added", **at, "part": part})
        events.append({"type": "response.content_part.done", **at, "part": part})
    return [*events, _done(index, item)]
