"""Given the same batches, this project's loop reaches the weights the library's trainers reach.

The loop is this project's own code; its recipe is meant to be sentence-transformers' (AdamW with
weight decay off for biases and LayerNorm, linear warm-up then decay with the library's rounding
of the warm-up, gradient clipping at 1.0, the library's loss called on the batch). With dropout off,
fp32 and one fixed list of batches given to both sides, any difference in that recipe shows up
in the weights. What is left to differ in a real run is the batches (length-bucketed here) and
the precision, which the bench measures over seeds (docs/benchmarks.md, "Quality over seeds").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import FIXTURES

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

STEPS, BATCH, LR, WARMUP, DECAY = 10, 8, 1e-3, 0.15, 0.01  # 1.5 warm-up steps: the library rounds up


class FixedBatches:
    """One list of index batches, as a batch sampler for both trainers."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def use_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _model(task: str, model_dir):
    torch.manual_seed(0)  # the cross-encoder's fresh head: the same on both sides
    if task == "cross_encoder":
        from train.models.cross_encoder import build_cross_encoder

        return build_cross_encoder(str(model_dir), 32, 1)
    from train.models.bi_encoder import build_sentence_transformer

    return build_sentence_transformer(str(model_dir), 32, "mean")


def _ours(task: str, loss_name: str, model_dir, corpus, batches, tmp_path) -> dict[str, torch.Tensor]:
    from train.config.schema import MixedPrecision, TrainerConfig
    from train.engine.loop import train
    from train.engine.session import Workload
    from train.losses.registry import build_loss
    from train.tasks import get_task

    model = _model(task, model_dir)
    settings = TrainerConfig(batch_size=BATCH, lr=LR, warmup_ratio=WARMUP, weight_decay=DECAY, mixed_precision=MixedPrecision.no,
                             seed=0, eval_every=10**9, save_every=10**9, log_every=10**9)
    loss, spec = build_loss(loss_name.split()[0], model, task=task)
    t = get_task(task)
    rows, collate, _ = t.training_inputs(corpus, model, spec, settings)
    train(Workload(model, loss, rows, collate, FixedBatches(batches), t.train_step(spec, collate)), settings, tmp_path / "run")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _library(task: str, loss_name: str, model_dir, corpus, batches, tmp_path) -> dict[str, torch.Tensor]:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # the process-wide accelerator settings an earlier run left
    model = _model(task, model_dir)
    if task == "cross_encoder":
        from sentence_transformers.cross_encoder import CrossEncoderTrainer as Trainer
        from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as Arguments
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        loss = BinaryCrossEntropyLoss(model)
    else:
        from sentence_transformers import SentenceTransformerTrainer as Trainer
        from sentence_transformers import SentenceTransformerTrainingArguments as Arguments
        from sentence_transformers.sentence_transformer import losses

        loss = losses.MultipleNegativesRankingLoss(model) if loss_name.startswith("mnrl") else losses.CoSENTLoss(model)
    args = Arguments(
        output_dir=str(tmp_path / "library"), num_train_epochs=1, per_device_train_batch_size=BATCH, learning_rate=LR,
        warmup_steps=WARMUP, weight_decay=DECAY, max_grad_norm=1.0, seed=0, use_cpu=True, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, batch_sampler=lambda dataset, **_: FixedBatches(batches),
    )
    # n-tuples: (anchor, positive, negative_1, ..., negative_n), the columns the library takes as they are.
    columns = [c for c in corpus.column_names if c != "score"] if loss_name.startswith("mnrl") else ["sentence1", "sentence2", "score"]
    train_set = corpus.dataset.select_columns(columns)
    Trainer(model=model, args=args, train_dataset=train_set, loss=loss).train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("task, loss_name", [("bi_encoder", "cosent"), ("bi_encoder", "mnrl"), ("bi_encoder", "mnrl n-tuples"), ("cross_encoder", "bce")])
def test_the_same_batches_reach_the_library_trainers_weights(task, loss_name, tiny_model_no_dropout_dir, tmp_path):
    from train.data.corpus import CacheSettings, load_corpus
    from train.data.presets import ScoreRange, data_spec

    if loss_name == "mnrl":  # (anchor, entailed, contradicted) triplets; in-batch negatives
        spec = data_spec("nli_file", paths={"train": str(FIXTURES / "nli_train_small.tsv")})
        corpus = load_corpus(spec, "train", "triplets", True, CacheSettings(tmp_path / "cache", 1))
    elif loss_name == "mnrl n-tuples":  # a candidates file: (query, positive, negative_1, negative_2, negative_3)
        from train.data.readers import ALL_NEGATIVES, CandidateColumns

        spec = data_spec("candidates_file", paths={"train": str(FIXTURES / "candidates_ntuples.jsonl")},
                         candidate_columns=CandidateColumns(num_negatives=ALL_NEGATIVES))
        corpus = load_corpus(spec, "train", "triplets", True, CacheSettings(tmp_path / "cache", 1))
        assert corpus.column_names == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    else:
        spec = data_spec("sts_file", paths={"train": str(FIXTURES / "train_small.jsonl")}, scores=ScoreRange(0, 1))
        corpus = load_corpus(spec, "train", "scored_pairs", True, CacheSettings(tmp_path / "cache", 1))
    order = np.random.default_rng(0).permutation(len(corpus.dataset)).tolist()
    steps = min(STEPS, len(order) // BATCH)  # 7 of the NLI fixture's 60 triplets: 1.05 warm-up steps, still rounded up
    batches = [order[i : i + BATCH] for i in range(0, steps * BATCH, BATCH)]
    start = _model(task, tiny_model_no_dropout_dir).state_dict()

    ours = _ours(task, loss_name, tiny_model_no_dropout_dir, corpus, batches, tmp_path)
    library = _library(task, loss_name, tiny_model_no_dropout_dir, corpus, batches, tmp_path)

    assert ours.keys() == library.keys()
    moved = max((library[k] - start[k]).abs().max().item() for k in library if library[k].is_floating_point())
    assert moved > 1e-3, "the library's trainer did not train: the comparison would prove nothing"
    worst = max(library, key=lambda k: (ours[k] - library[k]).abs().max().item() if ours[k].is_floating_point() else 0)
    diff = (ours[worst] - library[worst]).abs().max().item()
    # fp32, one kernel order against another (fused AdamW here): agreement to float noise, far below one update.
    assert diff < 1e-3 * moved, f"{worst} differs by {diff:.2e} (updates up to {moved:.2e})"
