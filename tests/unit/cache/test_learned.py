"""The learned verifier: its file format (JSON, no pickle, checked), determinism of features,
fitting and scoring, and the model shipped in the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extproc.cache.guards.features import FEATURES, finish, text_part
from extproc.cache.guards.learned import BUILTIN, ConfidenceScorer, VerifierModel, load_model, parse_model
from extproc.cli.train_verifier import fit_isotonic, fit_logistic, reliability
from extproc.errors import ConfigError


def synthetic(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label depends on the cosine and one rule feature."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, 0] = rng.uniform(0.8, 1.0, n)
    logit = 30 * (x[:, 0] - 0.9) - 2 * (x[:, FEATURES.index("opposites")] > 1)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y


def fitted(seed: int = 0) -> VerifierModel:
    x, y = synthetic(seed)
    mean, scale, weights, bias = fit_logistic(x[:300], y[:300])
    model = VerifierModel(mean, scale, weights, float(bias), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    cx, cy = fit_isotonic(model.raw(x[300:]), y[300:])
    return VerifierModel(mean, scale, weights, float(bias), cx, cy, info={"seed": seed})


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    model = fitted()
    path = tmp_path / "verifier.json"
    model.save(path)
    raw = json.loads(path.read_text())
    assert raw["format"] == "semantic-cache-verifier" and raw["version"] == 1
    assert raw["features"] == list(FEATURES) and raw["calibration"]["method"] == "isotonic"
    loaded = load_model(str(path))
    x, _ = synthetic(1, 50)
    assert np.allclose(loaded.probability(x), model.probability(x), atol=1e-6)
    assert loaded.info == {"seed": 0}


def test_fitting_is_deterministic_and_the_file_is_byte_identical(tmp_path: Path) -> None:
    fitted().save(tmp_path / "one.json")
    fitted().save(tmp_path / "two.json")
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_isotonic_map_is_monotone_and_learns_the_rate() -> None:
    score = np.repeat(np.linspace(0, 1, 10), 100)
    labels = (np.tile(np.arange(100), 10) < np.repeat(np.arange(10) * 10, 100)).astype(float)
    x, y = fit_isotonic(score, labels)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
    assert np.interp(np.linspace(0, 1, 10)[5], x, y) == pytest.approx(0.5, abs=1e-9)
    table, ece = reliability(np.interp(score, x, y), labels)
    assert ece == pytest.approx(0.0, abs=1e-9) and sum(r["pairs"] for r in table) == 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "pickle"}, "not a verifier model"),
        ({"version": 2}, "version 2 is not supported"),
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


async def test_the_shipped_model_loads_and_separates_a_look_alike() -> None:
    scorer = ConfidenceScorer(load_model(BUILTIN), None)
    paraphrase = await scorer.score(
        "How do I reverse a list in Python?", "How can I reverse a list in Python?", 0.97
    )
    look_alike = await scorer.score(
        "How do I turn on dark mode in Windows 11?", "How do I turn off dark mode in Windows 11?", 0.97
    )
    assert 0.0 <= look_alike < paraphrase <= 1.0
    assert paraphrase == await scorer.score(
        "How do I reverse a list in Python?", "How can I reverse a list in Python?", 0.97
    )
