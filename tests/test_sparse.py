"""task=sparse on the shared loop: SPLADE, inference-free SPLADE and CSR train from the real config,
their FLOPS terms reach the loss, final/ loads with bare SparseEncoder, a killed run resumes to the
same weights, and train.evaluate scores a saved sparse model."""

from __future__ import annotations

import json

import pytest
from sentence_transformers import SparseEncoder

from train.errors import ConfigError
from train.evaluate import evaluate_run
from train.run import run

from tests.conftest import FIXTURES, assert_same_weights, compose_config, resume_from_checkpoint

NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}"]


def sparse_cfg(model_dir, *extra):
    return compose_config(["debug=default", "trainer.save_every=3", f"model.name={model_dir}", "model.max_seq_length=64", "task=sparse",
                           *NLI, *extra])


def test_splade_trains_saves_and_loads_with_the_bare_library(tiny_model_dir, tmp_path):
    cfg = sparse_cfg(tiny_model_dir)
    assert cfg.loss.name.value == "splade"  # task=sparse's own default loss
    report = run(cfg, run_dir=tmp_path / "run")
    dev = report["retrieval_dev"]
    assert 0 <= dev["ndcg@10"] <= 1 and dev["n_queries"] == 3 and dev["corpus_active_dims"] > 0
    model = SparseEncoder(str(tmp_path / "run" / "final"))
    embeddings = model.encode_document(["a man plays a guitar", "비가 온다"])
    assert embeddings.shape == (2, model.tokenizer.vocab_size) and embeddings.is_sparse
    assert "SparseEncoder(" in (tmp_path / "run" / "final" / "README.md").read_text()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["retrieval_dev"]["query_active_dims"] == dev["query_active_dims"]


def test_the_document_flops_weight_makes_documents_sparser(tiny_model_dir, tmp_path):
    # The regulariser is the point of SPLADE: a large weight must leave fewer active dimensions.
    loose = run(sparse_cfg(tiny_model_dir, "loss.document_regularizer_weight=0", "loss.query_regularizer_weight=0",
                           "trainer.lr=1e-3"), run_dir=tmp_path / "loose")
    tight = run(sparse_cfg(tiny_model_dir, "loss.document_regularizer_weight=1.0", "loss.query_regularizer_weight=1.0",
                           "trainer.lr=1e-3"), run_dir=tmp_path / "tight")
    assert tight["retrieval_dev"]["corpus_active_dims"] < 0.9 * loose["retrieval_dev"]["corpus_active_dims"]


def test_inference_free_queries_take_no_forward_pass(tiny_model_dir, tmp_path):
    report = run(sparse_cfg(tiny_model_dir, "model.sparse_architecture=inference_free"), run_dir=tmp_path / "run")
    model = SparseEncoder(str(tmp_path / "run" / "final"))
    assert set(model[0].sub_modules) == {"query", "document"}
    query = model.encode_query(["a man plays a guitar"]).coalesce()
    tokens = set(model.tokenizer("a man plays a guitar")["input_ids"])
    assert set(query.indices()[1].tolist()) <= tokens  # a query activates only its own tokens: no expansion
    weights = model[0].sub_modules["query"][0].weight  # the first column trained the query route: its token weights moved from 1
    assert (weights - 1).abs().max() > 0
    assert report["retrieval_dev"]["query_active_dims"] < report["retrieval_dev"]["corpus_active_dims"]


def test_csr_keeps_exactly_k_active_dimensions(tiny_model_dir, tmp_path):
    report = run(sparse_cfg(tiny_model_dir, "model.sparse_architecture=csr", "model.csr_k=16", "loss=csr"), run_dir=tmp_path / "run")
    assert report["retrieval_dev"]["query_active_dims"] == 16 and report["retrieval_dev"]["corpus_active_dims"] == 16
    assert SparseEncoder(str(tmp_path / "run" / "final")).encode(["hello"]).shape == (1, 4 * 32)
    with pytest.raises(ConfigError, match="model.csr_k=999: .* 128 dimensions"):
        run(sparse_cfg(tiny_model_dir, "model.sparse_architecture=csr", "model.csr_k=999", "loss=csr"), run_dir=tmp_path / "bad")


def test_a_killed_sparse_run_resumes_to_the_same_weights(tiny_model_no_dropout_dir, tmp_path):
    cfg = sparse_cfg(tiny_model_no_dropout_dir, "trainer.max_steps=6")
    run(cfg, run_dir=tmp_path / "whole")
    resume_from_checkpoint(cfg, tmp_path / "whole", tmp_path / "resumed", step=3)
    assert_same_weights(tmp_path / "whole" / "final" / "model.safetensors", tmp_path / "resumed" / "final" / "model.safetensors")


def test_splade_cosent_trains_on_sts_and_distillation_needs_teacher_scores(tiny_model_dir, tmp_path):
    sts = ["debug=default", f"model.name={tiny_model_dir}", "model.max_seq_length=64", "task=sparse", "loss=splade_cosent", "data=sts_file",
           f"data.train_path={FIXTURES / 'train_small.jsonl'}", f"data.dev_path={FIXTURES / 'pairs.jsonl'}"]
    report = run(compose_config(sts), run_dir=tmp_path / "sts")
    assert -1 <= report["dev"]["spearman_dot"] <= 1 and report["dev"]["active_dims"] > 0
    with pytest.raises(Exception, match="teacher's scores"):
        run(sparse_cfg(tiny_model_dir, "loss=splade_margin_mse"), run_dir=tmp_path / "no-scores")


def test_a_dense_loss_is_refused_for_task_sparse(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="loss=cosent does not train a sparse.*Losses for task=sparse: splade"):
        run(sparse_cfg(tiny_model_dir, "loss=cosent"), run_dir=tmp_path / "run")


def test_evaluate_scores_a_saved_sparse_model(tiny_model_dir, tmp_path):
    run(sparse_cfg(tiny_model_dir), run_dir=tmp_path / "run")
    out = evaluate_run(compose_config([f"checkpoint={tmp_path / 'run' / 'final'}", "data=sts_file",
                                       f"data.path={FIXTURES / 'pairs.jsonl'}", "split=test"], config_name="evaluate"), run_dir=tmp_path / "eval")
    assert out["task"] == "sparse" and -1 <= out["test"]["spearman_dot"] <= 1 and out["test"]["active_dims"] > 0


def test_sparse_retrieval_on_beir_gives_the_librarys_figures_and_the_query_cost(tiny_model_dir, tmp_path):
    from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator

    from tests.test_beir import write_beir
    from train.data.beir import read_beir

    beir = write_beir(tmp_path / "beir")
    cfg = compose_config(["debug=default", f"model.name={tiny_model_dir}", "model.max_seq_length=64", "task=sparse", "data=beir",
                          f"data.path={beir}", "trainer.batch_size=4"])
    report = run(cfg, run_dir=tmp_path / "run")
    assert report["main_metric"] == "retrieval_ndcg@10" and report["retrieval_test"]["n_queries"] == 2
    scored = evaluate_run(compose_config([f"checkpoint={tmp_path / 'run' / 'final'}", "data=beir", f"data.path={beir}", "split=test"],
                                         config_name="evaluate"), run_dir=tmp_path / "eval")["test"]
    test = read_beir(beir, "test")
    library = SparseInformationRetrievalEvaluator(test.queries, test.corpus, {q: set(d) for q, d in test.relevant.items()}, write_csv=False,
                                                  ndcg_at_k=[10], map_at_k=[100], precision_recall_at_k=[1, 10, 100])(
        SparseEncoder(str(tmp_path / "run" / "final")))
    assert scored["ndcg@10"] == pytest.approx(library["dot_ndcg@10"]) == pytest.approx(report["retrieval_test"]["ndcg@10"])
    assert scored["corpus_active_dims"] == pytest.approx(library["corpus_active_dims"])
    # An inverted index holds a weight and a token id (4 bytes each) for every active dimension of a passage.
    assert scored["bytes_per_passage"] == pytest.approx(8 * scored["corpus_active_dims"], rel=1e-3)
    assert scored["ms_per_query"] > 0 and scored["timed_queries"] == 2


def test_lr_mapping_gives_matched_parameters_their_own_rate_and_names_a_pattern_that_matches_none(tiny_model_dir, tmp_path):
    from train.engine.setup import build_optimizer
    from train.models.sparse import build_sparse_encoder

    model = build_sparse_encoder(str(tiny_model_dir), 64, "inference_free")
    optimizer = build_optimizer(model, 2e-5, 0.01, lr_mapping={"SparseStaticEmbedding": 1e-3})
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    query_weights = model[0].sub_modules["query"][0].weight
    assert rates[id(query_weights)] == 1e-3
    assert {r for pid, r in rates.items() if pid != id(query_weights)} == {2e-5}
    assert [g["weight_decay"] for g in optimizer.param_groups[:2]] == [0.01, 0.0]  # the groups of old come first: old checkpoints load
    with pytest.raises(ConfigError, match=r"trainer.lr_mapping: 'Sparse_Static' matches no trainable parameter"):
        build_optimizer(model, 2e-5, 0.01, lr_mapping={"Sparse_Static": 1e-3})
    # From the command line, through the loop: the run trains with it and the query weights move further.
    fast = run(sparse_cfg(tiny_model_dir, "model.sparse_architecture=inference_free", "trainer.lr_mapping={SparseStaticEmbedding:1e-2}"),
               run_dir=tmp_path / "fast")
    slow = run(sparse_cfg(tiny_model_dir, "model.sparse_architecture=inference_free"), run_dir=tmp_path / "slow")
    moved = {name: (SparseEncoder(str(tmp_path / name / "final"))[0].sub_modules["query"][0].weight - 1).abs().max().item()
             for name in ("fast", "slow")}
    assert fast["steps"] == slow["steps"] and moved["fast"] > 10 * moved["slow"]


# BERT's head (`cls`) is saved with the adapter; RoBERTa's (`lm_head`, klue's layout) ties its decoder's
# bias, which an adapter file loses, so it is saved merged (and refused unmerged, below).
@pytest.mark.parametrize("backbone,merge", [("tiny_model_dir", "false"), ("tiny_klue_dir", "true")])
def test_a_lora_sparse_model_saves_its_head_and_scores_what_the_run_reported(backbone, merge, request, tmp_path):
    # The masked-LM head is fresh (the tiny backbones have none): it must train and be saved with the
    # adapter, or final/ would load another random head and score something else.
    from tests.test_beir import write_beir

    model_dir = request.getfixturevalue(backbone)
    beir = write_beir(tmp_path / "beir")
    cfg = compose_config(["debug=default", f"model.name={model_dir}", "model.max_seq_length=64", "task=sparse", "data=beir",
                          f"data.path={beir}", "trainer.batch_size=4", "peft=lora", f"peft.merge={merge}", "trainer.lr=1e-3"])
    report = run(cfg, run_dir=tmp_path / "run")
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").is_file() == (merge == "false")
    scored = evaluate_run(compose_config([f"checkpoint={final}", "data=beir", f"data.path={beir}", "split=dev"], config_name="evaluate"),
                          run_dir=tmp_path / "eval")["dev"]
    assert scored["ndcg@10"] == pytest.approx(report["retrieval_dev"]["ndcg@10"], rel=1e-4)
    # Active dimensions count values just above 0, which float noise between the two loads can flip.
    assert scored["corpus_active_dims"] == pytest.approx(report["retrieval_dev"]["corpus_active_dims"], rel=1e-2)


def test_lora_on_a_roberta_layout_sparse_model_unmerged_is_refused(tiny_klue_dir, tmp_path):
    with pytest.raises(ConfigError, match="tied bias that an adapter-only save loses. Set peft.merge=true"):
        run(sparse_cfg(tiny_klue_dir, "peft=lora"), run_dir=tmp_path / "run")


def test_dense_adds_the_bi_encoder_and_the_hybrid_of_the_two_on_the_same_queries(tiny_model_dir, tmp_path):
    from tests.test_beir import write_beir

    beir = write_beir(tmp_path / "beir")
    common = ["debug=default", f"model.name={tiny_model_dir}", "model.max_seq_length=64", "data=beir", f"data.path={beir}", "trainer.batch_size=4"]
    run(compose_config([*common, "task=sparse"]), run_dir=tmp_path / "sparse")
    dense = run(compose_config([*common, "loss=mnrl"]), run_dir=tmp_path / "dense")

    def systems(*extra):
        out = evaluate_run(compose_config([f"checkpoint={tmp_path / 'sparse' / 'final'}", "data=beir", f"data.path={beir}", "split=test",
                                           f"dense={tmp_path / 'dense' / 'final'}", *extra], config_name="evaluate"), run_dir=tmp_path / "eval")
        return out["test"], {r["system"].split(",")[0]: r for r in out["test"]["systems"]}

    scored, rows = systems("fusion=score", "fusion_weight=1.0")
    assert rows["sparse"]["ndcg@10"] == pytest.approx(scored["ndcg@10"])  # its own search gives the evaluator's figure
    assert rows["bi-encoder"]["ndcg@10"] == pytest.approx(dense["retrieval_test"]["ndcg@10"])
    assert rows["hybrid: sparse + bi-encoder"]["ndcg@10"] == pytest.approx(rows["sparse"]["ndcg@10"])  # all weight on the sparse model
    _, rows = systems("fusion=score", "fusion_weight=0.0")
    assert rows["hybrid: sparse + bi-encoder"]["ndcg@10"] == pytest.approx(rows["bi-encoder"]["ndcg@10"])
    with pytest.raises(Exception, match="scored with a sparse checkpoint"):
        evaluate_run(compose_config([f"checkpoint={tmp_path / 'dense' / 'final'}", "data=beir", f"data.path={beir}", "split=test",
                                     f"dense={tmp_path / 'dense' / 'final'}"], config_name="evaluate"), run_dir=tmp_path / "bad")


def test_the_index_built_in_chunks_and_scored_in_blocks_is_the_librarys_sparse_search(tiny_model_dir, monkeypatch):
    # Memory flat in the corpus: the index is built a few passages at a time and scored a few queries
    # at a time. Chunk and block sizes must change nothing: same matrix, same ranking as the library's.
    import numpy as np
    import torch

    import train.evaluation.sparse_figures as figures
    from train.models.sparse import build_sparse_encoder

    model = build_sparse_encoder(str(tiny_model_dir), 64, "splade")
    corpus = [f"passage {i} about {'music' if i % 3 else 'rain'} and number {i * 7}" for i in range(23)]
    queries = [f"question {i} on {'rain' if i % 2 else 'music'}" for i in range(9)]
    whole = model.encode_document(corpus, convert_to_sparse_tensor=True).to_dense()
    index = figures.sparse_index(model, corpus, batch_size=4, chunk=5)
    assert index.crow_indices().dtype == torch.int32 and index.col_indices().dtype == torch.int32
    assert torch.allclose(index.to_dense(), whole, atol=1e-6)
    expected = torch.topk(model.encode_query(queries, convert_to_sparse_tensor=True).to_dense() @ whole.T, k=10, dim=1)
    monkeypatch.setattr(figures, "INDEX_CHUNK", 4)
    monkeypatch.setattr(figures, "SCORE_ELEMENTS", 2 * len(corpus))  # two queries a block
    ids, scores, seconds = figures.sparse_search(model, queries, corpus, depth=10, timed=3)
    assert np.allclose(scores, expected.values.numpy(), atol=1e-5) and len(seconds) == 3
    assert (ids[:, 0] == expected.indices[:, 0].numpy()).all()


def test_the_growing_index_array_keeps_every_value_when_the_estimate_was_short():
    import numpy as np

    from train.evaluation.sparse_figures import _Growing

    grown = _Growing(np.int32)
    grown.reserve(3)  # the first chunk's estimate, too small for what follows
    for part in (np.arange(2), np.arange(2, 9), np.arange(9, 10)):
        grown.extend(part.astype(np.int32))
    assert grown.array().tolist() == list(range(10)) and grown.array().dtype == np.int32
