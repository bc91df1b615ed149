"""An existing Milvus collection the cache cannot use is refused at connect, saying why."""

from __future__ import annotations

from typing import Any

from extproc.cache.backends.milvus.schema import REQUIRED_FIELDS, check_schema, index_problems
from extproc.config.milvus import MilvusSettings


def description(**lengths: int) -> dict[str, Any]:
    """A collection as describe_collection gives it, VARCHAR lengths overridden."""
    fields = []
    for name, (kind, length) in REQUIRED_FIELDS.items():
        params = {"max_length": lengths.get(name, length)} if length else {}
        fields.append(
            {"name": name, "type": kind, "params": params, "is_primary": name == "id",
             "is_partition_key": name == "partition_key"}
        )  # fmt: skip
    fields.append({"name": "embedding", "type": "FLOAT_VECTOR", "params": {"dim": 384}})
    return {"fields": fields}


def test_key_fields_too_short_for_the_hashes_are_refused() -> None:
    s = MilvusSettings()
    assert check_schema(description(), s, 384) == []
    problems = check_schema(description(id=32, fingerprint=16), s, 384)
    assert "field id holds 32 bytes; the cache's keys are 64" in problems
    assert "field fingerprint holds 16 bytes; the cache's keys are 64" in problems


def test_an_index_of_another_metric_is_refused() -> None:
    s = MilvusSettings()  # IP
    assert index_problems(("HNSW", "IP"), s) == []
    assert index_problems(("", ""), s) == []  # not known: nothing to say
    (problem,) = index_problems(("HNSW", "COSINE"), s)
    assert "uses metric COSINE, milvus.yaml says IP" in problem
