"""Would a cross-encoder beat the shipped verifier? A probe, not a shipped model.

A cross-encoder reads the two prompts together (one forward pass per candidate) instead of
comparing two embeddings.  This probe fine-tunes one from the serving model's own weights
(all-MiniLM-L6-v2 with rank-r LoRA adapters on every linear layer of its six blocks and a
logistic head on the mean-pooled output; 332 K trainable numbers at r = 8), on the train part of
``semantic-cache train-verifier --split-dir``'s split, and measures it where the shipped verifier
is measured:

- ROC-AUC of each ``b`` against its own ``a`` among the calibrate and test pairs at cosine
  >= ``--min-similarity`` (the pairs the verifier scores), for the cosine, the shipped judge
  (its rules' vetoes score 0), the cross-encoder, and both stacked (a logistic regression on the
  judge's logit and the cross-encoder's score, fitted on calibrate);
- on the hand-written sets: look-alikes and paraphrases served at the prefilter by the shipped
  judge at its ``min_confidence`` and by the stacked score at several cuts (the rules veto first).

Needs torch and transformers (the ``torch`` extra).  About 25 min on two cores (training 1
epoch over the ~36,000 train pairs takes most of it); ``--max-pairs`` shortens it.

    python -m bench.cross_encoder_probe --split-dir split [--rank 8] [--epochs 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extproc.app import make_cache
from extproc.cli.eval_report import roc_auc
from extproc.cli.evaluate import Pair, _embed_distinct, eval_settings, read_pairs
from extproc.cli.train_verifier import fit_logistic
from extproc.config.settings import CacheSettings
from extproc.embedding.base import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
HAND_SETS = ("adversarial.jsonl", "adversarial-holdout.jsonl", "adversarial-third.jsonl")
CUTS = (0.6, 0.7, 0.75, 0.8, 0.85)
LAYERS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


class CrossEncoder:
    """all-MiniLM-L6-v2 read as a pair classifier: LoRA adapters and a head trained on pairs."""

    def __init__(self, rank: int, seed: int = 0) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(seed)
        path = resolve_model_path("all-MiniLM-L6-v2")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path)
        for weight in self.model.parameters():
            weight.requires_grad = False
        for block in self.model.encoder.layer:
            for name in LAYERS:
                parent, _, attr = name.rpartition(".")
                owner = block.get_submodule(parent)
                setattr(owner, attr, _lora(getattr(owner, attr), rank))
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1)

    def parameters(self) -> list[Any]:
        """The trainable numbers: adapters and head."""
        return [w for w in self.model.parameters() if w.requires_grad] + list(self.head.parameters())

    def logits(self, first: Sequence[str], second: Sequence[str]) -> Any:
        """One score per pair (higher: more likely the same meaning)."""
        batch = self.tokenizer(
            list(first), list(second), padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)

    def train(self, pairs: list[Pair], epochs: float, lr: float, batch: int = 32) -> float:
        """AdamW with a one-cycle schedule; each pair in a random order of its two prompts."""
        torch = self.torch
        rng = random.Random(0)
        pairs = list(pairs)
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.01)
        steps = max(1, int(len(pairs) / batch * epochs))
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=steps, pct_start=0.06
        )
        loss_fn = torch.nn.BCEWithLogitsLoss()
        self.model.train()
        done, loss = 0, float("nan")
        while done < steps:
            rng.shuffle(pairs)
            for start in range(0, max(1, len(pairs) - batch + 1), batch):
                if done >= steps:
                    break
                chunk = pairs[start : start + batch]
                flip = [rng.random() < 0.5 for _ in chunk]
                first = [p.a if f else p.b for p, f in zip(chunk, flip, strict=True)]
                second = [p.b if f else p.a for p, f in zip(chunk, flip, strict=True)]
                labels = torch.tensor([float(p.label) for p in chunk])
                value = loss_fn(self.logits(first, second), labels)
                optimizer.zero_grad()
                value.backward()
                optimizer.step()
                schedule.step()
                done += 1
                loss = float(value.detach())
        self.model.eval()
        return loss

    def score(self, pairs: Sequence[Pair], batch: int = 64) -> np.ndarray:
        """The score of each pair, read as (query ``b``, stored ``a``) as the cache would."""
        out = []
        with self.torch.no_grad():
            for start in range(0, len(pairs), batch):
                chunk = pairs[start : start + batch]
                out.append(self.logits([p.b for p in chunk], [p.a for p in chunk]).numpy())
        return np.concatenate(out) if out else np.zeros(0)


def _lora(linear: Any, rank: int) -> Any:
    """``linear`` plus a trainable low-rank update B·A (B starts at zero: the model unchanged)."""
    import torch

    class LoRA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = linear
            self.a = torch.nn.Parameter(torch.randn(rank, linear.in_features) / math.sqrt(linear.in_features))
            self.b = torch.nn.Parameter(torch.zeros(linear.out_features, rank))
            self.scale = 16.0 / rank

        def forward(self, x: Any) -> Any:
            return self.linear(x) + (x @ self.a.T @ self.b.T) * self.scale

    return LoRA()


async def judge(pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine, the shipped judge's confidence (0 when a rule vetoes) and the veto of each pair."""
    cache = await make_cache(eval_settings(CacheSettings(), len(pairs)), None)
    try:
        vectors = await _embed_distinct(cache, [t for p in pairs for t in (p.a, p.b)])
        cosine, confidence, vetoed = np.zeros(len(pairs)), np.zeros(len(pairs)), np.zeros(len(pairs))
        for i, p in enumerate(pairs):
            cosine[i] = float(vectors[p.a] @ vectors[p.b])
            rejected, conf = await cache.judge(
                p.b, p.a, cosine[i], query_vector=vectors[p.b], candidate_vector=vectors[p.a]
            )
            vetoed[i] = bool(rejected)
            confidence[i] = 0.0 if rejected or conf is None else conf
        return cosine, confidence, vetoed
    finally:
        await cache.close()


def _stack_inputs(confidence: np.ndarray, cross: np.ndarray) -> np.ndarray:
    clipped = np.clip(confidence, 1e-4, 1 - 1e-4)
    return np.c_[np.log(clipped / (1 - clipped)), cross]


def _stacked(fit: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    mean, scale, weights, bias = fit
    return 1.0 / (1.0 + np.exp(-(((x - mean) / scale) @ weights + bias)))


def probe(
    split_dir: Path,
    hand_dir: Path,
    rank: int,
    epochs: float,
    lr: float,
    max_pairs: int | None,
    min_similarity: float,
    min_confidence: float,
) -> dict:
    """Train the cross-encoder and measure it beside the shipped judge (see the module doc)."""
    started = time.perf_counter()
    encoder = CrossEncoder(rank)
    train = read_pairs(split_dir / "train.jsonl", max_pairs)
    loss = encoder.train(train, epochs, lr)
    report: dict = {"train_pairs": len(train), "rank": rank, "epochs": epochs, "final_loss": round(loss, 4)}
    stack = None
    for part in ("calibrate", "test"):
        pairs = read_pairs(split_dir / f"{part}.jsonl", max_pairs)
        y = np.array([p.label for p in pairs])
        cosine, confidence, vetoed = asyncio.run(judge(pairs))
        cross = encoder.score(pairs)
        near = cosine >= min_similarity
        if part == "calibrate":
            usable = near & (vetoed == 0)
            inputs = _stack_inputs(confidence[usable], cross[usable])
            stack = fit_logistic(inputs, y[usable].astype(float), 1.0)
        stacked = np.where(vetoed == 1, 0.0, _stacked(stack, _stack_inputs(confidence, cross)))
        report[part] = {
            "pairs_scored": int(near.sum()),
            "auc_cosine": roc_auc(cosine[near], y[near]),
            "auc_shipped": roc_auc(confidence[near], y[near]),
            "auc_cross_encoder": roc_auc(cross[near], y[near]),
            "auc_stacked": roc_auc(stacked[near], y[near]),
        }
    pairs = [p for name in HAND_SETS for p in read_pairs(hand_dir / name)]
    cosine, confidence, vetoed = asyncio.run(judge(pairs))
    stacked = _stacked(stack, _stack_inputs(confidence, encoder.score(pairs)))
    served = (vetoed == 0) & (cosine >= min_similarity)
    labels = np.array([p.label for p in pairs])
    kinds = {"look-alikes": labels == 0, "paraphrases": labels == 1}
    rules = {"shipped": confidence >= min_confidence} | {f"stacked {cut}": stacked >= cut for cut in CUTS}
    report["hand_sets"] = {
        name: {kind: int((served & chosen & mask).sum()) for kind, mask in kinds.items()}
        for name, chosen in rules.items()
    }
    report["hand_totals"] = {kind: int(mask.sum()) for kind, mask in kinds.items()}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module doc."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-dir", type=Path, required=True, help="train-verifier's --split-dir")
    parser.add_argument("--hand-dir", type=Path, default=ROOT / "tests" / "data")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-pairs", type=int, default=None, help="read at most this many pairs per part")
    parser.add_argument("--min-similarity", type=float, default=0.8)
    parser.add_argument("--min-confidence", type=float, default=0.75)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = probe(
        args.split_dir,
        args.hand_dir,
        args.rank,
        args.epochs,
        args.lr,
        args.max_pairs,
        args.min_similarity,
        args.min_confidence,
    )
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"trained on {report['train_pairs']} pairs (rank {args.rank}, {args.epochs} epochs), "
        f"{report['seconds']} s"
    )
    for part in ("calibrate", "test"):
        r = report[part]
        print(
            f"{part}: {r['pairs_scored']} pairs at cosine >= {args.min_similarity}; ROC-AUC cosine "
            f"{r['auc_cosine']:.4f}, shipped {r['auc_shipped']:.4f}, cross-encoder "
            f"{r['auc_cross_encoder']:.4f}, stacked {r['auc_stacked']:.4f}"
        )
    totals = report["hand_totals"]
    for name, served in report["hand_sets"].items():
        print(
            f"hand-written sets, {name}: {served['look-alikes']} of {totals['look-alikes']} look-alikes, "
            f"{served['paraphrases']} of {totals['paraphrases']} paraphrases served"
        )


if __name__ == "__main__":
    main()
