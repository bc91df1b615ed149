"""The learned verifier: its file format (JSON, no pickle, checked; version 1 still read),
determinism of features, fitting and scoring, the embedding features, and the model shipped in
the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extproc.cache.guards.features import FEATURES, embedding_features, finish, model_rows, text_part
from extproc.cache.guards.learned import (
    BUILTIN,
    SAME_WORDS,
    ConfidenceScorer,
    VerifierModel,
    load_model,
    parse_model,
)
from extproc.cache.guards.provenance import code_of, feature_code
from extproc.cli.train_verifier import fit_isotonic, fit_logistic, reliability
from extproc.embedding.base import EncodeFn
from extproc.errors import ConfigError


def synthetic(seed: int = 0, n: int = 400, dim: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows (text features, then 2 x ``dim`` embedding features) whose label depends on the
    cosine, one rule feature and (with ``dim``) the first product feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES) + 2 * dim))
    x[:, 0] = rng.uniform(0.8, 1.0, n)
    logit = 30 * (x[:, 0] - 0.9) - 2 * (x[:, FEATURES.index("opposites")] > 1)
    if dim:
        logit += 2 * x[:, len(FEATURES)]
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y


def fitted(seed: int = 0, dim: int = 0) -> VerifierModel:
    x, y = synthetic(seed, dim=dim)
    mean, scale, weights, bias = fit_logistic(x[:300], y[:300])
    unit = np.array([0.0, 1.0])
    model = VerifierModel(mean, scale, weights, float(bias), unit, unit, embedding_dim=dim)
    cx, cy = fit_isotonic(model.raw(x[300:]), y[300:])
    return VerifierModel(
        mean,
        scale,
        weights,
        float(bias),
        cx,
        cy,
        info={"seed": seed},
        embedding_dim=dim,
        embedding_model="toy" if dim else "",
    )


@pytest.mark.parametrize("dim", [0, 4])
def test_round_trip_through_the_file(tmp_path: Path, dim: int) -> None:
    model = fitted(dim=dim)
    path = tmp_path / "verifier.json"
    model.save(path)
    raw = json.loads(path.read_text())
    assert raw["format"] == "semantic-cache-verifier" and raw["version"] == 2
    assert raw["features"] == list(FEATURES) and raw["calibration"]["method"] == "isotonic"
    want = {"dim": 4, "features": ["product", "abs_difference"], "model": "toy"} if dim else None
    assert raw["embedding"] == (want or {"dim": 0, "features": [], "model": ""})
    assert len(raw["weights"]) == len(FEATURES) + 2 * dim == model.width
    loaded = load_model(str(path))
    x, _ = synthetic(1, 50, dim)
    assert np.allclose(loaded.probability(x), model.probability(x), atol=1e-6)
    assert loaded.info == {"seed": 0} and loaded.embedding_dim == dim


def test_a_version_1_file_still_loads_as_a_text_only_model() -> None:
    raw = fitted().to_json()
    del raw["embedding"]
    loaded = parse_model(raw | {"version": 1}, "old.json")
    x, _ = synthetic(1, 50)
    assert loaded.embedding_dim == 0 and np.allclose(loaded.probability(x), fitted().probability(x))


@pytest.mark.parametrize("dim", [0, 4])
def test_fitting_is_deterministic_and_the_file_is_byte_identical(tmp_path: Path, dim: int) -> None:
    fitted(dim=dim).save(tmp_path / "one.json")
    fitted(dim=dim).save(tmp_path / "two.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_isotonic_map_is_monotone_and_learns_the_rate() -> None:
    score = np.repeat(np.linspace(0, 1, 10), 100)
    labels = (np.tile(np.arange(100), 10) < np.repeat(np.arange(10) * 10, 100)).astype(float)
    x, y = fit_isotonic(score, labels)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)  # centred: no plateau
    assert np.interp(np.linspace(0, 1, 10)[5], x, y) == pytest.approx(0.5, abs=1e-9)
    table, ece = reliability(np.interp(score, x, y), labels)
    assert ece == pytest.approx(0.0, abs=1e-9) and sum(r["pairs"] for r in table) == 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "pickle"}, "not a verifier model"),
        ({"version": 3}, "version 3 is not supported; this release reads 1 and 2"),
        ({"embedding": {"dim": 2, "features": ["product"], "model": ""}}, "retrain it"),
        ({"embedding": {"dim": 4, "features": ["product", "abs_difference"]}}, "scale must be 29 numbers"),
        ({"embedding": {"dim": -1, "features": [], "model": ""}}, "embedding.dim must be"),
        ({"embedding": None}, 'needs "embedding"'),
        ({"features": ["cosine"]}, "retrain it with semantic-cache train-verifier"),
        ({"weights": [1.0]}, f"weights must be {len(FEATURES)} numbers"),
        ({"scale": [0.0] * len(FEATURES)}, "scale must be positive"),
        ({"bias": "x"}, "bias must be a number"),
        ({"calibration": {"method": "platt"}}, "calibration must be"),
        ({"calibration": {"method": "isotonic", "x": [0, 1], "y": [0.9, 0.1]}}, "non-decreasing"),
        ({"calibration": {"method": "isotonic", "x": [0, 1], "y": [0, 2]}}, "must be probabilities"),
    ],
)
def test_bad_files_are_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    raw = fitted().to_json() | change
    with pytest.raises(ConfigError, match=message):
        parse_model(raw, "m.json")


def test_missing_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("\x80\x04pickle")
    with pytest.raises(ConfigError, match="not JSON"):
        load_model(str(bad))


def test_features_are_deterministic_and_symmetric_in_count_features() -> None:
    q, c = "How do I turn on dark mode in Windows 11?", "How can I switch dark mode on in Windows 11?"
    one, two = finish(text_part(q, c, 0.93), None, None), finish(text_part(q, c, 0.93), None, None)
    assert one.tobytes() == two.tobytes() and one.shape == (len(FEATURES),)
    swapped = finish(text_part(c, q, 0.93), None, None)
    assert np.array_equal(one, swapped)
    far = finish(text_part("What is 15% of 200?", "What is 25% of 200?", 0.9), None, None)
    assert far[FEATURES.index("numbers_differ")] == 1.0
    same = finish(text_part("What is 15% of 200?", "what is fifteen percent of 200", 0.9), None, None)
    assert same[FEATURES.index("numbers_differ")] == 0.0


def test_embedding_features_are_symmetric_and_match_row_by_row() -> None:
    rng = np.random.default_rng(3)
    u, v = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    both = embedding_features(u, v)
    assert both.shape == (5, 12) and np.array_equal(both, embedding_features(v, u))
    assert np.array_equal(both[2], embedding_features(u[2], v[2]))  # one pair = one row of many
    assert np.array_equal(both[:, :6], u * v) and np.array_equal(both[:, 6:], np.abs(u - v))
    text = rng.normal(size=(5, len(FEATURES)))
    assert model_rows(text, None, None) is text
    assert np.array_equal(model_rows(text, u, v), np.hstack([text, both]))


async def test_a_model_reading_embeddings_uses_the_given_vectors_or_embeds_the_prompt() -> None:
    model = fitted(dim=4)
    q, c = "How do I reverse a list in Python?", "How can I reverse a list in Python?"
    u, v = np.array([0.5, 0.5, 0.5, 0.5]), np.array([0.9, 0.1, 0.3, 0.3])
    row = model_rows(finish(text_part(q, c, 0.9), None, None)[None, :], u[None, :], v[None, :])
    want = float(model.probability(row)[0])
    embedded: list[str] = []

    async def embed(text: str) -> np.ndarray:
        embedded.append(text)
        return {q: u, c: v}[text]

    scorer = ConfidenceScorer(model, None, embed)
    assert await scorer.score(q, c, 0.9, query_vector=u, candidate_vector=v) == want and not embedded
    # a backend that sent no stored vector back (an empty one): the prompt is embedded instead
    empty = np.empty(0, dtype=np.float32)
    assert await scorer.score(q, c, 0.9, query_vector=u, candidate_vector=empty) == want and embedded == [c]
    with pytest.raises(ValueError, match="4-d embeddings"):
        await ConfidenceScorer(model, None).score(q, c, 0.9)


async def test_the_shipped_model_loads_and_separates_a_look_alike(model: tuple[EncodeFn, int]) -> None:
    shipped = load_model(BUILTIN)
    encode, dim = model
    assert shipped.embedding_dim == dim and shipped.embedding_model == "all-MiniLM-L6-v2"

    async def embed(text: str) -> np.ndarray:
        return encode([text])[0]

    scorer = ConfidenceScorer(shipped, None, embed)
    pairs = [
        ("How do I reverse a list in Python?", "How can I reverse a list in Python?"),
        ("How do I turn on dark mode in Windows 11?", "How do I turn off dark mode in Windows 11?"),
    ]
    paraphrase, look_alike = [
        await scorer.score(q, c, float(encode([q])[0] @ encode([c])[0])) for q, c in pairs
    ]
    assert 0.0 <= look_alike < paraphrase <= 1.0
    q, c = pairs[0]
    assert paraphrase == await scorer.score(q, c, float(encode([q])[0] @ encode([c])[0]))


async def test_the_same_words_written_differently_are_the_same_question() -> None:
    """ "15%" = "15 percent" = "fifteen percent": certain, whatever the model would say; a symbol
    the words drop ("C++" / "C") or a different number still leaves it to the model."""
    n = len(FEATURES)  # a model that says "different" to everything
    model = VerifierModel(
        mean=np.zeros(n),
        scale=np.ones(n),
        weights=np.zeros(n),
        bias=-5.0,
        calib_x=np.array([0.0, 1.0]),
        calib_y=np.array([0.0, 1.0]),
    )
    scorer = ConfidenceScorer(model, None)
    assert await scorer.score("What is 15% of 200?", "what is fifteen percent of 200", 0.74) == SAME_WORDS
    assert await scorer.score("5 kg in pounds?", "five kilograms in pounds", 0.9) == SAME_WORDS
    assert await scorer.score("C++ tips?", "C tips?", 0.9) < 0.5
    assert await scorer.score("What is 15% of 200?", "What is 16% of 200?", 0.95) < 0.5


@pytest.mark.parametrize("text_only", [False, True])
def test_the_shipped_models_were_trained_on_the_text_features_this_version_computes(
    text_only: bool,
) -> None:
    """A rule or word list changed since the shipped files were fitted: their confidences are no
    longer calibrated for the features served. Retrain both (docs/correctness.md, Training)."""
    shipped = load_model(BUILTIN, text_only=text_only)
    assert shipped.info.get("text_features_code") == feature_code(), (
        "the text-feature code changed since the shipped verifier was trained: run the training "
        "commands of docs/correctness.md#training-reproducible and ship both files"
    )


def test_the_feature_code_ignores_comments_and_docstrings_only() -> None:
    plain = "X = 1\n\ndef f(a):\n    return a + X\n"
    documented = (
        '"""Module."""\n# why\nX = 1\n"""X is one."""\n\ndef f(a):\n    """Doc."""\n    return a + X  # sum\n'
    )
    changed = "X = 2\n\ndef f(a):\n    return a + X\n"
    code = [code_of(text) for text in (plain, documented, changed)]
    assert code[0] == code[1] != code[2]


def test_a_model_trained_on_other_feature_code_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "verifier.json"
    fitted().save(path)
    with caplog.at_level("WARNING", logger="extproc.cache.guards.learned"):
        load_model(str(path))  # no record of the code: nothing to compare
        raw = json.loads(path.read_text())
        raw["info"]["text_features_code"] = feature_code()
        path.write_text(json.dumps(raw))
        load_model(str(path))
        assert not caplog.records
        raw["info"]["text_features_code"] = "0123456789abcdef"
        path.write_text(json.dumps(raw))
        assert load_model(str(path)).info["text_features_code"] == "0123456789abcdef"
    (record,) = caplog.records
    assert "trained on text features computed by other code" in record.getMessage()
    assert "retrain it with semantic-cache train-verifier" in record.getMessage()
