"""What is and is not the same request: fields that change an answer, forms that do not, and
requests whose answer a cache must not repeat (server-run tools, kept state, quoted prompts)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.errors import NotCacheable
from extproc.protocol.completions import parse_completions_request
from extproc.protocol.openai import ChatRequest, parse_chat_request
from extproc.protocol.responses import parse_responses_request

CAT = {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}}
DOG = {"type": "image_url", "image_url": {"url": "https://img.example/dog.png"}}


def chat(content: Any = "Hello there", **fields: Any) -> ChatRequest:
    """A parsed chat request with one user message."""
    data = {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    return parse_chat_request(json.dumps(data).encode())


def responses(**fields: Any) -> ChatRequest:
    """A parsed stateless Responses request."""
    data = {"model": "m", "input": "Say hi", "store": False, **fields}
    return parse_responses_request(json.dumps(data).encode())


def refused(parse: Any, **fields: Any) -> str:
    """The bypass reason of a request the parser refuses."""
    with pytest.raises(NotCacheable) as info:
        parse(**fields)
    return info.value.reason


def test_where_an_image_stands_among_the_text_is_identity() -> None:
    question = {"type": "text", "text": "What animal is in the image below?"}
    before, after = chat([CAT, question, DOG]), chat([question, CAT, DOG])
    assert before.prompt == after.prompt
    assert before.fingerprint != after.fingerprint
    assert chat([question, CAT]).fingerprint != chat([question, DOG]).fingerprint
    # text-only content is the plain string it joins to, as before
    two = chat([{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}])
    assert two.fingerprint == chat("Hello\nthere").fingerprint


def test_null_fields_and_whole_floats_are_one_identity() -> None:
    plain = chat().fingerprint
    assert chat(stop=None, seed=None, tools=None).fingerprint == plain  # null asks for the default
    assert chat(temperature=0).fingerprint == chat(temperature=0.0).fingerprint  # JS "0", Python "0.0"
    assert chat(top_p=1.0, logit_bias={"50256": -100.0}).fingerprint == chat(
        top_p=1, logit_bias={"50256": -100}
    ).fingerprint
    assert chat(temperature=0.5).fingerprint != chat(temperature=0).fingerprint
    assert chat(temperature=0).fingerprint != plain  # 0 is not the server's default
    assert chat(request_id="r-1").fingerprint == chat(request_id="r-2").fingerprint == plain  # vLLM: per call
    # not a top-level null: part of a value, kept
    with_null = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"default": None}}}
    without = {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}}
    assert chat(response_format=with_null).fingerprint != chat(response_format=without).fingerprint


def test_a_client_field_cannot_stand_for_a_marker_the_parser_adds() -> None:
    """``$raw_prompt`` is what normalizing took from a completions prompt; a client sending a
    field of that name must not get the key of a prompt that differs from its own."""
    spaced = parse_completions_request(json.dumps({"model": "m", "prompt": "def f(x): "}).encode())
    raw = {"lead": "", "trail": " ", "cr": False, "nfc": False}
    forged = json.dumps({"model": "m", "prompt": "def f(x):", "$raw_prompt": raw}).encode()
    assert parse_completions_request(forged).fingerprint != spaced.fingerprint
    assert chat(**{"$raw_prompt": raw}).fingerprint != chat(**{"$$raw_prompt": raw}).fingerprint


def test_chat_requests_the_cache_must_not_repeat() -> None:
    assert refused(chat, store=True) == "stateful"  # OpenAI keeps it under its id
    assert refused(chat, store="yes") == "stateful"
    assert chat(store=False).fingerprint != chat().fingerprint  # cacheable, another request
    assert refused(chat, web_search_options={}) == "server_tools"  # live search results
    function = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert chat(tools=[function]).fingerprint != chat().fingerprint  # the client runs it


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search"},
        {"type": "web_search_preview"},
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "mcp", "server_label": "t", "server_url": "https://t.example/mcp",
         "require_approval": "never"},
        {"type": "image_generation"},
        "web_search",
    ],
)
def test_responses_with_tools_the_server_runs_bypass(tool: Any) -> None:
    """The server runs these itself: a repeat must search, call the MCP server, run code again."""
    assert refused(responses, tools=[tool]) == "server_tools"
    assert refused(responses, tools=[{"type": "function", "name": "f"}, tool]) == "server_tools"


def test_responses_with_client_tools_and_pinned_prompts_are_cached() -> None:
    plain = responses()
    function = {"type": "function", "name": "f", "parameters": {}}
    assert responses(tools=[function]).fingerprint != plain.fingerprint
    assert responses(tools=[{"type": "custom", "name": "g"}]).prompt == "Say hi"
    assert responses(tools=[]).fingerprint == responses(tools=[]).fingerprint
    pinned = responses(prompt={"id": "pmpt_1", "version": "3"})
    assert pinned.fingerprint != responses(prompt={"id": "pmpt_1", "version": "4"}).fingerprint
    assert refused(responses, prompt={"id": "pmpt_1"}) == "stateful"  # the latest version can change


def test_fields_a_response_repeats_are_never_ignored() -> None:
    """A ``response`` object repeats ``user``, ``metadata``…: ignoring them would hand one
    caller's to another; chat, which repeats neither, may ignore them."""
    ignore = ("stream", "stream_options", "user", "metadata", "safety_identifier")

    def fingerprint(parse: Any, extra: dict[str, Any], **fields: Any) -> str:
        data = {"model": "m", **extra, **fields}
        return parse(json.dumps(data).encode(), ignore).fingerprint

    resp = {"input": "Say hi", "store": False}
    chat_body = {"messages": [{"role": "user", "content": "Say hi"}]}
    assert fingerprint(parse_responses_request, resp, user="alice") != fingerprint(
        parse_responses_request, resp, user="bob"
    )
    assert fingerprint(parse_responses_request, resp, metadata={"e": "a@x"}) != fingerprint(
        parse_responses_request, resp, metadata={"e": "b@x"}
    )
    assert fingerprint(parse_chat_request, chat_body, user="alice") == fingerprint(
        parse_chat_request, chat_body, user="bob"
    )


def test_responses_that_quote_the_prompt_hit_only_on_exact_repeats() -> None:
    """vLLM's ``enable_response_messages`` returns the input messages: a paraphrase's answer
    would quote another prompt."""
    quoting = responses(enable_response_messages=True)
    assert quoting.quotes_prompt
    assert not responses().quotes_prompt
    assert chat(enable_response_messages=True).quotes_prompt
    spaced = responses(enable_response_messages=True, input="Say hi ")
    assert spaced.prompt == quoting.prompt and spaced.fingerprint != quoting.fingerprint
