"""Our metrics against pytrec_eval (trec_eval) on randomized runs with ties and graded judgments."""

from __future__ import annotations

import math
import random

import pytest

from causalneg.evaluation.metrics import evaluate_run, metric_names, rank

pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier is a dev dependency")

K_VALUES = (1, 3, 10, 100)


def _random_case(seed: int) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """Graded qrels (-1..3, unjudged docs, queries without relevant docs) and runs with many tied scores."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(rng.randint(5, 150))]  # d1 < d10 < d2: byte order matters for ties
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(rng.randint(1, 12)):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, min(12, len(docs))))
        qrels[qid] = {doc: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for doc in judged}
        if rng.random() < 0.85:  # some judged queries are missing from the run
            retrieved = rng.sample(docs, rng.randint(0, len(docs)))
            levels = [round(rng.uniform(-1, 1), 1) for _ in range(rng.randint(1, 6))]  # few values: many ties
            run[qid] = {doc: rng.choice(levels) for doc in retrieved}
    run["q-unjudged"] = {docs[0]: 1.0}
    return qrels, run


def _pytrec(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    cuts = ",".join(str(k) for k in K_VALUES)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cuts}", f"recall.{cuts}", "recip_rank"})
    return evaluator.evaluate({qid: hits for qid, hits in run.items() if hits})


@pytest.mark.parametrize("seed", range(40))
def test_per_query_metrics_match_pytrec_eval(seed: int) -> None:
    qrels, run = _random_case(seed)
    aggregate, per_query = evaluate_run(qrels, run, K_VALUES)
    reference = _pytrec(qrels, run)
    counted = {qid for qid, rels in qrels.items() if any(r >= 1 for r in rels.values())}
    compared = 0
    for qid in counted & reference.keys():
        ref = reference[qid]
        for k in K_VALUES:
            assert per_query[f"ndcg@{k}"][qid] == pytest.approx(ref[f"ndcg_cut_{k}"], abs=1e-9)
            assert per_query[f"recall@{k}"][qid] == pytest.approx(ref[f"recall_{k}"], abs=1e-9)
            # mrr@k = recip_rank when the first relevant document is within the top k, else 0.
            rr = ref["recip_rank"]
            expected = rr if rr > 0 and round(1 / rr) <= k else 0.0
            assert per_query[f"mrr@{k}"][qid] == pytest.approx(expected, abs=1e-9)
            compared += 1
    # Judged queries absent from the run count as 0 and stay in the mean.
    for qid in counted - reference.keys():
        assert all(per_query[name][qid] == 0.0 for name in metric_names(K_VALUES))
    assert set(per_query["ndcg@10"]) == counted
    if not counted:
        assert aggregate == {}
    for name in metric_names(K_VALUES) if counted else ():
        assert aggregate[name] == pytest.approx(sum(per_query[name].values()) / len(counted), abs=1e-12)


def test_trec_eval_tie_order_is_score_then_doc_id_descending() -> None:
    assert rank({"a": 1.0, "b": 1.0, "c": 2.0, "d10": 1.0, "d2": 1.0}) == ["c", "d2", "d10", "b", "a"]
    reference = pytrec_eval.RelevanceEvaluator({"q": {"a": 1}}, {"recip_rank"}).evaluate(
        {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}
    )
    assert reference["q"]["recip_rank"] == pytest.approx(1 / 3)  # c, b, a


def test_hand_computed_graded_example() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 0, "z": 3}}
    run = {"q": {"a": 0.9, "b": 0.8, "c": 0.7, "x": 0.6}}
    aggregate, _ = evaluate_run(qrels, run, (3,))
    dcg = 2 / math.log2(2) + 1 / math.log2(3)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert aggregate["ndcg@3"] == pytest.approx(dcg / idcg)
    assert aggregate["recall@3"] == pytest.approx(2 / 3)
    assert aggregate["mrr@3"] == pytest.approx(1.0)


def test_queries_without_relevant_judgments_are_skipped() -> None:
    aggregate, per_query = evaluate_run(
        {"q1": {"a": 0}, "q2": {"b": 1}}, {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    )
    assert set(per_query["ndcg@10"]) == {"q2"}
    assert aggregate["ndcg@10"] == 1.0
    assert evaluate_run({"q1": {"a": 0}}, {}) == ({}, {name: {} for name in metric_names()})


def test_bad_cutoff_and_measure_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        evaluate_run({}, {}, (0,))
    with pytest.raises(ValueError, match="unknown measure"):
        evaluate_run({}, {}, (10,), ("map",))
