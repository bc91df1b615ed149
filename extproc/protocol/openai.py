"""OpenAI chat-completions formats: request parsing and request identity.

Pure functions over bytes and dicts; nothing here knows about Envoy or the cache backend. The
responses (the stored form, JSON and SSE) live in :mod:`extproc.protocol.completion`,
:mod:`extproc.protocol.stream` (read) and :mod:`extproc.protocol.replay`; their public names are
importable from here as well.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from extproc.errors import NotCacheable

# Re-exported: callers import the response functions from this module.
from extproc.protocol.completion import parse_json_completion as parse_json_completion
from extproc.protocol.completion import render_completion as render_completion
from extproc.protocol.completion import validate_completion as validate_completion
from extproc.protocol.replay import render_sse as render_sse
from extproc.protocol.stream import parse_sse_completion as parse_sse_completion

CHAT_PATH = "/v1/chat/completions"
IGNORED_FIELDS = ("stream", "stream_options", "request_id")
"""Left out of the fingerprint by default (``fingerprint_ignore_fields``): a stream and a JSON
caller share an entry; vLLM's ``request_id`` is new on every call."""
MAX_MODEL_CHARS = 256
"""Longer ``model`` values are not cached (no real model name is that long)."""


@dataclass(frozen=True)
class ChatRequest:
    """What the cache needs to know about one chat-completions request."""

    model: str
    prompt: str
    """Normalized text of the last user message: the part that is embedded."""
    fingerprint: str
    """Hash of everything else in the request that can change the answer."""
    stream: bool
    include_usage: bool
    n: int = 1
    """Choices asked for; a stored response must have exactly this many, all complete."""
    quotes_prompt: bool = False
    """The answer quotes the prompt itself (``echo``, vLLM's ``prompt_logprobs``): a paraphrase's
    stored answer would quote another prompt, so only exact repeats may be served."""
    earlier: tuple[str, ...] = ()
    """The text of the user turns before the last one (at most EARLIER_TURNS, the latest last):
    a follow-up ("And in London?") is as time-sensitive as the question it follows."""


EARLIER_TURNS = 4
"""Earlier user turns kept in :attr:`ChatRequest.earlier`."""


def normalize_text(text: str) -> str:
    """Unicode NFC, line ends as ``\\n``, trailing spaces and blank lines at both ends removed.

    Whitespace that can be meaning is kept (case too): indentation, runs of spaces inside a line
    (in code and quoted strings they change the answer), and the lines themselves.  A one-line
    text is trimmed at both ends.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if len(lines) <= 1:
        return lines[0].strip() if lines else ""
    return "\n".join(lines)


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _split_content(content: Any) -> tuple[str, Any]:
    """Split message content into (text to embed, the non-text rest kept in the fingerprint).

    The rest keeps where each text part stood among the others: ``[cat image, "the image
    below?", dog image]`` and ``["the image below?", cat image, dog image]`` ask about two
    different images.  Text-only content has no rest.
    """
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts: list[str] = []
        layout: list[Any] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                layout.append(["t"])
            else:
                layout.append(["p", part])
        if len(texts) == len(layout):
            return "\n".join(texts), None
        return "\n".join(texts), layout
    raise NotCacheable("bad_messages")


def client_fields(data: dict[str, Any], drop: Iterable[str]) -> dict[str, Any]:
    """The request's own fields for its identity: those in ``drop`` and nulls left out (``"stop":
    null`` asks for no stop, as its absence does), and a name starting with ``$`` escaped with
    another, so no field a client sends can stand for a marker the parser adds (``$raw_prompt``)."""
    dropped = set(drop)
    kept = ((k, v) for k, v in data.items() if k not in dropped and v is not None)
    return {("$" + k if k.startswith("$") else k): v for k, v in kept}


def canonical_json(identity: dict[str, Any]) -> str:
    """The identity as canonical JSON (keys sorted), or :class:`NotCacheable` (``bad_json``).

    A whole float is written as an integer: ``"temperature": 0.0`` (Python clients) and ``0``
    (JavaScript's JSON) are one value, not two cache partitions. The conversation (``messages``,
    ``input``) is left as sent: walking a megabyte of turns took 4 ms, and it holds no parameter.
    """
    values = {k: v if k in _CONVERSATION else _whole_floats(v) for k, v in identity.items()}
    try:
        return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError) as exc:  # e.g. lone surrogates, absurd nesting
        raise NotCacheable("bad_json") from exc


_CONVERSATION = frozenset({"messages", "input"})


def _whole_floats(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _whole_floats(v) if isinstance(v, (dict, list, float)) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats(v) if isinstance(v, (dict, list, float)) else v for v in value]
    return value


def load_request(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or :class:`NotCacheable` (``bad_json``)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NotCacheable("bad_json") from exc
    if not isinstance(data, dict):
        raise NotCacheable("bad_json")
    return data


def check_model(model: Any) -> str:
    """The request's ``model``, or :class:`NotCacheable` (``no_model``, ``model_too_long``)."""
    if not isinstance(model, str) or not model:
        raise NotCacheable("no_model")
    if len(model) > MAX_MODEL_CHARS:
        raise NotCacheable("model_too_long")
    return model


def parse_chat_request(body: bytes, ignore_fields: Iterable[str] = IGNORED_FIELDS) -> ChatRequest:
    """Parse a chat-completions body into a :class:`ChatRequest` or raise :class:`NotCacheable`."""
    data = load_request(body)
    model = check_model(data.get("model"))
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise NotCacheable("bad_messages")
    if not all(isinstance(m, dict) for m in messages):
        raise NotCacheable("bad_messages")
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last_user is None:
        raise NotCacheable("no_user_message")
    text, rest = _split_content(messages[last_user].get("content"))
    prompt = normalize_text(text)
    if not prompt:
        raise NotCacheable("empty_prompt")

    stream, include_usage = streaming(data)
    if data.get("store") not in (None, False):  # OpenAI keeps the completion under its own id
        raise NotCacheable("stateful")
    if data.get("web_search_options") is not None:  # the server searches the web: live results
        raise NotCacheable("server_tools")
    quoted = quotes_prompt(data)
    identity = client_fields(data, (*ignore_fields, "model"))
    if quoted and (raw := raw_prompt_identity(text, prompt, quoted)):
        identity["$raw_prompt"] = raw  # the answer quotes the text as sent
    msgs = list(messages)
    placeholder = {k: v for k, v in messages[last_user].items() if k != "content"}
    placeholder["content"] = {"$last_user_text": True, "rest": rest}
    msgs[last_user] = placeholder
    identity["messages"] = msgs
    canonical = canonical_json(identity)
    earlier = [m.get("content") for m in messages[:last_user] if m.get("role") == "user"]
    return ChatRequest(
        model=model,
        prompt=prompt,
        fingerprint=_hash(canonical),
        stream=stream,
        include_usage=include_usage,
        n=data["n"] if isinstance(data.get("n"), int) and data["n"] > 0 else 1,
        quotes_prompt=quoted,
        earlier=tuple(_text_of(content) for content in earlier[-EARLIER_TURNS:]),
    )


def _text_of(content: Any) -> str:
    """The text parts of a message's content ("" when it has none)."""
    try:
        return _split_content(content)[0]
    except NotCacheable:
        return ""


_QUOTING_FIELDS = ("echo", "prompt_logprobs", "return_token_ids", "enable_response_messages")


def quotes_prompt(data: dict[str, Any]) -> bool:
    """True when a request's answer repeats its prompt: ``echo`` (vLLM's chat and the legacy
    completions), ``prompt_logprobs`` (the prompt's tokens with their log-probabilities),
    ``return_token_ids`` (vLLM: the prompt's token ids) or ``enable_response_messages`` (vLLM's
    Responses: the input messages as the model read them). Anything but absent, null or false
    asks: servers read ``1`` and ``"yes"`` as true (0 asks ``prompt_logprobs`` too)."""
    values = (data.get(k) for k in _QUOTING_FIELDS)
    return any(v is not None and v is not False for v in values)  # `0 == False`: compare identity


def streaming(data: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage) of a request, or :class:`NotCacheable` (``unsupported_value``) when
    servers read them differently: ``stream: 1`` streams on vLLM (lax booleans), a
    ``stream_options`` without ``stream: true`` is a 400, one without ``include_usage`` sends usage
    on vLLM and none on OpenAI, and ``continuous_usage_stats`` (usage in every chunk) is not
    replayed."""
    stream, options = data.get("stream"), data.get("stream_options")
    if stream is not None and not isinstance(stream, bool):
        raise NotCacheable("unsupported_value")
    if options is None:
        return stream is True, False
    if stream is not True or not isinstance(options, dict):
        raise NotCacheable("unsupported_value")
    usage = options.get("include_usage")
    if not isinstance(usage, bool) or options.get("continuous_usage_stats") not in (None, False):
        raise NotCacheable("unsupported_value")
    return True, usage


def raw_prompt_identity(raw: str, prompt: str, quoted: bool) -> dict[str, Any] | None:
    """What normalizing took from a prompt that its answer still reads, for the fingerprint:
    the whole raw text when the answer quotes it (``echo``), else the whitespace at its ends and
    whether it had CR line ends or another Unicode form (a continuation, /v1/completions, goes on
    from the last character). None when normalizing changed nothing."""
    if raw == prompt:
        return None
    if quoted:
        return {"raw": _hash(raw)}
    return {
        "lead": raw[: len(raw) - len(raw.lstrip())],
        "trail": raw[len(raw.rstrip()) :],
        "cr": "\r" in raw,
        "nfc": unicodedata.normalize("NFC", raw) != raw,
    }


def exact_key(model: str, scope: str, fingerprint: str, prompt: str) -> str:
    """H(model, scope, fingerprint, normalized prompt): finds exact repeats without embedding."""
    return _hash("exact", model, scope, fingerprint, prompt)


def partition_key(model: str, scope: str, fingerprint: str) -> str:
    """H(model, scope, fingerprint): only entries with the same partition may ever match."""
    return _hash("partition", model, scope, fingerprint)


def with_revision(fingerprint: str, revision: str) -> str:
    """The fingerprint of a request answered by model weights ``revision`` ("" keeps it as is).

    Folding the revision into the fingerprint puts it into the partition and the exact key, so
    answers of other weights under the same ``model`` name are never served.
    """
    return _hash("revision", fingerprint, revision) if revision else fingerprint


def with_query(fingerprint: str, query: str) -> str:
    """The fingerprint of a request sent with the (canonical) query string ``query``.

    Gateways route on query parameters (``?api-version=…&deployment=…``): the answer of one
    deployment is never served for another, nor for the bare path.
    """
    return _hash("query", fingerprint, query) if query else fingerprint


SHIPPED_ROUTE_NAMES = frozenset({"chat", "completions", "responses"})
"""The names envoy/envoy.yaml gives its routes: each is its endpoint's own, already in the
fingerprint, so folding them in would only change the fingerprints stored before."""


def with_route(fingerprint: str, route: str) -> str:
    """The fingerprint of a request Envoy sent through the route named ``route``.

    An operator adds a route (a header, host or prefix match) to send part of the traffic to
    another cluster or to give it its own policy: its answers are never served for the shipped
    route's, nor the reverse. The shipped names and "" (no route name) keep the fingerprint.
    """
    return _hash("route", fingerprint, route) if route and route not in SHIPPED_ROUTE_NAMES else fingerprint


HTTP_SPACE = " \t"
"""The only whitespace HTTP trims around a header value (RFC 9110 OWS): "acme\u00a0" is not "acme"."""
_AUTH_SCHEMES = frozenset({"bearer", "basic", "digest", "token", "apikey", "api-key", "negotiate"})


def scope_from_authorization(value: str | None) -> str | None:
    """Hash of the credentials (never the credentials themselves), or None without any.

    ``Bearer <token>`` and a bare ``<token>`` are the same tenant (the token is what the upstream
    checks); another scheme hashes the whole value.  An empty token, or a scheme word alone
    (``Bearer``), is no credential: the request bypasses (``no_scope``).  Hashed from the raw
    bytes, so tokens that are not valid text never collide.
    """
    value = (value or "").strip(HTTP_SPACE)
    scheme, rest = [*re.split("[ \t]+", value, maxsplit=1), ""][:2]
    if not value or (not rest and scheme.lower() in _AUTH_SCHEMES):
        return None
    token = rest if scheme.lower() == "bearer" else value
    return "auth:" + _hash("authorization", token)[:32] if token else None


def scope_from_header(value: str, max_chars: int) -> str | None:
    """The scope of a tenant header's value, or None when it is missing, blank or too long.

    A value that is not valid UTF-8 (decoded with ``surrogateescape``) is named by its raw bytes
    in hex, so ``t\\xff`` and ``t\\xfe``, or two Latin-1 names, are two tenants, never one.
    """
    value = value.strip(HTTP_SPACE)  # str.strip() would also take NBSP, U+3000…: other tenants
    if not 0 < len(value) <= max_chars:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "header-bytes:" + value.encode("utf-8", "surrogateescape").hex()
    return f"header:{value}"
