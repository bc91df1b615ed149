"""processor.extraVolumes / extraVolumeMounts: a model folder (and its ONNX export) mounted into the
processor, as docs/embeddings.md shows it."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from .helpers import ROOT, Doc, deep_merge, helm_render, render, validate_object


def documented_values() -> Doc:
    """The values block of docs/embeddings.md's "A model folder in the Helm chart"."""
    text = (ROOT / "docs" / "embeddings.md").read_text()
    blocks = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)^\s*```", text, flags=re.S | re.M)]
    (block,) = [b for b in blocks if "extraVolumes" in b]
    values: Doc = yaml.safe_load(block)
    return values


def test_the_documented_model_volume_renders_into_the_processor_only(chart: Path) -> None:
    values = documented_values()
    r = render(chart, values)
    for doc in r.docs:
        validate_object(doc)
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "embedding-models", "readOnly": True}
    assert {"config", "milvus-tls", "envoy", "drain", "tmp"} <= set(volumes)  # the chart's own stay
    processor = {m["name"]: m for m in r.container("processor")["volumeMounts"]}
    assert processor["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert "models" not in {m["name"] for m in r.container("envoy")["volumeMounts"]}
    assert r.env("processor")["SEMANTIC_CACHE_MODEL_CACHE"] == "/models/onnx-cache"
    config = yaml.safe_load(r.data("semantic-router-config", "config.yaml"))
    assert config["semantic_cache"]["embedding_model"] == "/models/paraphrase-multilingual-MiniLM-L12-v2"


@pytest.mark.parametrize(
    "values",
    [
        {"processor": {"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}},  # would shadow the chart's
        {"processor": {"extraVolumeMounts": [{"name": "models"}]}},  # no mountPath
    ],
)
def test_schema_refuses_clashing_or_incomplete_volumes(chart: Path, values: Doc) -> None:
    with pytest.raises(helm.HelmValuesError):
        helm_render(chart, deep_merge(documented_values(), values))
