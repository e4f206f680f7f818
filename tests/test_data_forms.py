"""Data in the forms users have it: `save_to_disk` folders, Hub-style shard folders, spreadsheets,
and a bad file that fails before any model is loaded, with its message shown once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import datasets
import pytest

from tests.conftest import FIXTURES, ROOT, compose_config, tiny_overrides
from train.data.build import build_corpus, build_data
from train.errors import DataError
from train.run import run

TRAIN = FIXTURES / "train_small.jsonl"  # 80 scored pairs
DEV = FIXTURES / "pairs.jsonl"  # 3


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset(path) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows(path))


@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory):
    """A DatasetDict as `save_to_disk` writes it: train (80 rows, two Arrow shards), validation (3), test (2)."""
    folder = tmp_path_factory.mktemp("saved") / "dict"
    train, dev = dataset(TRAIN), dataset(DEV)
    datasets.DatasetDict({"train": train, "validation": dev, "test": dev.select([0, 1])}).save_to_disk(
        str(folder), num_shards={"train": 2, "validation": 1, "test": 1}
    )
    return folder


def overrides(model_dir, tmp_path, *extra):
    return tiny_overrides(model_dir, f"data.cache_dir={tmp_path / 'cache'}", *extra)


def test_a_saved_dataset_folder_trains(tiny_model_dir, tmp_path):
    folder = tmp_path / "saved"
    dataset(TRAIN).save_to_disk(str(folder), num_shards=2)
    cfg = compose_config(overrides(tiny_model_dir, tmp_path, f"data.train_path={folder}"))
    corpus = build_corpus(cfg.data, "scored_pairs")
    assert corpus.entry.manifest["rows"] == 80  # both Arrow files
    expected = rows(TRAIN)[:64]
    assert corpus.dataset["sentence1"] == [r["sentence1"] for r in expected]
    result = run(cfg, run_dir=tmp_path / "run")
    assert result["steps"] == 6 and result["dev"]["n_pairs"] == 3


def test_a_saved_dataset_dict_gives_each_split_its_own(tiny_model_dir, tmp_path, saved_dict):
    paths = [f"data.{s}_path={saved_dict}" for s in ("train", "dev", "test")]
    cfg = compose_config(overrides(tiny_model_dir, tmp_path, *paths))
    splits = build_data(cfg.data, ("dev", "test"))
    assert splits["dev"]["sentence1"] == [r["sentence1"] for r in rows(DEV)]  # validation is the dev split
    assert len(splits["test"]) == 2
    assert build_corpus(cfg.data, "scored_pairs").entry.manifest["rows"] == 80
    result = run(cfg, run_dir=tmp_path / "run")
    assert result["dev"]["n_pairs"] == 3 and result["test"]["n_pairs"] == 2


def test_a_saved_dataset_dict_without_the_split_says_which_it_has(tmp_path, saved_dict):
    folder = tmp_path / "only-train"
    datasets.DatasetDict({"train": dataset(TRAIN)}).save_to_disk(str(folder))
    cfg = compose_config(["data=sts_file", f"data.train_path={TRAIN}", f"data.dev_path={folder}"])
    with pytest.raises(DataError, match=r"only-train: a saved DatasetDict with the splits train; none is the dev split"):
        build_data(cfg.data, ("dev",))


@pytest.mark.parametrize("layout", ["data/{split}-{i:05d}-of-{n:05d}.parquet", "{split}-{i:05d}-of-{n:05d}.parquet"])
def test_a_parquet_shard_folder_reads_every_shard_of_the_split(tmp_path, layout):
    folder = tmp_path / "hub"
    train, dev = dataset(TRAIN), dataset(DEV)
    for split, ds, n in (("train", train, 3), ("validation", dev, 1)):
        for i in range(n):
            path = folder / layout.format(split=split, i=i, n=n)
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.shard(n, i, contiguous=True).to_parquet(str(path))
    (folder / "README.md").write_text("# a dataset card\n")
    cfg = compose_config(["data=sts_file", f"data.train_path={folder}", f"data.dev_path={folder}", "data.max_train_samples=0"])
    splits = build_data(cfg.data, ("train", "dev"))
    assert splits["train"]["sentence2"] == [r["sentence2"] for r in rows(TRAIN)]  # 80 rows, in shard order
    assert splits["dev"]["sentence2"] == [r["sentence2"] for r in rows(DEV)]


def test_a_folder_of_jsonl_shards_names_the_shard_of_a_bad_row(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    lines = TRAIN.read_text().splitlines()
    (folder / "part-1.jsonl").write_text("\n".join(lines[:40]) + "\n")
    (folder / "part-2.jsonl").write_text("\n".join(lines[40:]) + '\n{"sentence1": "a", "sentence2": "", "score": 0.5}\n')
    cfg = compose_config(["data=sts_file", f"data.train_path={folder}", "data.max_train_samples=0"])
    with pytest.raises(DataError, match=r"part-2\.jsonl, line 41: empty sentence in 'sentence2'"):
        build_data(cfg.data, ("train",))
    cfg.data.on_bad_row = "skip"
    assert len(build_data(cfg.data, ("train",))["train"]) == 80


def write_xlsx(path):
    with zipfile.ZipFile(path, "w") as z:  # what an .xlsx is: a zip of XML parts
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return path


@pytest.mark.parametrize("extra", [[], ["data.format=csv"]])
def test_an_excel_file_is_told_to_be_saved_as_csv(tmp_path, extra):
    book = write_xlsx(tmp_path / "scores.xlsx")
    cfg = compose_config(["data=sts_file", f"data.train_path={book}", *extra])
    with pytest.raises(DataError, match=r"scores\.xlsx: is a spreadsheet.*Save it as CSV") as e:
        build_data(cfg.data, ("train",))
    assert "not valid UTF-8" not in str(e.value) and "cp949" not in str(e.value)


def test_an_excel_file_under_a_csv_name_is_told_what_it_is(tmp_path):
    book = write_xlsx(tmp_path / "scores.csv")
    cfg = compose_config(["data=sts_file", f"data.train_path={book}"])
    with pytest.raises(DataError, match=r"scores\.csv: not a text file but a zip archive: an Excel workbook.*Save it as CSV"):
        build_data(cfg.data, ("train",))


def test_a_bad_data_file_fails_before_the_model_loads_and_is_said_once(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence1\tsentence2\tscore\na man\ta woman\tx\n")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "train", "debug=default", f"model.name={tmp_path / 'no-such-model'}", "data=sts_file",
         f"data.train_path={bad}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300, check=False,
    )
    message = "bad.tsv, line 2: score 'score' is not a number ('x')"
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count(message) == 1 and done.stderr.startswith("Error: ") and "Traceback" not in done.stderr
    assert message not in done.stdout  # the console's log does not say it a second time
    assert "no-such-model" not in done.stdout + done.stderr  # the model was never looked for
    assert message in (run_dir / "__main__.log").read_text()  # the job's log keeps it (train.report reads it)
