"""Retrieval data in the BEIR layout and KorQuAD: read with bad lines named, trained on as (query,
passage) pairs, scored against the whole corpus with the library's own figures; BM25 and hybrid rows."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config
from train.data.beir import article_split, read_beir, read_squad
from train.errors import DataError

TOPICS = ["apple orchard harvest", "river bridge traffic", "violin concert hall", "mountain snow trail", "coffee roast bean",
          "rocket launch orbit", "chess opening gambit", "tide harbor boat", "desert cactus bloom", "library archive shelf",
          "glacier ice melt", "bakery bread oven"]


def write_beir(folder, bad_qrels_line: str | None = None, duplicate_passage: bool = False):
    (folder / "qrels").mkdir(parents=True)
    passages = [{"_id": f"p{i}", "title": f"topic {i}", "text": f"a note about {t} and more"} for i, t in enumerate(TOPICS)]
    if duplicate_passage:
        passages.append(dict(passages[0]))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    queries = [{"_id": f"q{i}", "text": f"what about {t.split()[1]}"} for i, t in enumerate(TOPICS)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    splits = {"train": range(0, 8), "dev": range(8, 10), "test": range(10, 12)}
    for split, ids in splits.items():
        lines = ["query-id\tcorpus-id\tscore", *(f"q{i}\tp{i}\t1" for i in ids)]
        if split == "test" and bad_qrels_line:
            lines.insert(2, bad_qrels_line)
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def beir_dir(tmp_path):
    return write_beir(tmp_path / "beir")


def test_a_beir_split_is_its_queries_against_the_whole_corpus_with_titles_joined(beir_dir):
    test = read_beir(beir_dir, "test")
    assert set(test.queries) == {"q10", "q11"} and len(test.corpus) == len(TOPICS)
    assert test.corpus["p10"] == "topic 10 a note about glacier ice melt and more"
    assert test.relevant == {"q10": {"p10": 1}, "q11": {"p11": 1}}
    assert read_beir(beir_dir, "dev").pairs() == (["what about cactus", "what about archive"], [test.corpus["p8"], test.corpus["p9"]])


def test_bad_qrels_lines_are_named_or_skipped_and_duplicate_ids_refused(tmp_path):
    folder = write_beir(tmp_path / "a", bad_qrels_line="q10\tp99\t1")
    with pytest.raises(DataError, match=r"qrels/test.tsv, line 3: passage id 'p99' is not in corpus.jsonl"):
        read_beir(folder, "test")
    skipped = read_beir(folder, "test", on_bad_row="skip")
    assert skipped.relevant == {"q10": {"p10": 1}, "q11": {"p11": 1}}
    unknown_query = write_beir(tmp_path / "b", bad_qrels_line="nope\tp1\t1")
    with pytest.raises(DataError, match=r"line 3: query id 'nope' is not in queries.jsonl"):
        read_beir(unknown_query, "test")
    with pytest.raises(DataError, match=r"corpus.jsonl, line 13: passage id 'p0' appears twice"):
        read_beir(write_beir(tmp_path / "c", duplicate_passage=True), "test")


def test_korquad_is_split_by_article_so_no_test_paragraph_is_trained_on(shared_data):
    path = shared_data / "korquad" / "KorQuAD_v1.0_dev.json"
    assert [len(r) for r in article_split(140).values()] == [98, 21, 21]
    parts = {s: read_squad(path, s) for s in ("train", "dev", "test")}
    assert [len(p) for p in parts.values()] == [3995, 515, 1264]
    assert sum(len(p) for p in parts.values()) == 5774 and all(len(p.corpus) == 964 for p in parts.values())
    paragraphs = {s: {c for docs in p.relevant.values() for c in docs} for s, p in parts.items()}
    assert not paragraphs["train"] & paragraphs["test"] and not paragraphs["train"] & paragraphs["dev"]
    assert not set(parts["train"].queries) & set(parts["test"].queries)


def library_figures(model_dir, split):
    """The library's InformationRetrievalEvaluator on the saved model, built from the split by hand."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator(
        split.queries, split.corpus, {q: set(d) for q, d in split.relevant.items()},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10, 100], map_at_k=[100],
    )
    return evaluator(SentenceTransformer(str(model_dir)))


def test_train_on_beir_then_evaluate_gives_the_librarys_figures(tiny_model_dir, beir_dir, tmp_path):
    from train.evaluate import evaluate_run
    from train.run import run

    cfg = compose_config(["debug=default", f"model.name={tiny_model_dir}", "model.max_seq_length=64", "data=beir",
                          f"data.path={beir_dir}", "loss=mnrl", "trainer.batch_size=4"])
    report = run(cfg, run_dir=tmp_path / "run")
    assert report["main_metric"] == "retrieval_ndcg@10"
    assert set(report["retrieval_dev"]) >= {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100"}
    assert report["retrieval_test"]["n_queries"] == 2
    library = library_figures(tmp_path / "run" / "final", read_beir(beir_dir, "test"))
    scored = evaluate_run(compose_config([f"checkpoint={tmp_path / 'run' / 'final'}", "data=beir", f"data.path={beir_dir}", "split=test"],
                                         config_name="evaluate"), run_dir=tmp_path / "eval")
    ours = scored["test"]
    assert ours["ndcg@10"] == pytest.approx(library["cosine_ndcg@10"]) == pytest.approx(report["retrieval_test"]["ndcg@10"])
    assert ours["map@100"] == pytest.approx(library["cosine_map@100"]) and ours["recall@100"] == pytest.approx(library["cosine_recall@100"])
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["test"]["mrr@10"] == pytest.approx(library["cosine_mrr@10"])


def test_retrieve_adds_bm25_and_hybrid_rows(tiny_model_dir, beir_dir, tmp_path):
    from train.retrieve import retrieve_run

    cfg = compose_config([f"model.name={tiny_model_dir}", "data=beir", f"data.path={beir_dir}", "split=train", "lexical=[whitespace]",
                          "fusion=score"], config_name="retrieve")
    report = retrieve_run(cfg, run_dir=tmp_path)
    rows = {r["system"]: r for r in report["systems"]}
    assert set(rows) == {"bi-encoder", "BM25 (whitespace)", "hybrid: BM25 (whitespace) + bi-encoder, score"}
    # Each query names its topic's second word: BM25 finds every one first; a random tiny bi-encoder does not.
    assert rows["BM25 (whitespace)"]["recall@1"] == 1.0 and rows["bi-encoder"]["recall@1"] < 1.0
    assert report["n_queries"] == 8 and report["corpus_size"] == len(TOPICS)


def test_fusion_by_rank_and_by_score():
    import numpy as np

    from train.evaluation.lexical import fuse

    a, b = np.array([[1, 2, 3]]), np.array([[3, 2, 4]])
    # RRF: 3 (3rd and 1st: 1/63 + 1/61) just ahead of 2 (2nd twice: 2/62), then 1 and 4 (one 1st each... 1/61 > 1/63).
    assert fuse([a, b], depth=4).tolist() == [[3, 2, 1, 4]]
    # Scores, min-max normalised: 2 is close to the top in both (0.9 + 0.95), 1 and 3 top in one only.
    fused = fuse([a, b], [np.array([[1.0, 0.9, 0.0]]), np.array([[1.0, 0.95, 0.0]])], depth=2, method="score")
    assert fused.tolist() == [[2, 1]]


def test_fusion_weights_lean_towards_one_side():
    import numpy as np

    from train.evaluation.lexical import fuse

    a, b = np.array([[1, 2, 3]]), np.array([[3, 2, 4]])
    sa, sb = np.array([[3.0, 2.0, 1.0]]), np.array([[0.9, 0.8, 0.1]])
    assert fuse([a, b], [sa, sb], depth=3, method="score", weights=[1.0, 0.0]).tolist() == [[1, 2, 3]]
    assert fuse([a, b], [sa, sb], depth=2, method="score", weights=[0.0, 1.0]).tolist() == [[3, 2]]
    assert fuse([a, b], depth=1).tolist() == [[3]] and fuse([a, b], depth=1, weights=[0.99, 0.01]).tolist() == [[1]]  # rrf too


def test_evaluate_adds_bm25_and_hybrid_rows_to_the_dense_figures(tiny_model_dir, beir_dir, tmp_path):
    from train.evaluate import evaluate_run
    from train.retrieve import retrieve_run

    common = [f"model.name={tiny_model_dir}", "data=beir", f"data.path={beir_dir}", "split=train", "lexical=[whitespace]", "fusion_weight=0.8"]
    scored = evaluate_run(compose_config(common, config_name="evaluate"), run_dir=tmp_path / "eval")
    rows = {r["system"]: r for r in scored["train"]["systems"]}
    assert set(rows) == {"bi-encoder", "BM25 (whitespace)", "hybrid: BM25 (whitespace) + bi-encoder, rrf, BM25 weight 0.8"}
    assert rows["bi-encoder"]["ndcg@10"] == pytest.approx(scored["train"]["ndcg@10"])  # the library's figure, and ours of the same ranking
    assert rows["BM25 (whitespace)"]["recall@1"] == 1.0 and all(r["ms_per_query"] > 0 for r in rows.values())
    retrieved = {r["system"]: r for r in retrieve_run(compose_config(common, config_name="retrieve"), run_dir=tmp_path / "retrieve")["systems"]}
    for name, row in rows.items():  # the same systems as train.retrieve's, figure for figure
        assert row["ndcg@10"] == pytest.approx(retrieved[name]["ndcg@10"]) and row["map@100"] == pytest.approx(retrieved[name]["map@100"])
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["train"]["systems"][1]["system"] == "BM25 (whitespace)"


def test_kiwi_splits_particles_off_korean_words_so_bm25_matches_them():
    from train.evaluation.lexical import BM25, terms

    assert terms(["서울에서 만나요."], "whitespace") == [["서울에서", "만나요."]]
    assert "서울" in terms(["서울에서 만나요."], "kiwi")[0] and "." not in terms(["서울에서 만나요."], "kiwi")[0]
    corpus = ["서울은 한국의 수도이다", "부산은 항구 도시이다"]
    # "서울에서" shares no whitespace term with "서울은", but the morpheme 서울.
    assert BM25(corpus, "kiwi").search(["서울에서 무엇을"], 1)[0].tolist() == [[0]]
    assert BM25(corpus, "whitespace").search(["서울에서 무엇을"], 2)[1].max() == 0.0


def test_a_beir_corpus_is_read_once_into_the_cache_and_looked_up_like_a_dict(tmp_path, caplog):
    import logging
    import os

    from train.data.beir_corpus import cached_corpus

    folder = write_beir(tmp_path / "a")
    expected = {json.loads(line)["_id"]: json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()}
    with caplog.at_level(logging.INFO, logger="train.data.beir_corpus"):
        table = cached_corpus(folder / "corpus.jsonl", tmp_path / "cache")
        again = cached_corpus(folder / "corpus.jsonl", tmp_path / "cache")
    assert ["read into the cache" in r.message for r in caplog.records] == [True, False]
    assert dict(again.items()) == {k: f"{r['title']} {r['text']}" for k, r in expected.items()}
    assert "p3" in table and "p999" not in table and table.row("p3") == list(expected).index("p3")
    assert list(table.texts) == list(dict(table.items()).values())
    with pytest.raises(KeyError):
        table["p999"]
    # An edited file (another size or time) is read again, never served stale.
    path = folder / "corpus.jsonl"
    path.write_text(path.read_text() + json.dumps({"_id": "extra", "text": "one more passage"}) + "\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cached_corpus(path, tmp_path / "cache")["extra"] == "one more passage"


def test_ids_whose_hashes_collide_are_told_apart(tmp_path, monkeypatch):
    import numpy as np

    from train.data import beir_corpus

    # Every id gets one of two hashes: lookups must compare the ids, and a repeated id is still found.
    monkeypatch.setattr(beir_corpus, "hash64", lambda ids: np.array([len(i) % 2 for i in ids], dtype=np.uint64))
    folder = write_beir(tmp_path / "a")
    table = beir_corpus.cached_corpus(folder / "corpus.jsonl", tmp_path / "cache")
    assert all(table[cid].startswith("topic ") for cid in table) and table["p3"] == "topic 3 a note about mountain snow trail and more"
    assert "p99" not in table
    with pytest.raises(DataError, match="passage id 'p0' appears twice"):
        beir_corpus.cached_corpus(write_beir(tmp_path / "c", duplicate_passage=True) / "corpus.jsonl", tmp_path / "cache")
