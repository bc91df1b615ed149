"""The export / import line format and the streaming line reader (no server, no model)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from extproc.admin.importer import ImportReport, read_lines
from extproc.admin.transfer import MAX_LINE_BYTES, LineError, entry_to_line, line_to_entry
from extproc.cache.schema import CacheEntry
from extproc.protocol.completions import parse_json_text_completion
from extproc.protocol.openai import exact_key, partition_key, with_revision
from extproc.protocol.responses import parse_json_response

DIM = 16


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    """A random unit float32 vector."""
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def entry(prompt: str = "What is the capital of France?", seed: int = 1, **changes: Any) -> CacheEntry:
    """A consistent entry (keys derived from its identity)."""
    model, scope, fp = changes.pop("model", "m"), changes.pop("scope", "global"), changes.pop("fp", "f" * 64)
    now = time.time()
    e = CacheEntry(
        id=exact_key(model, scope, fp, prompt),
        model=model,
        scope=scope,
        fingerprint=fp,
        partition=partition_key(model, scope, fp),
        exact_key=exact_key(model, scope, fp, prompt),
        prompt=prompt,
        response={
            "object": "chat.completion",
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}
            ],
        },
        vector=unit(seed),
        created_at=now - 10,
        expires_at=now + 3600,
    )
    for k, v in changes.items():
        setattr(e, k, v)
    return e


def edited(line: str, **changes: Any) -> str:
    """The line with some fields replaced (None removes a field)."""
    data = json.loads(line)
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return json.dumps(data)


def test_round_trip_is_exact() -> None:
    original = entry()
    line = entry_to_line(original)
    assert "\n" not in line
    back = line_to_entry(line, DIM, time.time())
    assert np.array_equal(back.vector, original.vector)  # 9 significant digits: float32 exact
    for name in ("id", "model", "scope", "fingerprint", "partition", "exact_key", "prompt", "response"):
        assert getattr(back, name) == getattr(original, name)
    assert back.created_at == pytest.approx(original.created_at, abs=1e-3)
    assert back.expires_at == pytest.approx(original.expires_at, abs=1e-3)
    never = line_to_entry(entry_to_line(entry(expires_at=0.0)), DIM, time.time())
    assert never.expires_at == 0.0


def test_revision_changes_the_partition_and_key() -> None:
    fp = "a" * 64
    assert with_revision(fp, "") == fp
    r1, r2 = with_revision(fp, "r1"), with_revision(fp, "r2")
    assert len({fp, r1, r2}) == 3 and len(r1) == 64
    assert partition_key("m", "global", r1) != partition_key("m", "global", r2)
    assert exact_key("m", "global", r1, "p") != exact_key("m", "global", fp, "p")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda line: line[:-5], "not valid JSON"),
        (lambda line: "[1, 2]", "must be a JSON object"),
        (lambda line: edited(line, extra=1), "unknown field(s) extra"),
        (lambda line: edited(line, v=2), "format version 2 is not supported"),
        (lambda line: edited(line, model=""), "model must be a non-empty string"),
        (lambda line: edited(line, prompt="What is the capital of France?  "), "prompt is not normalized"),
        (lambda line: edited(line, prompt="Another question entirely"), "exact_key does not match"),
        (lambda line: edited(line, scope="tenant-b"), "partition does not match"),
        (lambda line: edited(line, vector=unit(2, 8).tolist()), "vector has 8 dimensions but"),
        (lambda line: edited(line, vector=[0.5] * DIM), "vector is not unit length"),
        (lambda line: edited(line, vector=["x"] * DIM), "vector must contain only numbers"),
        (lambda line: edited(line, vector=None), "vector is missing"),
        (lambda line: edited(line, created_at="yesterday"), "created_at must be a number"),
        # Values past a float's range and nesting past the parser's: one line refused, not a 500.
        (lambda line: edited(line, created_at=10**400), "created_at must be a number"),
        (lambda line: edited(line, vector=[10**400] + [0] * (DIM - 1)), "numbers of a float's range"),
        (lambda line: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (lambda line: edited(line, expires_at=time.time() - 60), "expired"),
        (
            lambda line: edited(
                line,
                response={
                    "choices": [{"index": 0, "message": {"content": "Par"}, "finish_reason": "length"}]
                },
            ),
            "response is not a complete chat.completion (truncated)",
        ),
        (lambda line: edited(line, response="Paris"), "response is not a complete chat.completion"),
    ],
)
def test_bad_lines_are_rejected_with_a_reason(mutate: Any, reason: str) -> None:
    with pytest.raises(LineError) as info:
        line_to_entry(mutate(entry_to_line(entry())), DIM, time.time())
    assert reason in str(info.value)


def test_reembed_accepts_any_vector() -> None:
    line = edited(entry_to_line(entry()), vector=unit(3, 768).tolist())
    parsed = line_to_entry(line, DIM, time.time(), reembed=True)
    assert parsed.vector.size == 0  # the importer embeds the prompt
    with pytest.raises(LineError, match="--reembed"):
        line_to_entry(line, DIM, time.time())


def test_a_line_names_the_model_its_vector_came_from() -> None:
    """Another model of the same dimension: the vector fits, and means nothing here."""
    line = entry_to_line(entry(), "bge-small-en-v1.5")
    assert json.loads(line)["embedding"] == "bge-small-en-v1.5"
    assert line_to_entry(line, DIM, time.time(), embedding="bge-small-en-v1.5").vector.size == DIM
    with pytest.raises(LineError, match=r"from the embedding model 'bge-small-en-v1\.5'.*--reembed"):
        line_to_entry(line, DIM, time.time(), embedding="all-MiniLM-L6-v2")
    assert line_to_entry(line, DIM, time.time(), reembed=True, embedding="all-MiniLM-L6-v2").vector.size == 0
    unnamed = entry_to_line(entry())  # an export of an earlier version: taken as this model's
    assert line_to_entry(unnamed, DIM, time.time(), embedding="all-MiniLM-L6-v2").vector.size == DIM


def test_import_never_outlives_the_caches_ttl() -> None:
    now = time.time()
    forever = entry_to_line(entry(expires_at=0.0))  # the planted "expires_at: 0"
    assert line_to_entry(forever, DIM, now, ttl_seconds=3600).expires_at == now + 3600
    assert (
        line_to_entry(edited(forever, expires_at=None), DIM, now, ttl_seconds=3600).expires_at == now + 3600
    )
    late = entry_to_line(entry(expires_at=now + 10 * 86400))
    assert line_to_entry(late, DIM, now, ttl_seconds=3600).expires_at == now + 3600
    soon = entry_to_line(entry(expires_at=now + 60))
    assert line_to_entry(soon, DIM, now, ttl_seconds=3600).expires_at == pytest.approx(now + 60, abs=1e-3)
    assert line_to_entry(forever, DIM, now, ttl_seconds=0).expires_at == 0.0  # the cache keeps forever too
    future = entry_to_line(entry(created_at=now + 86400))
    assert line_to_entry(future, DIM, now, ttl_seconds=3600).created_at == now


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """An async byte stream."""
    for part in parts:
        yield part


async def test_read_lines_numbers_blank_split_and_overlong_lines() -> None:
    report = ImportReport()
    body = [b'{"a":1}\n\n{"b"', b":2}\n", b"x" * (MAX_LINE_BYTES + 10), b"yy\n", b'{"c":3}']
    got = [(n, line) async for n, line in read_lines(chunks(*body), report)]
    assert got == [(1, b'{"a":1}'), (3, b'{"b":2}'), (5, b'{"c":3}')]
    assert report.rejections == [{"line": 4, "reason": f"line longer than {MAX_LINE_BYTES} bytes"}]


TEXT_COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "text": " world", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "status": "completed",
    "model": "m",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        }
    ],
}


@pytest.mark.parametrize(
    "body",
    [
        parse_json_text_completion(json.dumps(TEXT_COMPLETION).encode()),
        parse_json_response(json.dumps(RESPONSE).encode()),
        # An upstream that leaves out "object": told apart by the answer's shape.
        parse_json_text_completion(
            json.dumps({k: v for k, v in TEXT_COMPLETION.items() if k != "object"}).encode()
        ),
    ],
    ids=["text_completion", "response", "text_completion-without-object"],
)
def test_every_endpoints_stored_answer_reads_back(body: dict[str, Any]) -> None:
    original = entry(response=body)
    back = line_to_entry(entry_to_line(original), DIM, time.time())
    assert back.response == body


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            TEXT_COMPLETION | {"choices": [{"index": 0, "text": " wor", "finish_reason": "length"}]},
            "response is not a complete text_completion (truncated)",
        ),
        (RESPONSE | {"status": "in_progress"}, "response is not a complete response (incomplete)"),
        (RESPONSE | {"output": []}, "response is not a complete response (no_choices)"),
    ],
)
def test_unstorable_answers_of_other_endpoints_are_refused(response: dict[str, Any], reason: str) -> None:
    with pytest.raises(LineError) as info:
        line_to_entry(entry_to_line(entry(response=response)), DIM, time.time())
    assert reason in str(info.value)


def test_sizes_are_left_to_the_backend() -> None:
    # What the memory backend stores: a prompt up to max_request_bytes, a scope naming a 256-byte
    # tenant header that is not UTF-8 (~525 bytes), a long model name; Milvus refuses per entry.
    prompt = "Summarise this document: " + " ".join(["lorem ipsum dolor sit amet"] * 3000)
    big = entry(prompt, scope="header-bytes:" + "ff" * 256, model="org/" + "m" * 600)
    assert len(prompt.encode()) > 65_535
    back = line_to_entry(entry_to_line(big), DIM, time.time())
    assert (back.prompt, back.scope, back.model) == (big.prompt, big.scope, big.model)


def test_a_lone_surrogate_exports_as_valid_utf8_and_reads_back() -> None:
    # The data plane caches a JSON "\ud800" as it is; the export line must stay UTF-8.
    odd = entry(
        "a\ud800b",
        response={"choices": [{"index": 0, "message": {"content": "x\udc00"}, "finish_reason": "stop"}]},
    )
    line = entry_to_line(odd)
    line.encode("utf-8")
    back = line_to_entry(line, DIM, time.time())
    assert (back.prompt, back.response, back.exact_key) == (odd.prompt, odd.response, odd.exact_key)


def test_an_entry_keeps_its_millisecond_through_export_and_import() -> None:
    """Ids count whole milliseconds (round(t * 1000)); the export wrote round(t, 3), which differs
    for about 1 time in 7,700: such an entry got another x-semantic-cache-entry id after a move."""
    created = 1701316799.1555  # round(t, 3): .155; round(t * 1000): ...156
    moved = line_to_entry(entry_to_line(entry(created_at=created, expires_at=0.0)), DIM, created + 1)
    assert round(moved.created_at * 1000) == round(created * 1000)
