"""python -m train.mine: what a user relies on in the mined file, and the settings it refuses."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import FIXTURES, compose_config
from tests.test_cli import cli
from tests.test_config import group_options
from train.data.build import build_data
from train.errors import ConfigError, DataError
from train.mine import mine_run

NLI = FIXTURES / "nli_train_small.tsv"  # 60 premises, one entailed hypothesis each


@pytest.fixture(scope="module")
def bi_encoder_dir(tiny_model_dir, tmp_path_factory):
    from train.models.bi_encoder import build_sentence_transformer

    path = tmp_path_factory.mktemp("bi-encoder")
    build_sentence_transformer(str(tiny_model_dir), 64).save(str(path))
    return path


def mine_cfg(model_dir, out, *overrides):
    # relative_margin=null: with a random model the margin would drop an unpredictable number of candidates.
    return compose_config(
        [f"checkpoint={model_dir}", "data=nli_file", f"data.path={NLI}", f"out={out}", "relative_margin=null", *overrides],
        "mine",
    )


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_back(out, *overrides):
    cfg = compose_config(["data=candidates_file", f"data.train_path={out}", *overrides])
    return build_data(cfg.data, ("train",), "query_candidates")["train"]


def entailed(path):
    with open(path, encoding="utf-8") as f:
        return {r["sentence1"]: r["sentence2"] for r in csv.DictReader(f, delimiter="\t") if r["gold_label"] == "entailment"}


@pytest.fixture(scope="module")
def mined_nli(bi_encoder_dir, tmp_path_factory):
    """NLI fixture mined with 3 negatives a query: (out, summary, run dir)."""
    tmp_path = tmp_path_factory.mktemp("mined-nli")
    out = tmp_path / "mined.jsonl"
    return out, mine_run(mine_cfg(bi_encoder_dir, out, "num_negatives=3"), run_dir=tmp_path / "run"), tmp_path / "run"


def test_every_query_gets_its_positive_and_other_texts_as_negatives(mined_nli):
    out, summary, run_dir = mined_nli
    gold = entailed(NLI)
    records = read_jsonl(out)
    assert len(records) == len(gold) == summary["written"] == 60
    assert summary["fewer_than_asked"] == 0 and summary["negatives_min"] == 3
    for r in records:
        assert r["positive"] == gold[r["query"]]
        assert len(r["negatives"]) == len(set(r["negatives"])) == 3
        assert r["positive"] not in r["negatives"] and r["query"] not in r["negatives"]
        assert set(r["negatives"]) <= set(gold.values())  # the corpus: the data's positives
    assert json.loads((run_dir / "mine.json").read_text())["written"] == 60

    # The reranker's training data: the file reads back as data=candidates_file, positive first.
    ds = read_back(out)
    assert len(ds) == 60
    for r, row in zip(records, ds):
        assert row["query"] == r["query"]
        assert row["candidates"] == [r["positive"], *r["negatives"]]
        assert row["labels"] == [1.0, 0.0, 0.0, 0.0]


def test_the_mined_file_passes_the_training_data_checks(mined_nli, caplog):
    # `python -m train ... data=candidates_file` checks the train rows for repeats; rows hold lists.
    import datasets

    from train.data.checks import report_overlap

    ds = read_back(mined_nli[0])
    with caplog.at_level("INFO", logger="train"):
        report_overlap(datasets.concatenate_datasets([ds, ds.select(range(2))]), [("dev", ds)])
    assert "2 of 62 rows repeat an earlier row exactly" in caplog.text


def test_nli_keeps_premises_without_a_contradiction(bi_encoder_dir, tmp_path):
    # nli_small.tsv: "A child reads." has an entailed hypothesis but no contradiction; training
    # triplets would drop it (data.hard_negatives=true), mining keeps it.
    out = tmp_path / "mined.jsonl"
    mine_run(mine_cfg(bi_encoder_dir, out, f"data.path={FIXTURES / 'nli_small.tsv'}", "num_negatives=2"), run_dir=tmp_path)
    assert {r["query"]: r["positive"] for r in read_jsonl(out)} == entailed(FIXTURES / "nli_small.tsv")


def test_an_extra_corpus_adds_negative_candidates(bi_encoder_dir, tmp_path):
    extra = ["The stock market fell.", "Rain is expected tomorrow.", "A new phone was released."]
    corpus = tmp_path / "passages.txt"
    corpus.write_text("\n".join(extra) + "\n\n")
    out = tmp_path / "mined.jsonl"
    # 3 premises: each query's candidates are the 2 other positives and the 3 passages, exactly 5.
    cfg = mine_cfg(bi_encoder_dir, out, f"data.path={FIXTURES / 'nli_small.tsv'}", f"corpus={corpus}", "num_negatives=5")
    mine_run(cfg, run_dir=tmp_path)
    positives = set(entailed(FIXTURES / "nli_small.tsv").values())
    for r in read_jsonl(out):
        assert set(r["negatives"]) == (positives - {r["positive"]}) | set(extra)


def test_a_query_with_two_positives_is_one_record_and_never_its_own_negative(bi_encoder_dir, tmp_path):
    rows = [("What is a cat?", "A small pet."), ("What is a cat?", "A feline animal."), ("A cat sleeps.", "A feline is asleep."),
            ("A feline is asleep.", "A cat sleeps."), ("Who cooks?", "The chef cooks."), ("Where is Paris?", "In France.")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in rows))
    out = tmp_path / "mined.jsonl"
    mine_run(mine_cfg(bi_encoder_dir, out, "data=pairs_file", f"data.path={pairs}", "num_negatives=2", "scores=true"), run_dir=tmp_path)
    records = {r["query"]: r for r in read_jsonl(out)}
    assert len(records) == 5
    cat = records["What is a cat?"]
    assert sorted(cat["positive"]) == ["A feline animal.", "A small pet."]
    assert not set(cat["negatives"]) & set(cat["positive"])
    # "A cat sleeps." is also a text of the corpus (a positive of the swapped row): never its own negative.
    assert all(q not in r["negatives"] for q, r in records.items())
    for r in records.values():
        assert len(r["scores"]) == len(r["negatives"]) + (len(r["positive"]) if isinstance(r["positive"], list) else 1)
    ds = read_back(out, "data.columns.scores=scores")
    row = next(row for row in ds if row["query"] == "What is a cat?")
    assert row["labels"] == pytest.approx(cat["scores"]) and len(row["candidates"]) == 4


def test_an_existing_out_is_left_alone_without_overwrite(bi_encoder_dir, tmp_path):
    out = tmp_path / "mined.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(ConfigError, match="overwrite=true"):
        mine_run(mine_cfg(bi_encoder_dir, out), run_dir=tmp_path)
    assert out.read_text() == "keep me\n"
    mine_run(mine_cfg(bi_encoder_dir, out, "overwrite=true"), run_dir=tmp_path)
    assert len(read_jsonl(out)) == 60
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_cross_encoder_checkpoint_is_refused_in_one_paragraph(tiny_model_dir, tmp_path):
    from train.models.cross_encoder import build_cross_encoder

    reranker = tmp_path / "reranker"
    build_cross_encoder(str(tiny_model_dir), 64, num_labels=1).save(str(reranker))
    out = tmp_path / "mined.jsonl"
    done = cli("train.mine", f"checkpoint={reranker}", "data=nli_file", f"data.path={NLI}", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"checkpoint={reranker} is a CrossEncoder" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["num_negatives=5", "range_max=3"], "range_max=3 with range_min=0 leaves 3 ranks"),
        (["relative_margin=2"], "relative_margin=2.0 (must be a number in [0, 1]"),
        (["split=validation"], "split=validation"),
        (["out=mined.json"], "name it *.jsonl"),
        (["search.precision=ubinary", "search.rescore=false"], "quantized candidates must be rescored"),
        (["search.rescore_multiplier=0"], "search.rescore_multiplier=0 (must be"),
    ],
)
def test_bad_settings_are_refused_before_anything_loads(tmp_path, overrides, words):
    # checkpoint points nowhere: a check that passed would fail later on loading it.
    cfg = mine_cfg(tmp_path / "no-model", tmp_path / "mined.jsonl", *overrides)
    with pytest.raises(ConfigError, match=re.escape(words)):
        mine_run(cfg, run_dir=tmp_path)


def test_data_without_positives_is_refused(tmp_path):
    cfg = compose_config(["data=korsts", f"out={tmp_path / 'mined.jsonl'}", f"checkpoint={tmp_path}"], "mine")
    with pytest.raises(DataError, match="data=korsts holds no \\(query, positive\\) pairs"):
        mine_run(cfg, run_dir=tmp_path)


def test_misspelt_key_or_strategy_fails_at_compose_time():
    for override in ("num_negative=3", "sampling_strategy=best"):
        with pytest.raises(ConfigCompositionException):
            compose_config(["out=x.jsonl", override], "mine")


@pytest.mark.parametrize("group,option", [(g, o) for g, o in group_options() if g in ("model", "pooling", "data")])
def test_mine_config_composes(group, option):
    cfg = compose_config([f"{group}={option}"], "mine")
    assert cfg.split == "train" and cfg.num_negatives == 5 and cfg.out is None


def _library_records(pairs, model, extra, cfg, cross=None) -> list[dict]:
    """sentence-transformers' own mine_hard_negatives on the same pairs, grouped one record a
    query as this project's first version of train.mine did: the reference the streamed miner must equal."""
    import random

    from sentence_transformers.util import mine_hard_negatives

    random.seed(cfg.seed)
    mined = mine_hard_negatives(
        pairs, model, anchor_column_name="anchor", positive_column_name="positive", corpus=extra,
        range_min=cfg.range_min, range_max=cfg.range_max, absolute_margin=cfg.absolute_margin, relative_margin=cfg.relative_margin,
        max_score=cfg.max_score, num_negatives=cfg.num_negatives, sampling_strategy=cfg.sampling_strategy.value,
        output_format="labeled-list", output_scores=True, batch_size=cfg.batch_size, verbose=False, cross_encoder=cross,
    )
    grouped: dict = {}
    for query, texts, scores in zip(mined["anchor"], mined["positive"], mined["scores"]):
        candidates = list(zip(texts, scores))
        if query not in grouped:
            grouped[query] = ([], [c for c in candidates[1:] if c[0] != query])
        grouped[query][0].append(candidates[0])
    out = []
    for query, (positives, negatives) in grouped.items():
        if negatives:
            texts = [t for t, _ in positives]
            out.append({"query": query, "positive": texts[0] if len(texts) == 1 else texts, "negatives": [t for t, _ in negatives],
                        "scores": [s for _, s in positives + negatives]})
    return out


@pytest.mark.parametrize("overrides", [
    ["num_negatives=3"],
    ["num_negatives=4", "relative_margin=0.05", "range_min=1"],
    ["num_negatives=2", "sampling_strategy=random", "absolute_margin=0.01", "seed=7"],
    ["num_negatives=3", "max_score=0.9", "search.backend=torch"],
    # Binary codes whose candidates cover the corpus, rescored against float32: exact mining.
    ["num_negatives=3", "search.precision=ubinary", "search.rescore_multiplier=100"],
])
def test_the_streamed_miner_equals_sentence_transformers_mine_hard_negatives(bi_encoder_dir, tmp_path, overrides):
    import datasets
    from sentence_transformers import SentenceTransformer

    rows = [(a, p) for a, p in entailed(NLI).items()] + [("What is a cat?", "A small pet."), ("What is a cat?", "A feline animal.")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in rows))
    extra = ["The stock market fell.", "Rain is expected tomorrow.", "A new phone was released.", "A man plays a guitar."]
    (tmp_path / "passages.txt").write_text("\n".join(extra) + "\n")
    out = tmp_path / "mined.jsonl"
    cfg = mine_cfg(bi_encoder_dir, out, "data=pairs_file", f"data.path={pairs}", f"corpus={tmp_path / 'passages.txt'}", "scores=true", *overrides)
    mine_run(cfg, run_dir=tmp_path / "run")
    ours = read_jsonl(out)
    theirs = _library_records(datasets.Dataset.from_dict({"anchor": [a for a, _ in rows], "positive": [p for _, p in rows]}),
                              SentenceTransformer(str(bi_encoder_dir)), extra, cfg)
    assert [(r["query"], r["positive"], r["negatives"]) for r in ours] == [(r["query"], r["positive"], r["negatives"]) for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


class WordOverlapJudge:
    """A cross-encoder stand-in whose scores are plain to read (words shared, ties broken by a
    hash of the passage): the same numbers however pairs are batched, so our rescoring and the
    library's can be compared exactly."""

    num_labels = 1

    def predict(self, pairs, batch_size=32, show_progress_bar=False, convert_to_tensor=False, pool=None, **_):
        import zlib

        import torch

        scores = [len(set(q.lower().split()) & set(p.lower().split())) + (zlib.crc32(p.encode()) % 997) / 1e4 for q, p in pairs]
        return torch.tensor(scores) if convert_to_tensor else np.asarray(scores, dtype=np.float32)


def test_cross_encoder_rescoring_equals_sentence_transformers(bi_encoder_dir, tmp_path, monkeypatch):
    import datasets
    from sentence_transformers import SentenceTransformer

    from train import mine as mine_module

    monkeypatch.setattr(mine_module, "load_cross_encoder", lambda path, trust_remote_code=False: WordOverlapJudge())
    rows = list(entailed(NLI).items())
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in rows))
    common = ["data=pairs_file", f"data.path={pairs}", "scores=true", "num_negatives=3", "absolute_margin=0.5", "range_max=12"]
    cfg = mine_cfg(bi_encoder_dir, tmp_path / "mined.jsonl", *common, "cross_encoder=judge")
    mine_run(cfg, run_dir=tmp_path / "run")
    ours = read_jsonl(tmp_path / "mined.jsonl")
    theirs = _library_records(datasets.Dataset.from_dict({"anchor": [a for a, _ in rows], "positive": [p for _, p in rows]}),
                              SentenceTransformer(str(bi_encoder_dir)), None, cfg, cross=WordOverlapJudge())
    assert [(r["query"], r["negatives"]) for r in ours] == [(r["query"], r["negatives"]) for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    mine_run(mine_cfg(bi_encoder_dir, tmp_path / "plain.jsonl", *common), run_dir=tmp_path / "plain-run")
    assert [r["negatives"] for r in read_jsonl(tmp_path / "plain.jsonl")] != [r["negatives"] for r in ours]  # the judge chose otherwise


def test_a_bi_encoder_as_cross_encoder_is_refused(saved_models, tmp_path):
    bi_dir, _ = saved_models
    with pytest.raises(ConfigError, match="not a saved cross-encoder"):
        mine_run(mine_cfg(bi_dir, tmp_path / "m.jsonl", f"cross_encoder={bi_dir}"), run_dir=tmp_path / "run")
