"""Duplicate clusters: judging hits on a tiny fixture with known answers, rows at several
settings, the pairwise view, and splits that keep every question on one side."""

from __future__ import annotations

import numpy as np
import pytest

from extproc.cli.clusters import Clusters, split_by_component
from extproc.cli.eval_report import Lookup, Pair, judge_rows, pairwise, roc_auc

# Clusters: {capital of France, France's capital, capital city of France} (two label-1 pairs,
# one written in another case), {capital of Spain}, {tallest mountain}; label 0 joins France
# and Spain.  "How old is the Earth?" is in no pair with the others.
FIXTURE = [
    Pair("What is the capital of France?", "What's France's capital?", 1),
    Pair("WHAT'S FRANCE'S CAPITAL?", "What is the capital city of France?", 1),
    Pair("What is the capital of France?", "What is the capital of Spain?", 0),
    Pair("What is the tallest mountain?", "How old is the Earth?", 0),
]


def test_union_find_is_case_insensitive_and_transitive() -> None:
    clusters = Clusters(FIXTURE)
    france = clusters.cluster("What is the capital of France?")
    assert clusters.cluster("what is the capital city of france?") == france
    assert clusters.cluster("What is the capital of Spain?") != france


@pytest.mark.parametrize(
    ("query", "served", "own_negative", "verdict"),
    [
        ("What is the capital city of France?", "What is the capital of France?", False, "correct"),
        ("What is the capital city of France?", "what is the capital city of france?", False, "correct"),
        ("What is the capital of Spain?", "What's France's capital?", False, "wrong"),  # label 0 joins them
        ("How old is the Earth?", "What is the tallest mountain?", True, "wrong"),  # its own label-0 a
        ("How old is the Earth?", "What is the capital of France?", False, "unjudged"),
    ],
)
def test_judge(query: str, served: str, own_negative: bool, verdict: str) -> None:
    assert Clusters(FIXTURE).judge(query, served, own_negative) == verdict


def test_rows_count_correct_wrong_and_unjudged_at_each_setting() -> None:
    lookups = [
        # its own a: correct at any setting where it is served
        Lookup(FIXTURE[0], (("What is the capital of France?", 0.95, 0.97),)),
        # another member of its cluster, not its own a: strictly "wrong other", judged correct
        Lookup(FIXTURE[1], (("What is the capital of France?", 0.90, 0.80),)),
        # a look-alike (its own label-0 a) at high similarity but low confidence, then nothing
        Lookup(FIXTURE[2], (("What is the capital of France?", 0.93, 0.30),)),
        # the labels say nothing about this one
        Lookup(FIXTURE[3], (("What is the capital of France?", 0.85, 0.60),)),
    ]
    clusters = Clusters(lk.pair for lk in lookups)
    loose, strict = judge_rows(lookups, [(0.8, 0.0), (0.8, 0.9)], clusters)
    assert (loose.hits, loose.correct, loose.wrong_negative, loose.wrong_other) == (4, 1, 1, 2)
    assert (loose.judged_correct, loose.judged_wrong, loose.unjudged) == (2, 1, 1)
    assert loose.precision_judged == pytest.approx(2 / 3)
    assert loose.recall_judged == pytest.approx(1.0) and loose.recall == pytest.approx(0.5)
    assert (strict.hits, strict.judged_correct, strict.judged_wrong, strict.unjudged) == (1, 1, 0, 0)
    assert strict.precision_judged == 1.0 and strict.recall_judged == pytest.approx(0.5)
    (by_threshold,) = judge_rows(lookups, [(0.92, 0.0)], clusters)
    assert (by_threshold.hits, by_threshold.judged_wrong) == (2, 1)


def test_decide_takes_the_first_candidate_that_passes_both() -> None:
    lk = Lookup(FIXTURE[0], (("x", 0.95, 0.40), ("y", 0.90, 0.95), ("z", 0.85, None)))
    assert lk.decide(0.8, 0.5) == ("y", 0.90, 0.95)
    assert lk.decide(0.8, 0.99) == ("z", 0.85, None)  # no verifier score: the threshold decides
    assert lk.decide(0.96, 0.0) is None


def test_pairwise_and_roc_auc() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.8, 0.1, 0.3])
    accepted = scores >= 0.5
    out = pairwise(scores, accepted, labels)
    assert out["precision"] == pytest.approx(2 / 3, abs=1e-4) and out["recall"] == pytest.approx(
        2 / 3, abs=1e-4
    )
    assert out["f1"] == pytest.approx(2 / 3, abs=1e-4)
    # of 6 (positive, negative) pairs, 4.5 ranked right (0.8 vs 0.8 counts half)
    assert roc_auc(scores, labels) == pytest.approx(4.5 / 6)
    assert np.isnan(roc_auc(scores, np.ones(5)))


def test_split_keeps_each_question_on_one_side() -> None:
    pairs = [Pair(f"q{i}", f"q{i + 1}", i % 2) for i in range(0, 40, 2)] + [
        Pair("Q0", "shared", 1),
        Pair("shared", "q10", 0),
    ]
    parts = split_by_component(pairs, (0.6, 0.2, 0.2))
    assert sorted(i for part in parts for i in part) == list(range(len(pairs)))
    sides = [{t.casefold() for i in part for t in (pairs[i].a, pairs[i].b)} for part in parts]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert split_by_component(pairs, (0.6, 0.2, 0.2)) == parts  # deterministic


def test_the_judge_reads_questions_as_the_cache_does_and_the_split_as_the_model_was_trained() -> None:
    """ "q1 " and "q1" are one prompt to the cache (normalized): one cluster to the judge. The
    split compares them case-insensitively only, as the shipped verifier was trained (normalizing
    it moved whole components between the parts: the held-out set of the simulation changed under
    a model trained on the old one)."""
    pairs = [Pair("q1", "r1", 1), Pair("q1 ", "s1", 1), Pair("Q1\r\n", "t1", 0)]
    clusters = Clusters(pairs)
    assert clusters.judge("r1", "s1") == "correct"
    assert clusters.judge("t1", "r1") == "wrong"
    assert clusters.cluster("q1 ") == clusters.cluster("Q1")
    more = [Pair(f"q{i}", f"r{i}", i % 2) for i in range(200)] + [
        Pair(f"q{i} ", f"s{i}", 1) for i in range(200)
    ]
    parts = split_by_component(more, (0.6, 0.2, 0.2))
    casefold_only = split_by_component(
        [Pair(p.a.casefold(), p.b.casefold(), p.label) for p in more], (0.6, 0.2, 0.2)
    )
    assert parts == casefold_only
