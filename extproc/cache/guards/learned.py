"""The learned verifier: P(same meaning) of a (query, candidate) pair, calibrated.

A logistic model over :data:`extproc.cache.guards.features.FEATURES` and (format version 2)
the two prompts' embeddings (:func:`~extproc.cache.guards.features.embedding_features`), then a
monotone calibration map (isotonic, fitted on pairs the model was not trained on) from its raw
score to the probability the pair is a paraphrase.  The fitted model is a JSON file (numbers
only, read with ``json``: never pickle); ``semantic-cache train-verifier`` writes one and the
package ships one (``verifier.json``) trained on Quora question pairs.  Version 1 files (text
features only) still load.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from extproc.cache.guards.features import EMBEDDING_FEATURES, FEATURES, finish, model_rows, text_part
from extproc.cache.guards.lexical import canonical
from extproc.cache.guards.provenance import feature_code
from extproc.config.env import resolve_relative
from extproc.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from extproc.cache.guards.content import WordVectorCache

log = logging.getLogger(__name__)

FORMAT = "semantic-cache-verifier"
VERSION = 2
"""What :meth:`VerifierModel.save` writes; :data:`READS` lists what :func:`parse_model` accepts."""
READS = (1, 2)
SAME_WORDS = 0.98
"""The confidence of two prompts with the same canonical words (case, spacing, quiet marks and
the spelling of numbers, units and symbols aside: "15%" / "fifteen percent"): the same question.
On qqp-dev, 114 of the 122 such pairs (not identical ignoring case) are labelled duplicates,
and the other 8 are the same question too ("the purpose of life ?" / "…life?")."""
BUILTIN = "builtin"
"""The ``verifier_model`` value naming the model shipped in the package."""
BUILTIN_FILES = {"embeddings": "verifier.json", "text": "verifier-text.json"}
"""The shipped models: one reading all-MiniLM-L6-v2's embeddings too, and one of the text
features alone (trained on the same pairs) for a cache configured with another embedding model."""


@dataclass(frozen=True)
class VerifierModel:
    """A fitted verifier: standardisation, logistic weights and the calibration map."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    calib_x: np.ndarray
    """Raw logistic probabilities (increasing) ..."""
    calib_y: np.ndarray
    """... and the calibrated probability at each (non-decreasing); linear in between."""
    info: dict[str, Any] = field(default_factory=dict)
    """How it was trained (data, split, held-out metrics): carried along, never used to score."""
    embedding_dim: int = 0
    """Size of the sentence embeddings it reads (0: text features only)."""
    embedding_model: str = ""
    """The embedding model those came from (its vectors mean nothing to another model)."""

    @property
    def width(self) -> int:
        """Length of the rows it reads: the text features, then 2 x ``embedding_dim``."""
        return len(FEATURES) + len(EMBEDDING_FEATURES) * self.embedding_dim

    def raw(self, rows: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities of rows of :func:`~extproc.cache.guards.features.model_rows`."""
        z = ((rows - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))

    def probability(self, rows: np.ndarray) -> np.ndarray:
        """Calibrated P(same meaning) of feature rows."""
        return np.interp(self.raw(rows), self.calib_x, self.calib_y)

    def to_json(self) -> dict[str, Any]:
        """The file's content (floats rounded to 8 significant digits: the file is stable text)."""

        def nums(a: np.ndarray) -> list[float]:
            return [float(f"{v:.8g}") for v in a]

        return {
            "format": FORMAT,
            "version": VERSION,
            "features": list(FEATURES),
            "embedding": {
                "dim": self.embedding_dim,
                "features": list(EMBEDDING_FEATURES) if self.embedding_dim else [],
                "model": self.embedding_model,
            },
            "mean": nums(self.mean),
            "scale": nums(self.scale),
            "weights": nums(self.weights),
            "bias": float(f"{self.bias:.8g}"),
            "calibration": {"method": "isotonic", "x": nums(self.calib_x), "y": nums(self.calib_y)},
            "info": self.info,
        }

    def save(self, path: str | Path) -> None:
        """Write the model as JSON."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


def parse_model(raw: Any, where: str) -> VerifierModel:
    """A :class:`VerifierModel` from a file's JSON, checked field by field."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f'{where}: not a verifier model (needs "format": "{FORMAT}")')
    version = raw.get("version")
    if version not in READS or isinstance(version, bool):
        raise ConfigError(
            f"{where}: version {version!r} is not supported; this release reads "
            + " and ".join(map(str, READS))
        )
    if raw.get("features") != list(FEATURES):
        raise ConfigError(
            f"{where}: trained on features {raw.get('features')!r}, this release computes {list(FEATURES)}; "
            "retrain it with semantic-cache train-verifier"
        )
    dim, embedding_model = 0, ""
    if version >= 2:
        embedding = raw.get("embedding")
        if not isinstance(embedding, dict):
            raise ConfigError(f'{where}: needs "embedding": {{"dim", "features", "model"}}')
        dim, embedding_model = embedding.get("dim"), embedding.get("model", "")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ConfigError(f"{where}: embedding.dim must be a whole number >= 0")
        if not isinstance(embedding_model, str):
            raise ConfigError(f"{where}: embedding.model must be a string")
        if embedding.get("features") != (list(EMBEDDING_FEATURES) if dim else []):
            raise ConfigError(
                f"{where}: embedding features {embedding.get('features')!r}, this release computes "
                f"{list(EMBEDDING_FEATURES)}; retrain it with semantic-cache train-verifier"
            )
    n = len(FEATURES) + len(EMBEDDING_FEATURES) * dim

    def vector(value: Any, name: str, size: int | None = None) -> np.ndarray:
        ok = isinstance(value, list) and all(isinstance(v, int | float) and math.isfinite(v) for v in value)
        if not ok or (size is not None and len(value) != size):
            want = f"{size} numbers" if size is not None else "a list of numbers"
            raise ConfigError(f"{where}: {name} must be {want}")
        return np.asarray(value, dtype=np.float64)

    calibration = raw.get("calibration")
    if not isinstance(calibration, dict) or calibration.get("method") != "isotonic":
        raise ConfigError(f'{where}: calibration must be {{"method": "isotonic", "x": [...], "y": [...]}}')
    x, y = vector(calibration.get("x"), "calibration.x"), vector(calibration.get("y"), "calibration.y")
    if len(x) < 2 or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise ConfigError(f"{where}: calibration x and y must be as long as each other and non-decreasing")
    if np.any((y < 0) | (y > 1)):
        raise ConfigError(f"{where}: calibration y must be probabilities")
    scale = vector(raw.get("scale"), "scale", n)
    if np.any(scale <= 0):
        raise ConfigError(f"{where}: scale must be positive")
    bias = raw.get("bias")
    if not isinstance(bias, int | float) or not math.isfinite(bias):
        raise ConfigError(f"{where}: bias must be a number")
    info = raw.get("info", {})
    return VerifierModel(
        mean=vector(raw.get("mean"), "mean", n),
        scale=scale,
        weights=vector(raw.get("weights"), "weights", n),
        bias=float(bias),
        calib_x=x,
        calib_y=y,
        info=info if isinstance(info, dict) else {},
        embedding_dim=dim,
        embedding_model=embedding_model,
    )


def load_model(spec: str, config_source: str = "", text_only: bool = False) -> VerifierModel:
    """The model at path ``spec`` (relative: to the working directory, else to the config file's
    folder ``config_source``), or the shipped one for ``"builtin"`` (``text_only``: the one that
    reads no embeddings)."""
    if spec == BUILTIN:
        name = BUILTIN_FILES["text" if text_only else "embeddings"]
        text = resources.files("extproc.cache.guards").joinpath(name).read_text(encoding="utf-8")
        where = f"the built-in verifier model {name}"
    else:
        where = f"semantic_cache.verifier_model {spec!r}"
        path = resolve_relative(spec, config_source, "verifier_model")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: not a model file from train-verifier (not UTF-8 text)") from exc
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not JSON ({exc})") from exc
    model = parse_model(raw, where)
    trained_on, running = model.info.get("text_features_code"), feature_code()
    if trained_on and running and trained_on != running:
        # Still usable (same feature names), but some rule or word list now gives other values
        # than it learned from: its confidences drift from their calibration.
        log.warning(
            "%s was trained on text features computed by other code than this version's (%s, now %s): "
            "its confidences may be off; retrain it with semantic-cache train-verifier",
            where,
            trained_on,
            running,
        )
    return model


class ConfidenceScorer:
    """Scores a candidate that passed the hard rules: the confidence the cache compares with
    ``min_confidence`` and reports on every semantic hit."""

    name = "confidence"

    def __init__(
        self,
        model: VerifierModel,
        words: WordVectorCache | None,
        embed: Callable[[str], Awaitable[np.ndarray]] | None = None,
    ) -> None:
        self.model = model
        self.words = words
        """Word vectors of prompts (shared with the content guard); None: text alone decides."""
        self.embed = embed
        """Embeds a prompt whose vector the caller lacks (a model that reads embeddings needs both)."""
        text = json.dumps(model.to_json(), sort_keys=True)
        self.identity = "verifier-" + hashlib.sha256(text.encode()).hexdigest()[:16]
        """Names the fitted model: its confidences mean the same only to processes with this one."""

    async def _vector(self, text: str, given: np.ndarray | None) -> np.ndarray:
        if given is not None and np.size(given) == self.model.embedding_dim:
            return np.asarray(given)
        if self.embed is None:
            raise ValueError(f"the verifier reads {self.model.embedding_dim}-d embeddings and none was given")
        return await self.embed(text)  # a backend that returned no stored vector: one forward pass

    async def score(
        self,
        query: str,
        candidate: str,
        similarity: float,
        query_vector: np.ndarray | None = None,
        candidate_vector: np.ndarray | None = None,
    ) -> float:
        """Calibrated P(same meaning) of the pair (word vectors only when they can matter; the
        two embeddings when the model reads them); :data:`SAME_WORDS` at least when the two say
        the same words, however they write them."""
        if canonical(query) == canonical(candidate):
            return SAME_WORDS
        part = text_part(query, candidate, similarity)
        words_a = words_b = None
        if part.needs_words and self.words is not None:
            words_a, words_b = await asyncio.gather(self.words.get(query), self.words.get(candidate))
        row = finish(part, words_a, words_b)[None, :]
        if self.model.embedding_dim:
            u = await self._vector(query, query_vector)
            v = await self._vector(candidate, candidate_vector)
            row = model_rows(row, u[None, :], v[None, :])
        return float(self.model.probability(row)[0])
