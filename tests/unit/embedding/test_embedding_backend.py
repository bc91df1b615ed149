"""The ONNX embedding backend: same vectors as torch, offline export, fallback, config key."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from extproc.config.settings import parse_config
from extproc.embedding import loader
from extproc.embedding import onnx_backend as embedding_onnx
from extproc.embedding.base import EncodeFn, resolve_model_path
from extproc.embedding.batcher import Embedder
from extproc.embedding.loader import load_sentence_model
from extproc.errors import ConfigError

SENTENCES = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "ok",
    "Explain, in detail, why the sky appears blue during the day but red at sunset. " * 8,
]


@pytest.fixture(scope="module")
def torch_model() -> tuple[EncodeFn, int]:
    """The reference: the model on torch."""
    return load_sentence_model("all-MiniLM-L6-v2", backend="torch")


def test_onnx_matches_torch(torch_model: tuple[EncodeFn, int]) -> None:
    onnx_encode, dim = load_sentence_model("all-MiniLM-L6-v2", backend="onnx")
    torch_encode, torch_dim = torch_model
    assert dim == torch_dim == 384
    assert isinstance(onnx_encode, embedding_onnx.OnnxEncoder)
    batch = onnx_encode(SENTENCES)
    reference = torch_encode(SENTENCES)
    assert batch.dtype == np.float32 and batch.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert (batch * reference).sum(axis=1).min() >= 0.999
    for text, ref in zip(SENTENCES, reference, strict=True):  # alone (no padding) as well
        assert float(onnx_encode([text])[0] @ ref) >= 0.999


def test_onnx_word_vectors_match_torch(torch_model: tuple[EncodeFn, int]) -> None:
    """The content guard gets the same words and word vectors from either backend."""
    onnx_encode, _ = load_sentence_model("all-MiniLM-L6-v2", backend="onnx")
    torch_encode, _ = torch_model
    texts = [*SENTENCES, "What's the café's best-selling naïve pastry in Zürich?", "iPhone 15 vs 14"]
    for ours, reference in zip(onnx_encode.words(texts), torch_encode.words(texts), strict=True):
        assert ours.words == reference.words and len(ours.words) > 0
        assert ours.vectors.shape == reference.vectors.shape
        assert (ours.vectors * reference.vectors).sum(axis=1).min() >= 0.999


def test_an_existing_export_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = resolve_model_path("all-MiniLM-L6-v2")
    monkeypatch.setattr(embedding_onnx, "cache_roots", lambda: [tmp_path / "baked"])
    folder = embedding_onnx.exported_model(model_dir)
    assert folder.parent.parent == tmp_path / "baked" and (folder / "model.onnx").is_file()
    calls: list[object] = []
    monkeypatch.setattr(embedding_onnx.subprocess, "run", lambda *a, **k: calls.append(a))
    assert embedding_onnx.exported_model(model_dir) == folder  # found: nothing exported or written
    assert calls == []


def test_falls_back_to_torch_when_onnx_cannot_be_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(embedding_onnx, "cache_roots", lambda: [blocker / "cache"])
    with caplog.at_level(logging.WARNING, logger="extproc.embedding"):
        # threads 1 was planned for ONNX passes side by side; torch runs one pass at a time
        encode, dim = load_sentence_model("all-MiniLM-L6-v2", 1, "auto", fallback_threads=2)
    assert not isinstance(encode, embedding_onnx.OnnxEncoder)
    import torch

    assert torch.get_num_threads() == 2
    assert dim == 384 and encode(["hello"]).shape == (1, 384)
    assert any("falling back to torch" in r.getMessage() for r in caplog.records)


def test_embedding_backend_config_key() -> None:
    assert parse_config({"semantic_cache": {}}).embedding_backend == "auto"
    assert parse_config({"semantic_cache": {"embedding_backend": "torch"}}).embedding_backend == "torch"
    with pytest.raises(ConfigError, match=r"semantic_cache\.embedding_backend: must be one of"):
        parse_config({"semantic_cache": {"embedding_backend": "gpu"}})
    with pytest.raises(ValueError, match="auto, torch or onnx"):
        load_sentence_model("all-MiniLM-L6-v2", backend="gpu")


def test_without_torch_a_precise_error_instead_of_an_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slim install (no torch extra): torch asked for, or no ONNX export to serve.
    monkeypatch.setattr(loader, "torch_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"embedding_backend: torch needs torch .*semantic-cache\[torch\]"):
        load_sentence_model("all-MiniLM-L6-v2", backend="torch")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setattr(embedding_onnx, "cache_roots", lambda: [blocker / "cache"])
    with pytest.raises(ConfigError, match=r"ONNX backend cannot be used \(no writable cache folder"):
        load_sentence_model("all-MiniLM-L6-v2", backend="auto")


async def test_a_lone_pass_gets_every_core_on_a_session_of_its_own() -> None:
    """By default passes run one thread each side by side; the solo session (every core, for a
    pass that runs alone) gives the same vectors and word vectors. Setting
    ``embedding_threads`` turns it off."""
    from extproc.app import make_cache
    from extproc.config.settings import CacheSettings

    encoder, _ = load_sentence_model("all-MiniLM-L6-v2", threads=1)
    solo = encoder.with_threads(2)
    assert solo.threads == 2 and encoder.threads == 1 and solo.session is not encoder.session
    assert np.allclose(solo(SENTENCES), encoder(SENTENCES), atol=1e-5)
    ours, theirs = solo.words(SENTENCES[:1])[0], encoder.words(SENTENCES[:1])[0]
    assert ours.words == theirs.words and np.allclose(ours.vectors, theirs.vectors, atol=1e-5)
    if embedding_onnx.usable_cores() < 2:
        pytest.skip("one usable core: every pass already has all of them")
    cache = await make_cache(CacheSettings())
    assert cache.embedder.workers >= 2 and cache.embedder._sentences.solo is not None
    cache.embedder.close()
    pinned = await make_cache(CacheSettings(embedding_threads=1))
    assert pinned.embedder._sentences.solo is None
    pinned.embedder.close()


def test_a_containers_cpu_limit_caps_the_cores(tmp_path: Path) -> None:
    """Kubernetes' CPU limit is a cgroup quota; the affinity still lists every core of the node."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert embedding_onnx.cgroup_cpu_quota(v2) is None
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert embedding_onnx.cgroup_cpu_quota(v2) == 1.5
    assert embedding_onnx.usable_cores(v2) == min(2, embedding_onnx.usable_cores(tmp_path / "none"))
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert embedding_onnx.usable_cores(v2) == 1  # half a CPU: still one pass
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert embedding_onnx.cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert embedding_onnx.cgroup_cpu_quota(v1) == 3.0
    (v2 / "cpu.max").write_text("garbage\n")
    assert embedding_onnx.cgroup_cpu_quota(v2) is None


def test_both_backends_know_the_window_they_read(torch_model: tuple[EncodeFn, int]) -> None:
    """A text past max_seq_length (256 tokens) is read by its head only: both backends say so,
    counting the same tokens; a short text, and one exactly at the window, fit."""
    onnx_encode, _ = load_sentence_model("all-MiniLM-L6-v2", backend="onnx")
    torch_encode, _ = torch_model
    document = "The quarterly report describes revenue growth in the EMEA region. " * 40
    long_a, long_b = document + "Translate it into German.", document + "Count the words."
    for encode in (onnx_encode, torch_encode):
        window = encode.window
        assert window is not None and window.max_tokens == 256
        assert window.fits("What is the capital of France?")
        assert not window.fits(long_a) and not window.fits(long_b)
        assert window.count(long_a) > 256
        vectors = encode([long_a, long_b])
        assert float(vectors[0] @ vectors[1]) > 0.9999  # why the cache must know: one vector
        at_limit = " ".join(["word"] * 254)  # [CLS] + 254 + [SEP]
        assert window.count(at_limit) == 256 and window.fits(at_limit)
        assert not window.fits(at_limit + " word")
    assert onnx_encode.window.count(long_a) == torch_encode.window.count(long_a)
    # What the model reads of a long text is a shorter text with the same vector: the
    # tokenizer (which reads a text whole before cutting it) is spared the rest.
    huge = document * 400  # ~27,000 characters
    head = onnx_encode.window.head(huge)
    assert len(head) <= 2048 and huge.startswith(head)
    whole = onnx_encode._run([onnx_encode.tokenizer.encode(huge)])[0]  # the text read whole, cut
    assert float(onnx_encode([huge])[0] @ whole[0]) > 0.99999
    assert float(torch_encode([huge])[0] @ whole[0]) > 0.999
    short = "What is the capital of France?"
    assert onnx_encode.window.head(short) is short


async def test_a_lone_surrogate_fails_no_batch(torch_model: tuple[EncodeFn, int]) -> None:
    """JSON lets a prompt carry "\\ud800"; both tokenizers refuse it, and a pass holding it failed
    every lookup and store batched with it. It is read as U+FFFD: every text gets its vector."""
    onnx_encode, dim = load_sentence_model("all-MiniLM-L6-v2", backend="onnx")
    torch_encode, _ = torch_model
    texts = ["What is the capital of France?", "bad \ud800 text " + "word " * 60, "How tall is Everest?"]
    for encode in (onnx_encode, torch_encode):
        embedder = Embedder(encode, dim, max_batch=8, workers=1)
        vectors = await asyncio.gather(*(embedder.embed(t) for t in texts))
        assert np.allclose(vectors[0], encode(texts[:1])[0], atol=1e-5)
        assert np.allclose(vectors[1], encode(["bad \ufffd text " + "word " * 60])[0], atol=1e-5)
        assert await embedder.fits(texts[1])  # counted as read, not an error
        embedder.close()


def test_both_backends_say_what_the_model_cannot_read(torch_model: tuple[EncodeFn, int]) -> None:
    """MiniLM reads most emoji and many symbols as one unknown token: those pieces, by text."""
    onnx_encode, _ = load_sentence_model("all-MiniLM-L6-v2", backend="onnx")
    torch_encode, _ = torch_model
    texts = {
        "What does the 🍎 emoji mean?": ("🍎",),
        "what is ∑ or ∫ used for": ("∑", "∫"),
        "Ça coûte 15 € à Zürich": (),  # accents and € are in the vocabulary
        "plain ascii ~ ^ | text": (),
    }
    for text, pieces in texts.items():
        assert onnx_encode.window.unreadable(text) == pieces, text
        assert torch_encode.window.unreadable(text) == pieces, text  # type: ignore[attr-defined]
