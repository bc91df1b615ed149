"""``train-verifier`` end to end on a toy embedding: the split, the model reading the two
embeddings, the choice of their penalty on the calibrate part, and a byte-identical file on rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extproc.cache.guards.features import FEATURES
from extproc.cache.guards.learned import load_model
from extproc.cli import train_verifier
from extproc.cli.eval_report import Pair
from extproc.cli.main import main
from extproc.cli.train_verifier import EMBEDDING_L2, embeddings, pair_features, train
from extproc.errors import ConfigError
from tests.support.toy import DIM, toy_encode


def toy_pairs(n: int = 600) -> list[Pair]:
    """Pairs of toy vectors ("v:..." texts) all at cosine ~0.9, whose label is which coordinate
    differs (the first: paraphrase, the second: look-alike): the cosine cannot tell them apart,
    the embeddings' |u - v| can."""
    rng = np.random.default_rng(7)
    pairs = []
    for i in range(n):
        base = np.round(rng.uniform(0.2, 1.0, 4), 3)
        label = int(rng.uniform() < 0.5)
        other = base.copy()
        other[0 if label else 1] += 0.45
        a = "v:" + ",".join(f"{x:.3f}" for x in (*base, i / n))
        b = "v:" + ",".join(f"{x:.3f}" for x in (*other, i / n))
        pairs.append(Pair(a, b, label))
    return pairs


def test_training_reads_the_embeddings_and_reruns_to_the_same_file(tmp_path: Path) -> None:
    pairs = toy_pairs()
    model, report = train(
        pairs, (toy_encode, DIM), 0.0, tmp_path / "one", source="toy", embedding_model="toy"
    )
    assert (
        model.embedding_dim == DIM
        and model.embedding_model == "toy"
        and model.width == len(FEATURES) + 2 * DIM
    )
    assert report["train_pairs"] + report["calibrate_pairs"] + report["test_pairs"] <= len(pairs)
    assert any(f"{p:g} on the embeddings" in report["model"] for p in EMBEDDING_L2)
    # the cosine barely ranks these pairs; the embedding features do
    assert report["test_auc"] > report["test_cosine_auc"] + 0.2
    text_only, text_report = train(pairs, (toy_encode, DIM), 0.0, tmp_path / "two", with_embeddings=False)
    assert text_only.embedding_dim == 0 and text_report["test_auc"] < report["test_auc"]
    model.save(tmp_path / "one.json")
    again, _ = train(pairs, (toy_encode, DIM), 0.0, tmp_path / "three", source="toy", embedding_model="toy")
    again.save(tmp_path / "two.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    loaded = load_model(str(tmp_path / "one.json"))
    assert json.loads((tmp_path / "one.json").read_text())["embedding"]["dim"] == DIM
    assert loaded.width == model.width


def test_embeddings_are_encoded_once_in_a_fixed_order_and_kept(tmp_path: Path) -> None:
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return toy_encode(texts)

    pairs = toy_pairs(20)
    index, vectors, _ = embeddings(pairs, (encode, DIM), tmp_path)
    assert sorted(index, key=lambda t: (len(t), t)) == list(index) and len(vectors) == len(index) == 40
    again, kept, _ = embeddings(pairs, (encode, DIM), tmp_path)
    assert calls == [40] and again == index and np.array_equal(kept, vectors)  # the rerun encoded nothing
    embeddings(pairs, (encode, DIM), tmp_path, model_key="other-model|/models/x|f00")
    assert calls == [40, 40]  # another model's vectors are never reused


def test_a_config_serving_remote_embeddings_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Training would read the local model's vectors and name the endpoint's model."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "semantic_cache:\n  embedding_endpoint: http://127.0.0.1:9/v1/embeddings\n"
        "  embedding_endpoint_model: BAAI/bge-small-en-v1.5\n"
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"a": "x", "b": "y", "label": 1}\n')
    out = tmp_path / "model.json"
    assert main(["train-verifier", "--config", str(config), "--pairs", str(pairs), "--out", str(out)]) == 2
    assert "embeds with a local model" in capsys.readouterr().err and not out.exists()


def test_only_pairs_at_the_prefilter_are_used_and_too_few_is_refused(tmp_path: Path) -> None:
    pairs = toy_pairs()
    encode = (toy_encode, DIM)
    index, vectors, _ = embeddings(pairs, encode, tmp_path)
    cosines = np.array([float(vectors[index[p.a]] @ vectors[index[p.b]]) for p in pairs])
    floor = float(np.median(cosines))
    _, report = train(pairs, encode, floor, tmp_path)
    used = report["train_pairs"] + report["calibrate_pairs"] + report["test_pairs"]
    assert used == int(np.sum(cosines >= floor)) and report["min_similarity"] == floor
    with pytest.raises(ConfigError, match="a lower --min-similarity"):
        train(pairs, encode, 0.999, tmp_path)


def test_feature_rows_are_kept_only_while_the_feature_code_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs, encode = toy_pairs(20), (toy_encode, DIM)
    first, _, _ = pair_features(pairs, encode, 0.0, tmp_path)
    assert len(list(tmp_path.glob("semantic-cache-features-*.npy"))) == 1
    pair_features(pairs, encode, 0.0, tmp_path)  # same code: the kept rows
    assert len(list(tmp_path.glob("semantic-cache-features-*.npy"))) == 1
    # a rule or word list changed (new code): the rows are computed again, not reused stale
    monkeypatch.setattr(train_verifier, "feature_code", lambda: "changed")
    again, _, _ = pair_features(pairs, encode, 0.0, tmp_path)
    assert len(list(tmp_path.glob("semantic-cache-features-*.npy"))) == 2
    assert np.array_equal(first, again, equal_nan=True)


def test_extra_pairs_join_the_train_part_only_with_their_weight(tmp_path: Path) -> None:
    pairs = toy_pairs()
    encode = (toy_encode, DIM)
    _, plain = train(pairs, encode, 0.0, tmp_path)
    # the same kind of pairs with every label turned over: if they train, the model gets worse
    flipped = [Pair(p.a, p.b, 1 - p.label) for p in toy_pairs(300)]
    _, light = train(pairs, encode, 0.0, tmp_path, extra=flipped, extra_weight=0.1)
    _, heavy = train(pairs, encode, 0.0, tmp_path, extra=flipped, extra_weight=10.0)
    for report in (light, heavy):
        assert report["extra_pairs"] == 300
        # never calibrated or measured on: the held-out parts are the main file's alone
        assert (report["calibrate_pairs"], report["test_pairs"]) == (
            plain["calibrate_pairs"],
            plain["test_pairs"],
        )
    assert heavy["extra_weight"] == 10.0 and "extra_pairs" not in plain
    assert heavy["test_auc"] < light["test_auc"] - 0.1 < plain["test_auc"]
