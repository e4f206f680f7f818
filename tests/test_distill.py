"""Distillation: a candidates file with a teacher's scores (python -m train.score) trains MarginMSE and
KL-divergence bi-encoders and an MSE cross-encoder; the rows carry the teacher's scores of their own
positive and negatives, and the loss is the library's on the same batch."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config, tiny_overrides
from train.data.build import build_corpus
from train.errors import DataError

STEPS = ["trainer.max_steps=3", "trainer.batch_size=4", "trainer.eval_every=0", "data.max_train_samples=0"]


def scored_file(path: Path, rows: int = 16) -> Path:
    """Each query with a positive and three negatives, and made-up teacher scores (not 0/1)."""
    with path.open("w") as f:
        for i in range(rows):
            negatives = [f"wrong answer {i}-{k}" for k in range(3)]
            f.write(json.dumps({"query": f"question {i} about topic {i}", "positive": f"answer {i} for topic {i}",
                                "negatives": negatives, "scores": [9.0 + i / 10, 2.5, 7.25, -1.0]}) + "\n")
    return path


def data(path: Path, *extra: str) -> list[str]:
    return ["data=candidates_file", f"data.train_path={path}", f"data.dev_path={path}", "data.columns.scores=scores", *extra]


def test_rows_carry_the_teachers_scores_of_their_own_candidates(tmp_path):
    corpus = build_corpus(compose_config(data(scored_file(tmp_path / "s.jsonl"))).data, "triplets")
    assert corpus.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3", "scores"]
    row = corpus.dataset[3]
    # Best-scored first: the positive (9.3), then the negatives by score (7.25, 2.5, -1.0).
    assert row["scores"] == pytest.approx([9.3, 7.25, 2.5, -1.0])
    assert row["negative_1"] == "wrong answer 3-1" and row["negative_3"] == "wrong answer 3-2"


@pytest.mark.parametrize("loss", ["margin_mse", "kl_div"])
def test_a_bi_encoder_distils_the_scores_with_the_librarys_loss(loss, tmp_path, tiny_model_dir):
    from sentence_transformers.sentence_transformer import losses

    from train.engine.settings import TrainerConfig
    from train.losses.registry import build_loss
    from train.models.bi_encoder import build_sentence_transformer
    from train.run import run
    from train.tasks.bi_encoder import BiEncoderStep, training_inputs

    path = scored_file(tmp_path / "s.jsonl")
    result = run(compose_config(tiny_overrides(tiny_model_dir, *data(path), f"loss={loss}", *STEPS)), run_dir=tmp_path / "run")
    assert result["steps"] == 3
    corpus = build_corpus(compose_config(data(path)).data, "triplets")
    model = build_sentence_transformer(str(tiny_model_dir), 32, "mean").eval()
    loss_fn, spec = build_loss(loss, model)
    rows, collate, sampler = training_inputs(corpus, model, spec, TrainerConfig(batch_size=4, seed=0))
    batch_rows = sampler.batches(0)[0]
    batch = collate([rows[i] for i in batch_rows])
    assert batch["labels"].shape == (4, 4)
    step = BiEncoderStep(True, collate.packed is not None)
    with ExitStack() as stack, torch.no_grad():
        for context in step.forward_contexts(model):
            stack.enter_context(context())
        ours = step.loss(model, loss_fn, batch)
    features = [model.preprocess([corpus.dataset[i][c] for i in batch_rows]) for c in corpus.column_names if c != "scores"]
    labels = torch.tensor([corpus.dataset[i]["scores"] for i in batch_rows])
    library = losses.MarginMSELoss(model) if loss == "margin_mse" else losses.DistillKLDivLoss(model)
    with torch.no_grad():
        assert ours.item() == pytest.approx(library(features, labels).item(), rel=1e-4, abs=1e-5)


def test_a_distillation_loss_without_teacher_scores_is_refused(tmp_path, tiny_model_dir):
    from train.run import run

    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"query": f"q {i}", "positive": f"p {i}", "negatives": [f"n {i}"]}) + "\n" for i in range(8)))
    cfg = compose_config(tiny_overrides(tiny_model_dir, "data=candidates_file", f"data.train_path={plain}", f"data.dev_path={plain}",
                                        "loss=margin_mse", *STEPS))
    with pytest.raises(DataError, match="learns a teacher's scores.*python -m train.score"):
        run(cfg, run_dir=tmp_path / "run")


def test_a_cross_encoder_regresses_onto_the_teachers_scores(tmp_path, tiny_model_dir):
    from train.run import run

    path = scored_file(tmp_path / "s.jsonl")
    cfg = compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", *data(path), "loss=mse", *STEPS))
    result = run(cfg, run_dir=tmp_path / "run")
    assert result["steps"] == 3 and result["loss"] == "mse"


def test_a_cross_encoder_distils_margins_with_the_librarys_loss(tmp_path, tiny_model_dir):
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    from train.engine.settings import TrainerConfig
    from train.losses.registry import build_loss
    from train.models.cross_encoder import build_cross_encoder
    from train.run import run
    from train.tasks.cross_encoder import CrossEncoderStep, training_inputs

    path = scored_file(tmp_path / "s.jsonl")
    result = run(compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", *data(path), "loss=margin_mse", *STEPS)),
                 run_dir=tmp_path / "run")
    assert result["steps"] == 3 and result["loss"] == "margin_mse"
    corpus = build_corpus(compose_config(data(path)).data, "triplets")
    torch.manual_seed(0)
    model = build_cross_encoder(str(tiny_model_dir), 32, 1).eval()
    loss_fn, spec = build_loss("margin_mse", model, task="cross_encoder")
    rows, collate, sampler = training_inputs(corpus, model, spec, TrainerConfig(batch_size=4, seed=0, padding_free=False))
    first = sampler.batches(0)[0]
    batch = collate([rows[i] for i in first])
    assert batch["labels"].shape == (4, 4) and len(batch["inputs"]) == 5  # query, positive, three negatives
    torch.testing.assert_close(batch["labels"], torch.tensor([corpus.dataset[i]["scores"] for i in first]))  # the positive's, then each negative's
    step = CrossEncoderStep(collate.tokens)
    with ExitStack() as stack, torch.no_grad():
        for context in step.forward_contexts(model):
            stack.enter_context(context())
        ours = step.loss(model, loss_fn, batch)
    with torch.no_grad():
        theirs = MarginMSELoss(model)(batch["inputs"], batch["labels"])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-4, abs=1e-6)
    moved = batch["labels"].clone()
    moved[:, 1] += 3.0  # another teacher margin: another loss
    with torch.no_grad():
        assert MarginMSELoss(model)(batch["inputs"], moved).item() != pytest.approx(theirs.item(), rel=1e-3)
