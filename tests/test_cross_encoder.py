"""Cross-encoders end to end on the tiny model: every loss trains, the saved model loads with bare
sentence-transformers, train.evaluate recognises it, a resume ends identical, pairs are
tokenized once exactly as the model's own preprocess would."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from train.evaluate import evaluate_run
from train.engine.step_model import training_forward
from train.run import run
from tests.conftest import FIXTURES, compose_config, tiny_overrides, resume_from_checkpoint

NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "data.max_train_samples=0"]
CANDIDATES = ["data=candidates_file", f"data.train_path={FIXTURES / 'candidates_small.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}"]


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", f"data.test_path={FIXTURES / 'pairs.csv'}"))
    run_dir = tmp_path_factory.mktemp("ce-run")
    return cfg, run_dir, run(cfg, run_dir=run_dir)


def test_cross_encoder_run_saves_a_model_bare_sentence_transformers_loads_and_uses(ce_run):
    from sentence_transformers.cross_encoder import CrossEncoder

    _, run_dir, result = ce_run
    assert result["task"] == "cross_encoder" and result["loss"] == "bce" and result["main_metric"] == "spearman"
    assert set(result["dev"]) == {"pearson", "spearman", "n_pairs"} and result["test"]["n_pairs"] == 2
    for name in ("final/modules.json", "best/modules.json", "checkpoints/step-3/manifest.json", "metrics.jsonl"):
        assert (run_dir / name).exists(), name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6] and "dev_spearman" in lines[5]
    model = CrossEncoder(str(run_dir / "final"))
    scores = model.predict([("A man plays a guitar.", "A person makes music."), ("A man plays a guitar.", "It rains.")])
    assert scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()  # sigmoid of one logit
    ranked = model.rank("A man plays a guitar.", ["It rains.", "A person makes music."])
    assert sorted(r["corpus_id"] for r in ranked) == [0, 1]


def test_evaluate_recognises_a_cross_encoder_and_gives_the_runs_figures(ce_run, tmp_path):
    _, run_dir, result = ce_run
    again = evaluate_run(
        compose_config([f"checkpoint={run_dir / 'final'}", "data=sts_file", f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"], "evaluate"),
        run_dir=tmp_path,
    )
    assert again["task"] == "cross_encoder"
    assert again["dev"]["spearman"] == pytest.approx(result["dev"]["spearman"], abs=1e-6)
    assert again["dev"]["pearson"] == pytest.approx(result["dev"]["pearson"], abs=1e-6)


def test_cross_encoder_resume_from_a_checkpoint_ends_bit_identical(ce_run, tmp_path):
    cfg, run_dir, result = ce_run
    resumed_dir = tmp_path / "resumed"
    resumed = resume_from_checkpoint(cfg, run_dir, resumed_dir)
    original = load_file(str(run_dir / "final" / "model.safetensors"))
    again = load_file(str(resumed_dir / "final" / "model.safetensors"))
    assert original.keys() == again.keys() and any(k.startswith("classifier") for k in original)
    assert all(torch.equal(again[k], original[k]) for k in original)
    assert resumed["dev"] == result["dev"]


def test_pairs_tokenized_once_equal_the_models_own_preprocess(tiny_model_dir):
    from train.data.tokens import encode, fast_backend
    from train.models.cross_encoder import build_cross_encoder
    from train.tasks.cross_encoder import PairTokens

    model = build_cross_encoder(str(tiny_model_dir), max_seq_length=16)
    pairs = [
        ("A man plays a guitar.", "A person makes music."),
        ("  leading and trailing spaces  ", "한국어 문장도 같은 방식으로 토큰화된다"),
        ("a very long first sentence " * 6, "and a long second one that has to be truncated as well " * 3),
        ("short", "x"),
    ]
    # The first two as the token cache writes them; the rest tokenized on demand, as in-batch negatives are.
    rows = {"sentence1": [a for a, _ in pairs[:2]], "sentence2": [b for _, b in pairs[:2]], "score": [1.0, 0.0]}
    backend = fast_backend(model.tokenizer, model.max_seq_length, rows, "pairs", types=True)
    assert backend is not None  # the Rust backend, as the cache's build uses it
    cached, _ = encode(rows, model.tokenizer, model.max_seq_length, "pairs", types=True, backend=backend)
    ids, types = cached["pair_ids"].to_pylist(), cached["pair_types"].to_pylist()
    tokens = PairTokens(model.tokenizer, model.max_seq_length)
    tokens.use({pair: (i[0], t[0]) for pair, i, t in zip(pairs[:2], ids, types)}, torch.device("cpu"))
    ours, theirs = tokens.features(pairs), model.preprocess(pairs)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key
    assert tokens.real == int(theirs["attention_mask"].sum()) and tokens.padded == theirs["attention_mask"].numel()


def test_forward_in_chunks_gives_the_same_loss_and_gradients_with_less_padding(tiny_model_no_dropout_dir):
    """trainer.forward_chunk_rows for a cross-encoder: a batch's pairs run in length-sorted chunks,
    each cut to its own longest pair; the library's loss sees the same scores in batch order."""
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from train.models.cross_encoder import build_cross_encoder
    from train.tasks.cross_encoder import CrossEncoderStep, PairTokens

    rows = [json.loads(line) for line in (FIXTURES / "train_small.jsonl").read_text().splitlines()[:13]]
    batch = {"inputs": [[r["sentence1"] for r in rows], [r["sentence2"] + " and more" * (i % 4) for i, r in enumerate(rows)]],
             "labels": torch.tensor([r["score"] for r in rows]), "known": {}, "rows": len(rows)}
    results = {}
    for chunk_rows in (0, 4):
        torch.manual_seed(0)
        model = build_cross_encoder(str(tiny_model_no_dropout_dir), max_seq_length=32)
        step = CrossEncoderStep(PairTokens(model.tokenizer, 32, chunk_rows))
        with training_forward(model, contextlib.nullcontext, step.forward_contexts(model)):
            loss = step.loss(model, BinaryCrossEntropyLoss(model), batch)
            loss.backward()
        results[chunk_rows] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], step.stats(batch))
    (whole, whole_grads, whole_stats), (chunked, chunked_grads, chunked_stats) = results[0], results[4]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert chunked_stats.real_tokens == whole_stats.real_tokens
    assert chunked_stats.padded_tokens < whole_stats.padded_tokens


# loss -> (data overrides, main dev metric, model outputs)
LOSS_CASES = {
    "ce": (NLI, "accuracy", 3),
    "mnrl": ([*NLI, "trainer.batch_size=4"], "ndcg@10", 1),
    "lambda": ([*CANDIDATES, "trainer.batch_size=4"], "ndcg@10", 1),
    "listnet": ([*CANDIDATES, "trainer.batch_size=4"], "ndcg@10", 1),
    "bce": ([*CANDIDATES, "trainer.batch_size=8"], "ndcg@10", 1),  # one scored pair a candidate
}


@pytest.mark.parametrize("loss", list(LOSS_CASES))
def test_each_cross_encoder_loss_trains_on_its_data_and_reports_its_metric(loss, tiny_model_dir, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    overrides, metric, outputs = LOSS_CASES[loss]
    result = run(compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", f"loss={loss}", *overrides, "trainer.max_steps=4")), run_dir=tmp_path)
    assert result["main_metric"] == metric and 0 <= result["dev"][metric] <= 1
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert CrossEncoder(str(tmp_path / "final")).num_labels == outputs
    if metric == "ndcg@10":
        # NLI dev: 3 premises, one with a single candidate (nothing to rank)
        assert result["dev"]["n_queries"] == (2 if loss == "mnrl" else 12)


def test_a_cross_encoders_pooler_keeps_training(tiny_model_dir):
    """The pooler a bi-encoder never uses is frozen (DDP then needs no search for unused
    parameters); a cross-encoder's classification head reads it, so there it must keep training."""
    from train.models.cross_encoder import build_cross_encoder
    from train.models.bi_encoder import build_sentence_transformer
    from train.engine.parallel import freeze_unused_parameters

    reranker, embedder = build_cross_encoder(str(tiny_model_dir), 32), build_sentence_transformer(str(tiny_model_dir), 32)
    for model in (reranker, embedder):
        freeze_unused_parameters(model)
    pooler = lambda m: [p.requires_grad for n, p in m.named_parameters() if ".pooler." in n]
    assert pooler(reranker) and all(pooler(reranker))
    assert pooler(embedder) and not any(pooler(embedder))
