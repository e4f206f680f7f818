"""python -m train.retrieve: the metrics, the systems' rows and costs, and what it refuses."""

from __future__ import annotations

import json
import math
import random

import pytest
from hydra.errors import ConfigCompositionException

from train.data.build import build_data
from train.errors import ConfigError, DataError, ModelLoadError
from train.retrieve import RetrievalSet, cross_encoder_rows, ranking_metrics, retrieval_set, retrieve_run
from tests.conftest import FIXTURES, compose_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models' forward passes take a millisecond on one thread, but hundreds where two
    # threads wait on each other on a busy 2-core machine.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def four(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("mrr@10", "ndcg@10", "recall@1", "recall@10")}


def test_metrics_of_hand_made_rankings():
    # Relevant at rank 2 of 3.
    assert four(ranking_metrics([[7, 3, 9]], [{3}])) == pytest.approx(
        {"mrr@10": 0.5, "ndcg@10": 1 / math.log2(3), "recall@1": 0.0, "recall@10": 1.0}
    )
    # Two relevant: one at rank 1, one at rank 11 (outside the top 10).
    ranking = [5, *range(100, 109), 6]
    found = ranking_metrics([ranking], [{5, 6}])
    assert four(found) == pytest.approx({"mrr@10": 1.0, "ndcg@10": 1 / (1 + 1 / math.log2(3)), "recall@1": 0.5, "recall@10": 0.5})
    assert found["recall@100"] == 1.0 and found["map@100"] == pytest.approx((1 / 1 + 2 / 11) / 2)
    # Twelve relevant, ten in the top 10: a perfect top 10 (the ideal DCG stops at 10 too).
    assert four(ranking_metrics([list(range(12))], [set(range(12))])) == pytest.approx(
        {"mrr@10": 1.0, "ndcg@10": 1.0, "recall@1": 1 / 12, "recall@10": 10 / 12}
    )
    # Not found at all; and the mean over queries.
    assert set(ranking_metrics([[1, 2]], [{3}]).values()) == {0.0}
    mean = ranking_metrics([[7, 3, 9], [1, 2]], [{3}, {3}])
    assert mean["mrr@10"] == pytest.approx(0.25) and mean["recall@10"] == pytest.approx(0.5)


def test_metrics_equal_sentence_transformers_evaluator():
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rng = random.Random(0)
    docs = [f"d{i}" for i in range(150)]
    rankings = [rng.sample(range(150), 150) for _ in range(40)]
    relevant = [set(rng.sample(range(150), rng.randint(1, 4))) for _ in range(40)]
    library = InformationRetrievalEvaluator(
        queries={f"q{i}": "x" for i in range(40)},
        corpus={d: "x" for d in docs},
        relevant_docs={f"q{i}": {docs[d] for d in rel} for i, rel in enumerate(relevant)},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[1, 10, 100], map_at_k=[100],
    ).compute_metrics([[{"corpus_id": docs[d], "score": -rank} for rank, d in enumerate(r)] for r in rankings])
    ours = ranking_metrics(rankings, relevant)
    assert ours["mrr@10"] == pytest.approx(library["mrr@k"][10])
    assert ours["ndcg@10"] == pytest.approx(library["ndcg@k"][10])
    for k in (1, 10, 100):
        assert ours[f"recall@{k}"] == pytest.approx(library["recall@k"][k])
    assert ours["map@100"] == pytest.approx(library["map@k"][100])


def nli_fixture_set(corpus: str = "positives", max_queries: int = 0) -> RetrievalSet:
    cfg = compose_config(["data=nli_file", f"data.dev_path={FIXTURES / 'nli_small.tsv'}"], config_name="retrieve")
    return retrieval_set(build_data(cfg.data, ("dev",), "query_candidates", "query_candidates")["dev"], corpus, max_queries)


def test_nli_premises_find_their_own_entailed_hypotheses():
    data = nli_fixture_set()
    assert data.queries == ["A man plays a guitar.", "Two dogs run.", "A child reads."]
    assert data.corpus == ["A person makes music.", "Animals are moving.", "Someone is reading."]
    assert [{data.corpus[d] for d in rel} for rel in data.relevant] == [
        {"A person makes music."}, {"Animals are moving."}, {"Someone is reading."}
    ]
    everything = nli_fixture_set("all")
    assert set(everything.corpus) == {*data.corpus, "The man is asleep.", "The dogs sit still."}  # neutral ones never
    capped = nli_fixture_set(max_queries=1)
    assert len(capped.queries) == 1 and capped.corpus == data.corpus


@pytest.fixture(scope="module")
def candidates_file(tmp_path_factory):
    """Six queries, each with one positive and two negatives: a corpus of 6 positives or 18 texts."""
    path = tmp_path_factory.mktemp("retrieve-data") / "dev.jsonl"
    topics = ["cats", "rain", "trains", "coffee", "chess", "rivers"]
    rows = [
        {"query": f"tell me about {t}", "positive": f"a page about {t}", "negatives": [f"nothing on {t} here", f"{t} are not discussed"]}
        for t in topics
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_retrieve(tmp_path, candidates_file, *overrides):
    cfg = compose_config(["data=candidates_file", f"data.dev_path={candidates_file}", "batch_size=4", *overrides], config_name="retrieve")
    return retrieve_run(cfg, run_dir=tmp_path / "run")


def test_report_has_every_system_with_metrics_and_costs(saved_models, candidates_file, tmp_path, capsys):
    bi, ce = saved_models
    report = run_retrieve(tmp_path, candidates_file, f"bi_encoder={bi}", f"cross_encoder={ce}", "rerank_top_k=[2,50]")
    assert json.loads((tmp_path / "run" / "retrieve.json").read_text()) == json.loads(json.dumps(report))
    assert report["n_queries"] == 6 and report["corpus_size"] == 6 and report["corpus_embed_seconds"] > 0
    rows = {r["system"]: r for r in report["systems"]}
    # k=50 is clamped to the 6 documents there are.
    assert list(rows) == ["bi-encoder", "bi-encoder top-2 + cross-encoder", "bi-encoder top-6 + cross-encoder", "cross-encoder (full corpus)"]
    assert [r["cross_encoder_pairs_per_query"] for r in rows.values()] == [0, 2, 6, 6]
    assert [r["bi_encoder_passes_per_query"] for r in rows.values()] == [1, 1, 1, 0]
    for r in rows.values():
        assert all(0 <= r[m] <= 1 for m in ("mrr@10", "ndcg@10", "recall@1", "recall@10"))
        assert r["ms_per_query"] > 0
    # Reranking reorders the bi-encoder's top k, so it costs at least what the bi-encoder does.
    assert rows["bi-encoder top-2 + cross-encoder"]["ms_per_query"] > rows["bi-encoder"]["ms_per_query"]
    # Every document is in the top 10 of 6: Recall@10 is 1 whatever the order.
    assert all(r["recall@10"] == 1.0 for r in rows.values())
    table = capsys.readouterr().out
    assert all(name in table for name in rows) and "MRR@10" in table and "ms/query" in table


def test_corpus_all_and_the_full_rerank_limit(saved_models, candidates_file, tmp_path):
    bi, ce = saved_models
    report = run_retrieve(tmp_path, candidates_file, f"bi_encoder={bi}", f"cross_encoder={ce}", "corpus=all", "rerank_top_k=[3]")
    assert report["corpus_size"] == 18
    assert [r["cross_encoder_pairs_per_query"] for r in report["systems"]] == [0, 3, 18]
    report = run_retrieve(tmp_path, candidates_file, f"bi_encoder={bi}", f"cross_encoder={ce}", "corpus=all", "full_rerank_max_corpus=10", "max_queries=2")
    # The default rerank_top_k=[10, 50]: 50 is clamped to the 18 documents; 18 > 10 skips the full row.
    assert [r["system"] for r in report["systems"]] == ["bi-encoder", "bi-encoder top-10 + cross-encoder", "bi-encoder top-18 + cross-encoder"]
    assert report["n_queries"] == 2 and any("full_rerank_max_corpus=10" in n for n in report["notes"])


def test_without_cross_encoder_only_the_bi_encoder_row(saved_models, candidates_file, tmp_path):
    report = run_retrieve(tmp_path, candidates_file, f"bi_encoder={saved_models[0]}")
    assert [r["system"] for r in report["systems"]] == ["bi-encoder"]


class Oracle:
    """A cross-encoder that knows the answers: 1 for a relevant (query, document), else 0."""

    def __init__(self, data: RetrievalSet) -> None:
        self.relevant = {(data.queries[q], data.corpus[d]) for q, rel in enumerate(data.relevant) for d in rel}

    def predict(self, pairs, batch_size=32, show_progress_bar=None):
        return [float(tuple(p) in self.relevant) for p in pairs]


def test_rerank_orders_the_shortlist_by_cross_encoder_score():
    data = RetrievalSet(queries=["q0", "q1"], corpus=[f"d{i}" for i in range(12)], relevant=[{4}, {11}])
    # The bi-encoder ranks q0's answer 5th and q1's 12th (outside its top 10).
    bi_rankings = [list(range(12)), list(range(12))]
    # The bi-encoder took a second a query: a reranking pipeline pays it, the full cross-encoder not.
    rows, skipped = cross_encoder_rows(Oracle(data), data, bi_rankings, [1.0, 1.0], [2, 5, 12], full_max=100, batch_size=4)
    assert skipped is None
    by_k = {r["k"]: r for r in rows}
    # Top 2 reranked: q0's answer stays 5th (the bi-encoder's order below k), q1's stays out.
    assert by_k[2]["mrr@10"] == pytest.approx(0.2 / 2) and by_k[2]["recall@10"] == 0.5
    assert by_k[5]["mrr@10"] == pytest.approx(0.5) and by_k[5]["recall@1"] == 0.5
    assert by_k[12]["mrr@10"] == 1.0 and by_k[12]["recall@1"] == 1.0
    assert rows[-1]["system"] == "cross-encoder (full corpus)" and rows[-1]["ndcg@10"] == 1.0
    assert [r["cross_encoder_pairs_per_query"] for r in rows] == [2, 5, 12, 12]
    assert all(r["ms_per_query"] >= 1000 for r in rows[:3]) and rows[-1]["ms_per_query"] < 1000


def test_a_model_of_the_other_kind_is_refused_by_name(saved_models, candidates_file, tmp_path):
    bi, ce = saved_models
    with pytest.raises(ModelLoadError, match=rf"bi_encoder={ce} is a saved cross-encoder, not a bi-encoder"):
        run_retrieve(tmp_path, candidates_file, f"bi_encoder={ce}")
    with pytest.raises(ModelLoadError, match=rf"cross_encoder={bi} is a saved bi-encoder, not a cross-encoder"):
        run_retrieve(tmp_path, candidates_file, f"bi_encoder={bi}", f"cross_encoder={bi}")
    with pytest.raises(ModelLoadError, match="bi_encoder=.*nope: no such directory"):
        run_retrieve(tmp_path, candidates_file, f"bi_encoder={tmp_path / 'nope'}")
    assert not (tmp_path / "run" / "retrieve.json").exists()


def test_command_refusal_exits_2_with_one_message(saved_models, candidates_file, tmp_path, monkeypatch, capsys):
    # `python -m train.retrieve` in this process (a subprocess would spend its time importing torch).
    import runpy
    import sys

    args = [f"bi_encoder={saved_models[1]}", "data=candidates_file", f"data.dev_path={candidates_file}", f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", ["train/retrieve.py", *args])
    monkeypatch.delitem(sys.modules, "train.retrieve")  # runpy runs a fresh copy as __main__
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("train.retrieve", run_name="__main__")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"Error: bi_encoder={saved_models[1]} is a saved cross-encoder" in err and "Traceback" not in err


def test_config_mistakes_fail_before_anything_loads(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_config(["rerank_topk=[5]"], config_name="retrieve")
    with pytest.raises(ConfigCompositionException):
        compose_config(["corpus=everything"], config_name="retrieve")
    cfg = compose_config(["rerank_top_k=[0,10]"], config_name="retrieve")
    with pytest.raises(ConfigError, match=r"rerank_top_k=\[0, 10\]"):
        retrieve_run(cfg, run_dir=tmp_path)
    with pytest.raises(ConfigCompositionException):  # search is a section: search.backend=, search.precision=
        compose_config(["search=faiss"], config_name="retrieve")
    with pytest.raises(ConfigCompositionException):
        compose_config(["search.precision=int4"], config_name="retrieve")
    with pytest.raises(ConfigError, match=r"search.rescore_multiplier=0 \(must be"):
        retrieve_run(compose_config(["search.rescore_multiplier=0"], config_name="retrieve"), run_dir=tmp_path)
    with pytest.raises(DataError, match="data=korsts has no queries with relevant documents"):
        retrieve_run(compose_config(["data=korsts"], config_name="retrieve"), run_dir=tmp_path)


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_quantized_search_reports_its_cost_and_rescored_over_the_corpus_equals_exact(saved_models, candidates_file, tmp_path, capsys, precision):
    bi, _ = saved_models
    exact = run_retrieve(tmp_path / "exact", candidates_file, f"bi_encoder={bi}")
    # Six documents, each query's 4 × 6 best: every document is rescored against float32.
    rescored = run_retrieve(tmp_path / "q", candidates_file, f"bi_encoder={bi}", f"search.precision={precision}")
    assert exact["search"]["precision"] == "float32" and exact["search"]["bytes_per_passage"] == 4 * 32
    assert 0 < rescored["search"].pop("search_ms_per_query") < rescored["systems"][0]["ms_per_query"]
    assert rescored["search"] == {"backend": rescored["search"]["backend"], "precision": precision, "bytes_per_passage": 32 if precision == "int8" else 4,
                                  "index_mb_per_million_passages": pytest.approx((32 if precision == "int8" else 4) / 1.048576, abs=0.05),
                                  "rescore": True, "rescore_multiplier": 4, "recall@10_vs_exact_float32": 1.0}
    assert rescored["systems"][0] | {"ms_per_query": 0} == exact["systems"][0] | {"ms_per_query": 0}
    assert "recall@10 against exact float32 search 1.0000" in capsys.readouterr().out
    unscored = run_retrieve(tmp_path / "u", candidates_file, f"bi_encoder={bi}", f"search.precision={precision}", "search.rescore=false")
    assert unscored["search"]["rescore"] is False and 0 < unscored["search"]["recall@10_vs_exact_float32"] <= 1.0


def test_timing_a_sample_of_queries_leaves_the_figures_as_they_were(saved_models, candidates_file, tmp_path):
    # A million queries cannot each be timed alone; the figures must not depend on how many were.
    bi, _ = saved_models
    every = run_retrieve(tmp_path / "a", candidates_file, f"bi_encoder={bi}", "latency_queries=0", "search.backend=torch")
    sample = run_retrieve(tmp_path / "b", candidates_file, f"bi_encoder={bi}", "latency_queries=2")
    assert every["latency_queries"] == 6 and sample["latency_queries"] == 2
    assert sample["corpus_vectors_reused"]  # the same model and corpus: the first run's vectors
    for key in ("mrr@10", "ndcg@10", "recall@1", "recall@10"):
        assert sample["systems"][0][key] == every["systems"][0][key]
    assert any("the first 2 queries" in n for n in sample["notes"])
