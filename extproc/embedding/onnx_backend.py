"""ONNX Runtime embeddings: a sentence-transformers model folder exported once, offline, at load.

The export (torch → ONNX, pooling and normalization included) runs in a child process the first
time a model is loaded and is kept in a writable cache folder, so the serving process never
imports torch and later starts only read the ``.onnx`` file.  Nothing is downloaded: the source
is the local model folder.  ``python -m extproc.embedding.onnx_backend MODEL_DIR OUT_DIR`` is the export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from extproc.embedding.base import TokenWindow, WordVectors, read_heads, unknown_pieces, word_vectors

log = logging.getLogger(__name__)

EXPORT_VERSION = "2"
"""Bumped when the exported graph changes, so stale exports are not reused."""
CACHE_ENV = "SEMANTIC_CACHE_MODEL_CACHE"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


CGROUP = Path("/sys/fs/cgroup")
"""Where the process's cgroup is mounted (inside a container: its own)."""


class OnnxUnavailable(Exception):
    """The ONNX backend cannot be used here (missing package, unwritable cache, failed export)."""


def cache_roots() -> list[Path]:
    """Candidate cache folders, best first: $SEMANTIC_CACHE_MODEL_CACHE, XDG cache, temp dir."""
    roots = []
    if os.environ.get(CACHE_ENV):
        roots.append(Path(os.environ[CACHE_ENV]))
    xdg = os.environ.get("XDG_CACHE_HOME")
    roots.append(Path(xdg) / "semantic-cache" if xdg else Path.home() / ".cache" / "semantic-cache")
    roots.append(Path(tempfile.gettempdir()) / "semantic-cache")
    return roots


def export_key(model_dir: Path) -> str:
    """A short key that changes when the model's weights or config change."""
    h = hashlib.sha256(f"{EXPORT_VERSION}|{model_dir.resolve()}".encode())
    for name in (*_WEIGHTS, "config.json", "modules.json", "tokenizer.json", "sentence_bert_config.json"):
        path = model_dir / name
        if path.is_file():
            st = path.stat()
            h.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _usable(folder: Path) -> bool:
    return (folder / "model.onnx").is_file() and (folder / "meta.json").is_file()


def _writable(root: Path) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            return True
    except OSError:
        return False


def exported_model(model_dir: Path, timeout: float = 600.0) -> Path:
    """The folder of the ONNX export of ``model_dir``, exporting it first if no cache has it."""
    name = f"{model_dir.resolve().name}-{export_key(model_dir)}"
    roots = cache_roots()
    for root in roots:
        if _usable(root / "onnx" / name):
            return root / "onnx" / name
    root = next((r for r in roots if _writable(r / "onnx")), None)
    if root is None:
        raise OnnxUnavailable("no writable cache folder (tried " + ", ".join(map(str, roots)) + ")")
    target = root / "onnx" / name
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root / "onnx"))
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "extproc.embedding.onnx_backend", str(model_dir), str(work)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OnnxUnavailable(f"ONNX export failed: {tail[0][:300]}")
        try:
            work.rename(target)
        except OSError:  # another process exported it at the same time
            if not _usable(target):
                raise
    finally:
        if work.exists():
            for child in work.iterdir():
                child.unlink()
            work.rmdir()
    log.info("embedding model exported to ONNX in %.1fs: %s", time.perf_counter() - started, target)
    return target


def export(model_dir: Path, out: Path) -> None:
    """Export ``model_dir`` (sentence-transformers) to ``out``/model.onnx, tokenizer.json, meta.json."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu").eval()
    sample = model.tokenize(["a short one", "and a somewhat longer sentence to pad the first"])
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in sample]

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = model

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.st(dict(zip(names, inputs, strict=True)))
            return out["sentence_embedding"], out["token_embeddings"]

    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes |= {"embedding": {0: "batch"}, "tokens": {0: "batch", 1: "tokens"}}
    with torch.inference_mode():
        torch.onnx.export(
            Pooled(),
            tuple(sample[n] for n in names),
            str(out / "model.onnx"),
            input_names=names,
            output_names=["embedding", "tokens"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    tokenizer = model.tokenizer.backend_tokenizer
    tokenizer.enable_truncation(int(model.max_seq_length))
    tokenizer.save(str(out / "tokenizer.json"))
    dim_fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    meta = {"inputs": names, "dim": int(dim_fn()), "max_seq_length": int(model.max_seq_length)}
    (out / "meta.json").write_text(json.dumps(meta))


def load_onnx_model(model_dir: Path, threads: int = 0) -> tuple[OnnxEncoder, int]:
    """Export (once) and load ``model_dir`` with ONNX Runtime; return (encode function, dimension)."""
    try:
        import onnxruntime  # noqa: F401
        from tokenizers import Tokenizer  # noqa: F401
    except ImportError as exc:
        raise OnnxUnavailable(f"{exc.name} is not installed") from exc
    try:
        folder = exported_model(model_dir)
        encoder = OnnxEncoder(folder, threads)
    except OnnxUnavailable:
        raise
    except Exception as exc:  # a timeout, an unwritable folder, a corrupt file: fall back
        raise OnnxUnavailable(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return encoder, encoder.dim


class OnnxEncoder:
    """Tokenizer + ONNX Runtime session; called with a batch of texts, returns unit vectors."""

    thread_safe = True
    """ONNX Runtime runs one session from several threads at once (and releases the GIL)."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        from tokenizers import Tokenizer

        meta = json.loads((folder / "meta.json").read_text())
        self.inputs: list[str] = meta["inputs"]
        self.dim = int(meta["dim"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(meta["max_seq_length"]))
        self.tokenizer.no_padding()
        whole = Tokenizer.from_str(self.tokenizer.to_str())
        whole.no_truncation()
        unk = next((i for t in ("[UNK]", "<unk>") if (i := whole.token_to_id(t)) is not None), None)

        def ids_offsets(text: str) -> tuple[list[int], list[tuple[int, int]]]:
            encoded = whole.encode(text, add_special_tokens=False)
            return encoded.ids, encoded.offsets

        self.window = TokenWindow(
            int(meta["max_seq_length"]),
            lambda text: len(whole.encode(text, add_special_tokens=True).ids),
            unknown_pieces(ids_offsets, unk),
        )
        """What the model reads of a text (the forward pass truncates to ``max_seq_length``)."""
        self._model_file = folder / "model.onnx"
        self.threads = threads if threads > 0 else usable_cores()
        """Threads of one forward pass."""
        self.session = self._session(self.threads)

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        # Always an explicit count: left at 0, ONNX Runtime pins its pool threads to cores, and a
        # forward pass called from the embedding worker thread (as the server does) then took
        # 11 ms instead of 3 on 2 cores, its pinned pool thread sharing a core with the caller.
        options.intra_op_num_threads = threads
        # Pool threads spin for 200 µs between parallel sections, then sleep. Without spinning
        # each of a forward pass's ~50 sections waits for a thread to wake (a lone query took
        # 4.8 ms instead of 3.7 after a short idle, 7.3-8.5 instead of 5.5-6 after 100 ms);
        # unbounded spinning is as fast but doubles the CPU burnt beside Envoy (bench/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.intra_op.spin_duration_us", "200")
        return ort.InferenceSession(str(self._model_file), options, providers=["CPUExecutionProvider"])

    def with_threads(self, threads: int) -> OnnxEncoder:
        """The same model and tokenizer on a session of its own that runs a pass on ``threads``
        threads, warmed up (the embedder runs a lone query on it: see ``Embedder``)."""
        twin = copy.copy(self)
        twin.threads = threads
        twin.session = self._session(threads)
        twin.warm()
        return twin

    def warm(self) -> None:
        """Run every output once: a first pass is slow, and the first lookup after a start would
        pay it inside its latency budget (the word-vector outputs too, for the verifier)."""
        self(["warm up"])
        self.with_words(["warm up"])[1][0]()
        self.words(["warm up"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings of ``texts`` (float32, one row each).

        A batch is run as a few sub-batches of similar token counts: padding every text to the
        longest one of a micro-batch doubled the work per query on chat-length prompts.
        """
        encodings = self.tokenizer.encode_batch(read_heads(self.window, texts))
        out = np.empty((len(encodings), self.dim), dtype=np.float32)
        for group in length_groups([len(e.ids) for e in encodings]):
            out[group] = self._run([encodings[i] for i in group])[0]
        return out

    def with_words(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Callable[[], WordVectors]]]:
        """:meth:`__call__` and, from the same forward pass, each text's word vectors (made when
        called: most lookups never need them, and a verifier that does is spared a second pass)."""
        encodings = self.tokenizer.encode_batch(read_heads(self.window, texts))
        out = np.empty((len(encodings), self.dim), dtype=np.float32)
        later: list[Callable[[], WordVectors] | None] = [None] * len(encodings)
        for group in length_groups([len(e.ids) for e in encodings]):
            vectors, hidden = self._run([encodings[i] for i in group], "embedding", "tokens")
            out[group] = vectors
            for row, i in enumerate(group):
                e = encodings[i]
                tokens = hidden[row, : len(e.ids)].copy()  # not the whole padded batch
                later[i] = partial(word_vectors, tokens, e.ids, e.word_ids, self._decode, e.tokens)
        return out, [f for f in later if f is not None]

    def words(self, texts: Sequence[str]) -> list[WordVectors]:
        """Per-word contextual vectors (the token vectors the sentence vector pools), as torch gives."""
        encodings = self.tokenizer.encode_batch(read_heads(self.window, texts))
        out: list[WordVectors | None] = [None] * len(encodings)
        for group in length_groups([len(e.ids) for e in encodings]):
            hidden = self._run([encodings[i] for i in group], "tokens")[0]
            for row, i in enumerate(group):
                e = encodings[i]
                out[i] = word_vectors(hidden[row], e.ids, e.word_ids, self._decode, e.tokens)
        return [w for w in out if w is not None]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _run(self, encodings: list[Any], *outputs: str) -> list[np.ndarray]:
        """One forward pass over ``encodings``: the named outputs (default: the sentence vectors)."""
        width = max(len(e.ids) for e in encodings)
        columns = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in self.inputs}
        for row, e in enumerate(encodings):
            n = len(e.ids)
            for name, values in (
                ("input_ids", e.ids),
                ("attention_mask", e.attention_mask),
                ("token_type_ids", e.type_ids),
            ):
                if name in columns:
                    columns[name][row, :n] = values
        return list(self.session.run(list(outputs or ("embedding",)), columns))


def usable_cores(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity (else the machine's count), capped by its
    cgroup's CPU quota rounded up. A container's CPU limit is such a quota, and the affinity
    still lists every core of the node: one pass per listed core would be throttled."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs' worth of time per period the cgroup allows (cgroup v2 ``cpu.max``, else v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None without a quota or a readable file."""
    try:
        limit, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        return None if limit == "max" else int(limit) / int(period or 100_000)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def length_groups(lengths: Sequence[int], slack: float = 1.3, extra: int = 4) -> list[list[int]]:
    """Indices grouped by similar length (shortest first): a group's longest is at most
    ``slack`` × its shortest + ``extra`` tokens, so little of a padded sub-batch is padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= lengths[groups[-1][0]] * slack + extra:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))
