"""The Milvus collection schema the cache needs, and the check of an existing collection."""

from __future__ import annotations

from typing import Any

from extproc.config.milvus import MilvusSettings

KEY_LEN = 64  # sha256 hex
# name -> (DataType name, max_length); the vector field is added from the settings.
REQUIRED_FIELDS: dict[str, tuple[str, int | None]] = {
    "id": ("VARCHAR", KEY_LEN),  # the exact-match key: a repeat replaces its entry
    "partition_key": ("VARCHAR", KEY_LEN),  # H(model, scope, fingerprint): Milvus partition key
    "model": ("VARCHAR", 512),
    "scope": ("VARCHAR", 512),
    "fingerprint": ("VARCHAR", KEY_LEN),
    "prompt": ("VARCHAR", 65_535),
    "response": ("VARCHAR", 65_535),
    "created_at": ("INT64", None),  # unix ms
    "expires_at": ("INT64", None),  # unix ms
}


EMBEDDING_MARK = "embedding model: "
"""How the vector field's description names the model its vectors came from."""


def build_schema(client: Any, s: MilvusSettings, dim: int, embedding: str = "") -> tuple[Any, Any]:
    """(schema, index params) for a new collection; its vector field names ``embedding``."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=s.description)
    for name, (kind, max_length) in REQUIRED_FIELDS.items():
        kwargs: dict[str, Any] = {}
        if max_length:
            kwargs["max_length"] = max_length
        schema.add_field(
            name,
            getattr(DataType, kind),
            is_primary=name == "id",
            is_partition_key=name == "partition_key",
            **kwargs,
        )
    described = {"description": (EMBEDDING_MARK + embedding)[:512]} if embedding else {}
    schema.add_field(s.vector_field, DataType.FLOAT_VECTOR, dim=dim, **described)
    index = client.prepare_index_params()
    index.add_index(
        field_name=s.vector_field,
        index_type=s.index_type,
        metric_type=s.metric_type,
        params=dict(s.index_params),
    )
    return schema, index


def check_schema(description: dict[str, Any], s: MilvusSettings, dim: int, embedding: str = "") -> list[str]:
    """Problems that make an existing collection unusable (empty when it fits).

    ``embedding``: the model this process embeds with; a collection whose vector field names
    another holds vectors of another space (same dimension or not): a search there compares
    unrelated vectors. A collection that names none (made before it was recorded) is taken."""
    fields = {f["name"]: f for f in description.get("fields", [])}
    problems: list[str] = []
    for name, (kind, _) in REQUIRED_FIELDS.items():
        field = fields.get(name)
        if field is None:
            problems.append(f"missing field {name} ({kind})")
        elif getattr(field.get("type"), "name", str(field.get("type"))) != kind:
            problems.append(
                f"field {name} is {getattr(field['type'], 'name', field['type'])}, expected {kind}"
            )
    for name in ("id", "partition_key", "fingerprint"):  # hashes: a shorter field refuses every store
        length = ((fields.get(name) or {}).get("params") or {}).get("max_length")
        if str(length).isdigit() and int(length) < KEY_LEN:
            problems.append(f"field {name} holds {length} bytes; the cache's keys are {KEY_LEN}")
    if "id" in fields and not fields["id"].get("is_primary"):
        problems.append("field id is not the primary key")
    if "partition_key" in fields and not fields["partition_key"].get("is_partition_key"):
        problems.append("field partition_key is not the partition key")
    vector = fields.get(s.vector_field)
    if vector is None:
        problems.append(f"missing vector field {s.vector_field} (FLOAT_VECTOR, dim {dim})")
    else:
        have = int(vector.get("params", {}).get("dim", 0))
        if have != dim:
            problems.append(
                f"vector field {s.vector_field} has dimension {have}, the embedding model produces {dim}"
            )
        recorded = str(vector.get("description") or "")
        if embedding and recorded.startswith(EMBEDDING_MARK) and recorded[len(EMBEDDING_MARK) :] != embedding:
            problems.append(
                f"its vectors come from the embedding model {recorded[len(EMBEDDING_MARK) :]!r}, this "
                f"process embeds with {embedding!r} (to keep the answers: admin export, then admin import "
                "--reembed into the new collection)"
            )
    return problems


def vector_index(client: Any, s: MilvusSettings) -> tuple[str, str]:
    """(index type, metric) of the collection's vector index as Milvus has it ("" when unknown)."""
    for name in client.list_indexes(s.collection, field_name=s.vector_field) or ():
        index = client.describe_index(s.collection, name) or {}
        return str(index.get("index_type", "")), str(index.get("metric_type", ""))
    return "", ""


def index_problems(index: tuple[str, str], s: MilvusSettings) -> list[str]:
    """A vector index searched with another metric refuses every search ("metric type not
    match"): the collection would be ready, every semantic lookup refused."""
    _, metric = index
    if metric and metric.upper() != s.metric_type.upper():
        return [
            f"the index of {s.vector_field} uses metric {metric}, milvus.yaml says {s.metric_type} "
            f"(set collection.vector_field.metric_type: {metric}, or use a new collection)"
        ]
    return []


def varchar_limits(description: dict[str, Any]) -> dict[str, int]:
    """VARCHAR field -> max_length (bytes) of an existing collection, defaults where it says none.

    A collection made by another tool may have shorter fields than the cache creates; rows are
    checked against what the collection really holds, so a long value is skipped, not sent.
    """
    limits = {name: n for name, (_, n) in REQUIRED_FIELDS.items() if n}
    for field in description.get("fields", []):
        length = (field.get("params") or {}).get("max_length")
        if field.get("name") in limits and str(length).isdigit():
            limits[field["name"]] = int(length)
    return limits


class SchemaProblem(Exception):
    """The collection is missing or unusable; ``state`` says which."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state
