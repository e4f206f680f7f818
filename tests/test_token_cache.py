"""The token cache: a training split is read and tokenized once, then mapped by every run, resume
and process; what determines it (file content, tokenizer, max_seq_length) keys it; a build
that was killed or a damaged entry is never used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from train.data import corpus as corpus_module
from train.data import tokens as tokens_module
from train.data.corpus import CacheSettings, load_corpus
from train.data.presets import data_spec
from train.data.rows import Columns, ScoreRange
from train.errors import DataError
from train.run import run
from tests.conftest import FIXTURES, ROOT, compose_config, tiny_overrides


def entries(cache_dir: Path, kind: str) -> list[Path]:
    folder = cache_dir / kind
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def pairs_file(path: Path, rows: int, start: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + rows):
            f.write(json.dumps({"anchor": f"질문 {i} 입니다", "positive": f"answer number {i}"}, ensure_ascii=False) + "\n")
    return path


def mnrl_overrides(model_dir: Path, train: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        *tiny_overrides(model_dir), "data=pairs_file", f"data.train_path={train}", "data.dev_path=null",
        "data.max_train_samples=0", "loss=mnrl", f"data.cache_dir={cache_dir}", *extra,
    ]


def test_a_second_run_maps_the_cache_and_tokenizes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    train, cache_dir = pairs_file(tmp_path / "train.jsonl", 40), tmp_path / "cache"
    first = run(compose_config(mnrl_overrides(tiny_model_dir, train, cache_dir)), run_dir=tmp_path / "one")
    assert len(entries(cache_dir, "rows")) == 1 and len(entries(cache_dir, "tokens")) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the second run read or tokenized the corpus again")

    monkeypatch.setattr(corpus_module, "build_rows", refuse)
    monkeypatch.setattr(tokens_module, "_tokenize_shard", refuse)
    second = run(compose_config(mnrl_overrides(tiny_model_dir, train, cache_dir)), run_dir=tmp_path / "two")
    assert second["steps"] == first["steps"] and second["padding_ratio"] == first["padding_ratio"]


def test_a_changed_file_tokenizer_or_max_length_gets_its_own_entry(tiny_model_dir, tmp_path):
    from train.models.bi_encoder import build_sentence_transformer
    from train.tasks.bi_encoder import training_inputs
    from train.config.schema import TrainerConfig
    from train.losses.registry import build_loss

    cache_dir = tmp_path / "cache"
    settings = CacheSettings(cache_dir, 1)
    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=16)
    _, spec = build_loss("mnrl", model)
    train = pairs_file(tmp_path / "train.jsonl", 24)

    def inputs(max_length: int = 16):
        model.max_seq_length = max_length
        corpus = load_corpus(data_spec("pairs_file", paths={"train": str(train)}, columns=Columns("anchor", "positive")), "train", "triplets", True, settings)
        return training_inputs(corpus, model, spec, TrainerConfig(batch_size=4))

    rows, _, _ = inputs()
    assert len(entries(cache_dir, "rows")) == 1 and len(entries(cache_dir, "tokens")) == 1
    assert max(len(r) for r in rows["ids_anchor"]) <= 16
    inputs()  # the same again: nothing new
    assert len(entries(cache_dir, "rows")) == 1 and len(entries(cache_dir, "tokens")) == 1
    rows, _, _ = inputs(max_length=6)
    assert len(entries(cache_dir, "tokens")) == 2 and max(len(r) for r in rows["ids_anchor"]) == 6
    pairs_file(train, 24, start=1000)  # same size and name, other content
    rows, _, _ = inputs()
    assert len(entries(cache_dir, "rows")) == 2 and len(entries(cache_dir, "tokens")) == 3
    assert model.tokenizer.decode(rows[0]["ids_positive"], skip_special_tokens=True) == "answer number 1000"
    model.tokenizer.add_tokens(["answer number"])  # another vocabulary: other ids
    rows, _, _ = inputs()
    assert len(entries(cache_dir, "tokens")) == 4 and rows[0]["ids_positive"][1] == len(model.tokenizer) - 1


def test_the_cached_tokens_are_the_tokenizers_own(tiny_model_dir, tmp_path):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=12)
    spec = data_spec("sts_file", paths={"train": str(FIXTURES / "train_small.jsonl")}, scores=ScoreRange(0, 1))
    corpus = load_corpus(spec, "train", "scored_pairs", True, CacheSettings(tmp_path, 2))
    cached = tokens_module.token_table(corpus, model.tokenizer, 12, "columns")
    assert tokens_module.fast_backend(model.tokenizer, 12, corpus.dataset[:4], "columns", False) is not None
    for column in ("sentence1", "sentence2"):
        expected = model.tokenizer(list(corpus.dataset[column]), truncation=True, max_length=12)["input_ids"]
        assert cached.dataset[f"ids_{column}"] == expected
    lengths = [max(len(a), len(b)) for a, b in zip(cached.dataset["ids_sentence1"], cached.dataset["ids_sentence2"])]
    assert np.asarray(cached.lengths).tolist() == lengths


def test_several_shards_are_tokenized_in_parallel_processes_into_the_same_tokens(tiny_model_dir, tmp_path, monkeypatch):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=16)
    train = pairs_file(tmp_path / "train.jsonl", 50)
    spec = data_spec("pairs_file", paths={"train": str(train)}, columns=Columns("anchor", "positive"))
    one = tokens_module.token_table(load_corpus(spec, "train", "triplets", True, CacheSettings(tmp_path / "a", 1)), model.tokenizer, 16, "columns")
    monkeypatch.setattr(corpus_module, "SHARD_ROWS", 16)  # 4 shards
    corpus = load_corpus(spec, "train", "triplets", True, CacheSettings(tmp_path / "b", 2))
    assert [rows for _, rows in corpus.shards] == [16, 16, 16, 2]
    four = tokens_module.token_table(corpus, model.tokenizer, 16, "columns")
    assert four.entry.manifest["workers"] == 2 and len(four.entry.manifest["shards"]) == 4
    assert four.dataset.to_dict() == one.dataset.to_dict()
    assert np.array_equal(np.asarray(four.lengths), np.asarray(one.lengths))
    # Pieces inside one shard: record batches of 8 rows, pieces of about 13 (rows 0-16, 16-32, 32-50).
    monkeypatch.setattr(corpus_module, "SHARD_ROWS", 1000)
    monkeypatch.setattr(corpus_module, "CHUNK_ROWS", 8)
    monkeypatch.setattr(tokens_module, "CHUNK_ROWS", 8)
    monkeypatch.setattr(tokens_module, "MIN_PIECE_ROWS", 10)
    corpus = load_corpus(spec, "train", "triplets", True, CacheSettings(tmp_path / "c", 2))
    assert len(corpus.shards) == 1
    three = tokens_module.token_table(corpus, model.tokenizer, 16, "columns")
    assert len(three.entry.manifest["shards"]) == 3
    assert three.dataset.to_dict() == one.dataset.to_dict()
    assert np.array_equal(np.asarray(three.lengths), np.asarray(one.lengths))
    # A piece that starts and ends inside record batches (a shard holding the ends of two files).
    import datasets

    name, lengths = tokens_module._tokenize_shard(corpus.shards[0][0], 5, 37, 99, model.tokenizer, 16, "columns", False, str(tmp_path))
    assert datasets.Dataset.from_file(str(tmp_path / name)).to_dict() == one.dataset.select(range(5, 37)).to_dict()
    assert lengths.tolist() == np.asarray(one.lengths)[5:37].tolist()


def test_a_killed_build_leaves_nothing_that_is_used(tmp_path):
    """A build killed part way (here: SIGKILL while the rows are being written) leaves only a hidden
    temporary folder; the next run builds the entry anew, and the result is complete."""
    cache_dir = tmp_path / "cache"
    train = pairs_file(tmp_path / "train.jsonl", 300_000)
    script = (
        "import sys, time\n"
        "from train.data import corpus\n"
        "from train.data.presets import data_spec\nfrom train.data.rows import Columns\n"
        "write = corpus.RowWriter.write\n"
        "def slow(self, table):\n"
        "    write(self, table)\n"
        "    if self.rows >= 100_000: print('writing', flush=True); time.sleep(60)\n"
        "corpus.RowWriter.write = slow\n"
        f"corpus.load_corpus(data_spec('pairs_file', paths={{'train': {str(train)!r}}}, columns=Columns('anchor', 'positive')), "
        f"'train', 'triplets', True, corpus.CacheSettings.make({str(cache_dir)!r}, 1))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "EMBED_CACHE_SUBPROCESS_BYTES": str(1 << 40)})
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert entries(cache_dir, "rows") == []
    left = [p.name for p in (cache_dir / "rows").iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1
    corpus = load_corpus(data_spec("pairs_file", paths={"train": str(train)}, columns=Columns("anchor", "positive")),
                         "train", "triplets", True, CacheSettings(cache_dir, 1))
    assert corpus.entry.built and len(corpus) == 300_000 and corpus.dataset[299_999]["anchor"] == "질문 299999 입니다"
    assert not any(p.name.endswith(".tmp") for p in (cache_dir / "rows").iterdir())  # the killed build's folder is gone


def test_a_damaged_entry_is_rebuilt_not_read(tmp_path):
    train = pairs_file(tmp_path / "train.jsonl", 30)
    spec = data_spec("pairs_file", paths={"train": str(train)}, columns=Columns("anchor", "positive"))
    settings = CacheSettings(tmp_path / "cache", 1)
    first = load_corpus(spec, "train", "triplets", True, settings)
    shard = first.shards[0][0]
    del first
    with open(shard, "r+b") as f:  # a truncated file: its size no longer matches the manifest
        f.truncate(shard.stat().st_size // 2)
    again = load_corpus(spec, "train", "triplets", True, settings)
    assert again.entry.built and len(again) == 30 and again.dataset[29]["positive"] == "answer number 29"


def test_no_text_twice_in_a_batch_from_the_cached_hashes(tmp_path):
    # NLI rows: each premise comes with several hypotheses, so anchors repeat across rows.
    from train.data.batching import NoDuplicatesBatchSampler

    nli = tmp_path / "nli.tsv"
    nli.write_text("sentence1\tsentence2\tgold_label\n" + "".join(
        f"premise {i % 40}\thypothesis {i % 97}\t{('entailment', 'contradiction')[i // 40 % 2]}\n" for i in range(400)
    ))
    corpus = load_corpus(data_spec("nli_file", paths={"train": str(nli)}), "train", "triplets", True, CacheSettings(tmp_path, 1))
    assert corpus.column_names == ["anchor", "positive", "negative"]
    anchors = Counter(corpus.dataset["anchor"])
    assert max(anchors.values()) > 1
    texts = list(zip(corpus.dataset["anchor"], corpus.dataset["positive"], corpus.dataset["negative"]))
    for group in (1, 2):
        sampler = NoDuplicatesBatchSampler(corpus.hashes, 4, seed=0, group=group)
        batches = sampler.batches(0)
        assert batches
        for start in range(0, len(batches), group):
            global_batch = [i for b in batches[start : start + group] for i in b]
            assert max(Counter(t for i in global_batch for t in texts[i]).values()) == 1


def test_a_bad_row_names_file_and_line_when_the_split_is_read_in_a_subprocess(tmp_path, monkeypatch):
    train = pairs_file(tmp_path / "train.jsonl", 20)
    lines = train.read_text().splitlines()
    lines[12] = json.dumps({"anchor": "", "positive": "x"})
    train.write_text("\n".join(lines) + "\n")
    spec = data_spec("pairs_file", paths={"train": str(train)}, columns=Columns("anchor", "positive"))
    monkeypatch.setenv("EMBED_CACHE_SUBPROCESS_BYTES", "0")
    with pytest.raises(DataError, match=r"train.jsonl, line 13: empty sentence in 'anchor'"):
        load_corpus(spec, "train", "triplets", True, CacheSettings(tmp_path / "cache", 1))
    skipping = data_spec("pairs_file", paths={"train": str(train)}, columns=Columns("anchor", "positive"), on_bad_row="skip")
    corpus = load_corpus(skipping, "train", "triplets", True, CacheSettings(tmp_path / "cache", 1))
    assert len(corpus) == 19 and corpus.entry.manifest["notes"] == [
        ["warning", f"{train}: skipped 1 bad rows of 20 (1 × empty sentence in 'anchor'; first: line 13: empty sentence in 'anchor')"]
    ]


def test_a_json_lines_column_first_seen_late_is_found_and_a_missing_one_is_named(tmp_path):
    from train.data.readers import read_pairs_file

    path = tmp_path / "late.jsonl"
    rows = [{"anchor": f"a{i}", "positive": f"p{i}"} for i in range(1500)]
    rows[1400]["negative"] = "n"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = read_pairs_file(path, negative="negative", on_bad_row="skip")
    assert len(ds) == 1 and ds[0] == {"anchor": "a1400", "positive": "p1400", "negative": "n"}
    with pytest.raises(DataError, match=r"no column data.columns.negative='hard'. The file's columns are: anchor, positive, negative"):
        read_pairs_file(path, negative="hard")


def test_two_processes_share_one_cache(tiny_model_dir, tmp_path):
    from tests.test_multiprocess_run import launch

    train, cache_dir = pairs_file(tmp_path / "train.jsonl", 64), tmp_path / "cache"
    done = launch([*mnrl_overrides(tiny_model_dir, train, cache_dir, "trainer.max_steps=3"), f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(entries(cache_dir, "rows")) == 1 and len(entries(cache_dir, "tokens")) == 1
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["num_processes"] == 2


@pytest.mark.parametrize("kind", ["pairs", "candidates"])
def test_train_pairs_that_are_also_dev_pairs_are_reported(tmp_path, caplog, kind):
    # The pairs corpus is matched by its cached hashes, the candidates corpus a chunk of rows at a time;
    # either way only real matches count (a pair and its swap are the same pair).
    import datasets

    from train.data.checks import report_overlap

    path = tmp_path / f"{kind}.jsonl"
    if kind == "pairs":
        rows = [{"anchor": f"q{i}", "positive": f"p{i}"} for i in range(50)] + [{"anchor": "q3", "positive": "p3"}]
        spec = data_spec("pairs_file", paths={"train": str(path)}, columns=Columns("anchor", "positive"))
        shape = "triplets"
    else:
        rows = [{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"]} for i in range(50)] + [{"query": "q3", "positive": "p3", "negatives": ["n3"]}]
        spec = data_spec("candidates_file", paths={"train": str(path)})
        shape = "query_candidates"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = load_corpus(spec, "train", shape, True, CacheSettings(tmp_path / "cache", 1))
    dev = datasets.Dataset.from_dict({"anchor": ["p3", "q7", "zz"], "positive": ["q3", "p8", "p9"]})
    with caplog.at_level("INFO", logger="train"):
        report_overlap(corpus, [("dev", dev)])
    assert "train: 1 of 51 rows repeat an earlier row exactly" in caplog.text
    assert "2 train rows (1 distinct pairs) also occur in dev, e.g. 'p3 / q3'" in caplog.text


def test_an_entry_another_process_renamed_into_place_first_is_used(tmp_path, monkeypatch):
    # Where file locks do not hold (some network filesystems), two builders can race; the second
    # rename finds the first one's complete entry and uses it instead of failing.
    from train.data import cache

    key = {"what": "test"}

    def build(out):
        (out / "a.bin").write_bytes(b"x" * 10)
        # The other process finishes first, while this build is still writing.
        other = tmp_path / "kind" / cache.key_digest(key)
        if not other.exists():
            other.mkdir(parents=True)
            (other / "a.bin").write_bytes(b"y" * 10)
            (other / cache.MANIFEST).write_text(json.dumps({"version": cache.CACHE_VERSION, "key": key, "files": {"a.bin": 10}, "by": "other"}))
        return {"by": "us"}

    entry = cache.cached(tmp_path, "kind", key, build)
    assert not entry.built and entry.manifest["by"] == "other" and entry.file("a.bin").read_bytes() == b"y" * 10
    assert [p.name for p in (tmp_path / "kind").iterdir() if p.name.endswith(".tmp")] == []


def test_tokenization_is_cut_into_pieces_for_every_process():
    from train.data.corpus import CHUNK_ROWS
    from train.data.tokens import MIN_PIECE_ROWS, pieces

    shards = [(Path(f"rows-{i}"), 250_000) for i in range(4)] + [(Path("rows-4"), 70_000)]
    cut = pieces(shards, 1_070_000, 16)
    assert len(cut) >= 16  # two a process where the rows allow it
    assert [(s, e) for _, s, e in cut if _ == Path("rows-4")] == [(0, 70_000)]
    for path, count in shards:  # contiguous, whole shards, never across one
        mine = [(s, e) for p, s, e in cut if p == path]
        assert mine[0][0] == 0 and mine[-1][1] == count and all(a[1] == b[0] for a, b in zip(mine, mine[1:]))
    assert all(e - s >= MIN_PIECE_ROWS - CHUNK_ROWS and s % CHUNK_ROWS == 0 for p, s, e in cut)
    assert pieces(shards, 260_000, 2)[-1] == (Path("rows-1"), 0, 10_000)  # only the first 260,000 rows
