"""Tiny runs of each benchmark script: they run and produce their fields (no timing asserts).

They read the QQP sample kept in the repository (bench/data/qqp-sample.jsonl), so they need
nothing beside the clone; real benchmark runs read the full file (bench/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.report import SAMPLE
from bench.verification_sim import wrong_answer
from extproc.cli.clusters import Clusters
from extproc.cli.evaluate import Pair, read_pairs
from tests.conftest import ROOT, MilvusServer

pytestmark = pytest.mark.integration


def bench_stdout(module: str, *args: str, timeout: float = 600) -> str:
    """Run ``python -m bench.MODULE ARGS`` from the repository root; its stdout (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_bench(module: str, out: Path, *args: str, header: str = "| target") -> dict[str, Any]:
    """Run ``python -m bench.MODULE`` on the sample pairs; return its JSON result."""
    stdout = bench_stdout(module, "--out", str(out), "--data", str(SAMPLE), *args)
    assert header in stdout  # the tables were printed
    return json.loads(out.read_text())


def test_e2e_smoke(tmp_path: Path) -> None:
    doc = run_bench("e2e", tmp_path / "e2e.json", "--scale", "0.01", "--repeat", "1", "--concurrency", "1,2")
    phases = {(r["target"], r["phase"], r["latency_ms"]) for r in doc["summary"]}
    for target in ("direct", "envoy", "cache"):
        for phase in ("miss", "stream_miss", "bypass"):
            assert (target, phase, 0) in phases
        assert (target, "miss", 300) in phases
    assert ("cache", "exact_hit", 0) in phases and ("cache", "semantic_hit", 0) in phases
    for row in doc["summary"]:
        assert {"p50_ms", "p90_ms", "p99_ms", "rps", "outcomes"} <= row.keys()
    outcomes = {(r["phase"], r["outcomes"]) for r in doc["summary"] if r["target"] == "cache"}
    assert any(p == "exact_hit" and "hit/exact" in o for p, o in outcomes)
    assert any(p == "semantic_hit" and "hit/semantic" in o for p, o in outcomes)
    assert doc["encode_floor"]["single_ms"] > 0
    assert doc["processor"]["rss_after_mb"] > 0
    assert {"exact", "semantic"} <= doc["tracing"].keys()
    assert {r["phase"] for r in doc["added"]} >= {"miss", "stream_miss", "bypass"}
    assert all({"target", "measured", "verdict"} <= t.keys() for t in doc["targets"])
    from bench import render

    assert "| target" in render.e2e(doc) and "cores" in render.machine(doc)


def test_openloop_smoke(tmp_path: Path) -> None:
    doc = run_bench("openloop", tmp_path / "openloop.json", "--rates", "10,40", "--seconds", "1")
    phases = {(r["target"], r["phase"], r["rate"]) for r in doc["rows"]}
    for rate in (10.0, 40.0):
        assert {("envoy", "miss", rate), ("cache", "miss", rate), ("cache", "semantic_hit", rate)} <= phases
    assert all(r["errors"] == 0 and r["n"] >= 10 for r in doc["rows"])
    assert {a["rate"] for a in doc["added"]} == {10.0, 40.0}
    assert doc["encode_floor_ms"] > 0 and "knee_rate" in doc


def test_backends_smoke(tmp_path: Path) -> None:
    doc = run_bench(
        "backends",
        tmp_path / "backends.json",
        *("--sizes", "2000,12000", "--milvus-sizes", "", "--queries", "20", "--anchors-count", "64"),
    )
    rows = {r["entries"]: r for r in doc["rows"]}
    assert set(rows) == {2000, 12000}  # a flat partition and one past the HNSW threshold
    for r in rows.values():
        assert r["paraphrase_p50_ms"] > 0 and 0 <= r["paraphrase_recall@1"] <= 1
        assert r["rss_mb"] > 0 and r["raw_vectors_mb"] > 0


async def test_milvus_scaling_smoke(milvus_server: MilvusServer, tmp_path: Path) -> None:
    from bench.milvus_scaling import measure

    anchors = np.random.default_rng(1).standard_normal((32, 384)).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    row = await measure(milvus_server, 500, anchors, 10, tmp_path)
    assert row["backend"] == "milvus" and row["entries"] == 500
    assert row["paraphrase_p50_ms"] > 0 and 0 <= row["paraphrase_recall@1"] <= 1


def test_gptcache_compare_smoke(tmp_path: Path) -> None:
    doc = run_bench("gptcache_compare", tmp_path / "gptcache.json", "--pairs", "12", header="| system")
    ours = doc["rows"][0]
    assert ours["system"].startswith("ours")
    for row in doc["rows"]:  # GPTCache rows only when the bench extra is installed
        assert {
            "inserts_per_s",
            "lookup_p50_ms",
            "lookup_p99_ms",
            "precision",
            "recall",
            "hits",
        } <= row.keys()


def test_volatile_rate_smoke() -> None:
    stdout = bench_stdout("volatile_rate", "--data", str(SAMPLE), "--show", "3", timeout=120)
    head = stdout.splitlines()[0]
    assert head.startswith("questions=") and "flagged=" in head and "rate=" in head


def test_verifier_cost_smoke(tmp_path: Path) -> None:
    stdout = bench_stdout("verifier_cost", "--repeat", "1", "--verifier", "builtin", timeout=300)
    doc = json.loads(stdout)
    assert doc["pairs"] == len(read_pairs(ROOT / "tests" / "data" / "adversarial.jsonl"))
    assert doc["encode_p50_ms"] > 0 and doc["verifier_text_p50_ms"] > 0
    ratio = doc["verifier_text_p50_ms"] / doc["encode_p50_ms"]
    assert doc["verifier_text_over_encode_p50"] == round(ratio, 4)
    # A verifier trained for another model's vectors is refused, not run on the wrong ones.
    other = json.loads((ROOT / "extproc" / "cache" / "guards" / "verifier.json").read_text())
    other["embedding"]["dim"] = 768
    text = len(other["features"])
    for key in ("mean", "scale", "weights"):
        other[key] = other[key][:text] + other[key][text:] * 2  # the text features, then 2 x 768
    (tmp_path / "other.json").write_text(json.dumps(other))
    command = [sys.executable, "-m", "bench.verifier_cost", "--verifier", str(tmp_path / "other.json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0 and "reads 768-d embeddings" in done.stderr


def test_remote_embedding_smoke() -> None:
    stdout = bench_stdout("remote_embedding", "--queries", "20", "--data", str(SAMPLE), timeout=300)
    rows = [line.split() for line in stdout.splitlines() if line.startswith(("local", "remote"))]
    assert [r[0] for r in rows] == ["local", "remote"] * 2 and all(float(r[2]) > 0 for r in rows)


@pytest.mark.parametrize(
    "promise",
    [(), ("--per-request",), ("--judged",), ("--replicas", "2"), ("--ttl", "300")],
    ids=["per-hit", "per-request", "judged", "replicas", "ttl"],
)
def test_verification_sim_smoke(promise: tuple[str, ...]) -> None:
    args = ("--pairs", str(SAMPLE), "--length", "1500", *promise)
    stdout = bench_stdout("verification_sim", *args, timeout=600)
    lines = stdout.splitlines()
    assert lines[0].startswith("1500 requests")
    for name in ("static 0.7", "bound 0.01", "bound 0.02", "bound 0.05"):
        assert any(
            line.startswith(name) and "wrong" in line and "verify calls" in line and "per request" in line
            for line in lines
        )
    runs = 10 if "--replicas" in promise else 5  # each δ twice: evidence shared, per process
    assert sum("static of ≤ equal error" in line for line in lines) == runs
    if "--replicas" in promise:
        assert any(line.startswith("bound 0.2 2 replicas, shared") for line in lines)
        assert any(line.startswith("bound 0.2 2 replicas, per process") for line in lines)
    assert not any("VIOLATED" in line for line in lines)


def test_judged_simulation_leaves_uncompared_questions_out() -> None:
    # B is labelled apart from A and from C; nobody compared A with C; D duplicates A
    pairs = [Pair("A?", "B?", 0), Pair("B?", "C?", 0), Pair("A?", "D?", 1)]
    clusters = Clusters(pairs)
    a, b, c, d = (clusters.cluster(t) for t in ("A?", "B?", "C?", "D?"))
    assert wrong_answer(clusters, a, d, judged=True) is False
    assert wrong_answer(clusters, a, b, judged=True) is True
    assert wrong_answer(clusters, c, a, judged=True) is None  # unknown: never learned from
    assert wrong_answer(clusters, c, a, judged=False) is True  # the default: another cluster is wrong


def test_cross_encoder_probe_smoke(tmp_path: Path) -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    for part, rows in (("train", lines[:64]), ("calibrate", lines[64:264]), ("test", lines[264:464])):
        (tmp_path / f"{part}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ("--split-dir", str(tmp_path), "--epochs", "1", "--json")
    report = json.loads(bench_stdout("cross_encoder_probe", *args, timeout=600).splitlines()[-1])
    assert report["train_pairs"] == 64 and np.isfinite(report["final_loss"])
    for part in ("calibrate", "test"):
        aucs = [v for k, v in report[part].items() if k.startswith("auc_")]
        assert report[part]["pairs_scored"] > 0 and len(aucs) == 4 and all(0 <= v <= 1 for v in aucs)
    totals = report["hand_totals"]
    assert totals == {"look-alikes": 96 + 39 + 40, "paraphrases": 99 + 40 + 40}
    for served in report["hand_sets"].values():
        assert 0 <= served["look-alikes"] <= totals["look-alikes"]
        assert 0 <= served["paraphrases"] <= totals["paraphrases"]
    # the shipped judge's counts are those docs/correctness.md gives for the three sets
    assert report["hand_sets"]["shipped"] == {"look-alikes": 0 + 0 + 2, "paraphrases": 85 + 31 + 20}


def test_token_window_smoke() -> None:
    stdout = bench_stdout("token_window", "--repeat", "3", timeout=300)
    lines = stdout.splitlines()
    assert lines[0].startswith("lone-query encode floor p50 ")
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == [100, 300, 1000, 2000, 4000, 20000]
    assert [r[1] for r in rows] == ["True"] * 3 + ["False"] * 3  # 256 tokens: ~1,300 characters
