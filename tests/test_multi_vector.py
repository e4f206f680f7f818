"""task=multi_vector on the shared loop: ColBERT trains from the real config, its queries are the
library's (query length, [MASK] expansion, markers), final/ loads with bare MultiVectorEncoder, a
killed run resumes to the same weights, and train.evaluate scores a saved model (exact MaxSim,
query cost, a BM25 shortlist reranked)."""

from __future__ import annotations

import json

import pytest
import torch
from sentence_transformers import MultiVectorEncoder

from train.errors import ConfigError
from train.evaluate import evaluate_run
from train.run import run

from tests.conftest import FIXTURES, assert_same_weights, compose_config, resume_from_checkpoint

NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}"]


def mv_cfg(model_dir, *extra):
    return compose_config(["debug=default", "trainer.save_every=3", f"model.name={model_dir}", "model.max_seq_length=64", "task=multi_vector",
                           "model.multi_vector_dim=16", "model.query_length=12", *NLI, *extra])


def test_colbert_trains_saves_and_loads_with_the_bare_library(tiny_model_dir, tmp_path):
    cfg = mv_cfg(tiny_model_dir)
    assert cfg.loss.name.value == "colbert"  # task=multi_vector's own default loss
    report = run(cfg, run_dir=tmp_path / "run")
    dev = report["retrieval_dev"]
    assert 0 <= dev["ndcg@10"] <= 1 and dev["n_queries"] == 3 and dev["query_tokens"] == 12  # expanded to query_length
    model = MultiVectorEncoder(str(tmp_path / "run" / "final"))
    queries = model.encode_query(["a man plays a guitar"])
    documents = model.encode_document(["a man plays a guitar", "비가 온다"])
    assert queries[0].shape == (12, 16) and documents[0].shape[1] == 16
    assert torch.allclose(documents[0].norm(dim=1), torch.ones(len(documents[0])), atol=1e-5)  # unit token vectors
    assert model.similarity(queries, documents).shape == (1, 2)
    assert "MultiVectorEncoder(" in (tmp_path / "run" / "final" / "README.md").read_text()


def test_the_collator_gives_the_loss_the_librarys_own_query_and_document_features(tiny_model_dir):
    # Training reads ids from the token cache, not the library's tokenizer call: the two must agree,
    # or the model learns on queries it never sees at encode time.
    from train.data.batching import Collator
    from train.models.multi_vector import build_multi_vector_encoder
    from train.tasks.multi_vector import collator_for

    prompts = {"query": "[Q] ", "document": "[D] "}
    model = build_multi_vector_encoder(str(tiny_model_dir), 64, 16, 12, None, True, prompts)
    queries = ["a man plays a guitar", "a very long question with many many words that goes on and on and on"]
    documents = ["a man is playing music", "it rains"]
    tokenizer = model.tokenizer
    rows = [{"ids_anchor": tokenizer(prompts["query"] + q)["input_ids"], "ids_positive": tokenizer(prompts["document"] + d)["input_ids"]}
            for q, d in zip(queries, documents)]
    base = Collator(tokenizer.pad_token_id, token_type_ids=True, columns=("anchor", "positive"), label=None, merge=False)
    query, document = collator_for(model, base)(rows)["columns"]
    expected = model.preprocess(queries, task="query", prompt=prompts["query"])
    for key in ("input_ids", "attention_mask", "query_expansion_positions"):
        assert torch.equal(query[key], expected[key]), key
    assert query["task"] == "query" and document["task"] == "document"
    assert torch.equal(document["input_ids"], model.preprocess(documents, task="document", prompt=prompts["document"])["input_ids"])


def test_markers_are_the_models_query_and_document_prompts_in_training_and_at_encode_time(tiny_model_dir, tmp_path):
    from train.tasks.multi_vector import role_prompts

    run(mv_cfg(tiny_model_dir, "+model.prompts.query='[Q] '", "+model.prompts.document='[D] '"), run_dir=tmp_path / "run")
    model = MultiVectorEncoder(str(tmp_path / "run" / "final"))
    # Training puts them where encode does: the query column gets "query", every other "document"; data.prompts overrides.
    assert role_prompts(model, {}, ("anchor", "positive", "negative")) == {"anchor": "query", "positive": "document", "negative": "document"}
    assert role_prompts(model, {"positive": "query"}, ("anchor", "positive")) == {"anchor": "query", "positive": "query"}
    assert model.prompts["query"] == "[Q] " and model.prompts["document"] == "[D] "
    marked = model.encode_document(["it rains"])[0]
    assert len(marked) == len(model.tokenizer("[D] it rains")["input_ids"])  # encode_document put the marker before the text


def test_a_killed_colbert_run_resumes_to_the_same_weights(tiny_model_no_dropout_dir, tmp_path):
    cfg = mv_cfg(tiny_model_no_dropout_dir, "trainer.max_steps=6")
    run(cfg, run_dir=tmp_path / "whole")
    resume_from_checkpoint(cfg, tmp_path / "whole", tmp_path / "resumed", step=3)
    assert_same_weights(tmp_path / "whole" / "final" / "model.safetensors", tmp_path / "resumed" / "final" / "model.safetensors")


def test_colbert_training_raises_retrieval_on_what_it_trained_on(tiny_model_dir, tmp_path):
    # A figure that must move: scored on its own training pairs, trained MaxSim ranks each premise's
    # entailed hypothesis higher than the untrained model does.
    seen = [f"data.dev_path={FIXTURES / 'nli_train_small.tsv'}", "trainer.lr=1e-3", "trainer.batch_size=8"]
    before = run(mv_cfg(tiny_model_dir, *seen, "trainer.max_steps=1", "trainer.lr=1e-9"), run_dir=tmp_path / "before")
    after = run(mv_cfg(tiny_model_dir, *seen, "trainer.epochs=10", "trainer.max_steps=0"), run_dir=tmp_path / "after")
    assert after["retrieval_dev"]["mrr@10"] > before["retrieval_dev"]["mrr@10"] + 0.1


def test_evaluate_scores_a_saved_colbert_on_retrieval_with_its_cost_and_a_maxsim_reranked_bm25(tiny_model_dir, tmp_path):
    from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator

    from tests.test_beir import write_beir
    from train.data.beir import read_beir

    beir = write_beir(tmp_path / "beir")
    cfg = compose_config(["debug=default", f"model.name={tiny_model_dir}", "model.max_seq_length=64", "task=multi_vector", "data=beir",
                          "model.multi_vector_dim=16", f"data.path={beir}", "trainer.batch_size=4"])
    report = run(cfg, run_dir=tmp_path / "run")
    final = tmp_path / "run" / "final"
    scored = evaluate_run(compose_config([f"checkpoint={final}", "data=beir", f"data.path={beir}", "split=test", "lexical=[whitespace]"],
                                         config_name="evaluate"), run_dir=tmp_path / "eval")["test"]
    test = read_beir(beir, "test")
    library = MultiVectorInformationRetrievalEvaluator(test.queries, test.corpus, {q: set(d) for q, d in test.relevant.items()}, write_csv=False,
                                                       ndcg_at_k=[10], map_at_k=[100], precision_recall_at_k=[1, 10, 100])(MultiVectorEncoder(str(final)))
    assert scored["ndcg@10"] == pytest.approx(library["maxsim_ndcg@10"]) == pytest.approx(report["retrieval_test"]["ndcg@10"])
    # Exact search holds every scored token vector of a passage, 4 bytes a dimension.
    assert scored["bytes_per_passage"] == pytest.approx(4 * 16 * scored["document_tokens"], rel=0.05)
    assert scored["ms_per_query"] > 0 and scored["timed_queries"] == 2
    systems = {row["system"]: row for row in scored["systems"]}
    assert set(systems) == {"BM25 (whitespace)", "BM25 (whitespace) top-100 + MaxSim"}
    # The corpus is smaller than 100: reranking BM25's whole list is exact MaxSim search again.
    assert systems["BM25 (whitespace) top-100 + MaxSim"]["ndcg@10"] == pytest.approx(scored["ndcg@10"])


def test_distillation_needs_teacher_scores_and_a_dense_loss_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(Exception, match="teacher's scores"):
        run(mv_cfg(tiny_model_dir, "loss=colbert_kl_div"), run_dir=tmp_path / "no-scores")
    with pytest.raises(ConfigError, match="loss=mnrl does not train a multi-vector.*Losses for task=multi_vector: colbert"):
        run(mv_cfg(tiny_model_dir, "loss=mnrl"), run_dir=tmp_path / "dense")


def test_query_expansion_needs_a_query_length(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.query_expansion=true pads queries to model.query_length"):
        run(mv_cfg(tiny_model_dir, "model.query_length=null"), run_dir=tmp_path / "run")


def test_a_lora_colbert_saves_its_projection_and_scores_what_the_run_reported(tiny_model_dir, tmp_path):
    # The projection is a module of its own after the transformer: it must train beside the adapter and
    # be saved, or final/ would load the random one and score something else.
    from tests.test_beir import write_beir

    beir = write_beir(tmp_path / "beir")
    cfg = compose_config(["debug=default", f"model.name={tiny_model_dir}", "model.max_seq_length=64", "task=multi_vector", "data=beir",
                          "model.multi_vector_dim=16", f"data.path={beir}", "trainer.batch_size=4", "peft=lora", "trainer.lr=1e-3"])
    report = run(cfg, run_dir=tmp_path / "run")
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file()
    scored = evaluate_run(compose_config([f"checkpoint={final}", "data=beir", f"data.path={beir}", "split=dev"], config_name="evaluate"),
                          run_dir=tmp_path / "eval")["dev"]
    assert scored["ndcg@10"] == pytest.approx(report["retrieval_dev"]["ndcg@10"], rel=1e-4)
    assert report["parameters"]["trainable"] < report["parameters"]["total"] / 2


def test_a_colbert_mixture_trains_triplets_and_n_tuples_each_with_its_own_loss(tiny_model_dir, tmp_path):
    # The retrieval data shapes: NLI triplets (one hard negative) and mined n-tuples (three) in one run.
    nli = [f"'data.train_path={FIXTURES / 'nli_train_small.tsv'}'", f"'data.dev_path={FIXTURES / 'nli_small.tsv'}'"]
    tuples = [f"'data.train_path={FIXTURES / 'candidates_ntuples.jsonl'}'", f"'data.dev_path={FIXTURES / 'candidates_small.jsonl'}'"]
    datasets = (f"mixture.datasets=[{{name: nli, data: nli_file, loss: colbert, weight: 1.0, overrides: [{', '.join(nli)}]}}, "
                f"{{name: mined, data: candidates_file, loss: colbert, weight: 1.0, overrides: [{', '.join(tuples)}]}}]")
    out = run(mv_cfg(tiny_model_dir, "trainer.max_steps=0", "trainer.epochs=1", "trainer.batch_size=4", datasets), run_dir=tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {k for line in lines for k in line if k.startswith("loss_")} == {"loss_nli", "loss_mined"}
    assert [d["name"] for d in out["mixture"]["datasets"]] == ["nli", "mined"] and out["task"] == "multi_vector"


def test_colbert_on_the_klue_roberta_layout_scores_the_same_after_loading(tiny_klue_dir, tmp_path):
    # klue/roberta-base: one token type and a BERT tokenizer that still returns token_type_ids, with
    # positions counted after the padding index. final/ must score on a fresh load what the run reported.
    from tests.test_beir import write_beir

    beir = write_beir(tmp_path / "beir")
    cfg = compose_config(["debug=default", f"model.name={tiny_klue_dir}", "model.max_seq_length=64", "task=multi_vector", "data=beir",
                          "model.multi_vector_dim=16", "model.query_length=12", f"data.path={beir}", "trainer.batch_size=4"])
    report = run(cfg, run_dir=tmp_path / "run")
    final = tmp_path / "run" / "final"
    loaded = MultiVectorEncoder(str(final))
    assert "token_type_ids" not in loaded.tokenizer.model_input_names  # saved so, for a bare load
    assert loaded.encode_query(["a man plays a guitar"])[0].shape == (12, 16)
    scored = evaluate_run(compose_config([f"checkpoint={final}", "data=beir", f"data.path={beir}", "split=dev"], config_name="evaluate"),
                          run_dir=tmp_path / "eval")["dev"]
    assert scored["ndcg@10"] == pytest.approx(report["retrieval_dev"]["ndcg@10"], rel=1e-4)
    assert scored["mrr@10"] == pytest.approx(report["retrieval_dev"]["mrr@10"], rel=1e-4)


def test_maxsim_scores_fp32_token_vectors_under_bf16_autocast(tiny_model_dir, tmp_path, monkeypatch):
    # The forward runs in bf16; the loss must not: a MaxSim score near query_length moves in bf16
    # steps of 1/8, coarser than the margins between a positive and a negative.
    seen = []
    real = MultiVectorEncoder.similarity

    def similarity(self, a, b, *args, **kwargs):
        seen.extend({t.dtype for t in (a if isinstance(a, (list, tuple)) else [a]) if torch.is_tensor(t)})
        return real(self, a, b, *args, **kwargs)

    monkeypatch.setattr(MultiVectorEncoder, "similarity", similarity)
    report = run(mv_cfg(tiny_model_dir, "trainer.mixed_precision=bf16", "trainer.max_steps=2", "trainer.batch_size=4"), run_dir=tmp_path / "run")
    assert report["mixed_precision"] == "bf16" and seen
    assert set(seen) == {torch.float32}, set(seen)
