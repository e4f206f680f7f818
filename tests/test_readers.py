"""Loaders on small fixtures: formats, the STS-B file quirks, bad rows named by file and line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURES
from train.data.presets import BUNDLED_DIR, load_splits, load_sts_splits
from train.data.readers import read_sts_file, read_stsb_official
from train.data.rows import Columns, ScoreRange
from train.errors import DataError


def test_stsb_official_quirks():
    # CRLF endings, no header, quotes inside sentences, two extra trailing fields on one line.
    ds = read_stsb_official(FIXTURES / "stsb_official.csv")
    assert len(ds) == 5
    assert ds[2]["sentence1"] == 'A dog in a "superman" shirt sleeps on a blanket.'
    assert ds[3]["sentence1"] == 'Obama signs "historic" bill.'
    assert ds[3]["sentence2"] == 'A cat "sat" on the mat.'
    assert not ds[0]["sentence2"].endswith("\r")
    assert ds["score"] == pytest.approx([1.0, 0.76, 0.8, 0.08, 0.25])


def test_korsts_tsv_with_header_and_quotes():
    ds = read_sts_file(FIXTURES / "korsts_small.tsv", "tsv")
    assert ds.column_names == ["sentence1", "sentence2", "score"]
    assert ds[2]["sentence1"] == '그가 "안녕"이라고 말했다.'
    assert ds["score"] == pytest.approx([1.0, 0.76, 0.12])


def test_klue_style_json_with_nested_label():
    ds = read_sts_file(FIXTURES / "klue_sts_small.json", columns=Columns(score="labels.label"), scores=ScoreRange(0, 5))
    assert len(ds) == 5
    assert ds["score"] == pytest.approx([0.98, 0.28, 0.26, 0.74, 0.0])


def test_jsonl_skips_blank_lines_and_csv_handles_quoting():
    assert len(read_sts_file(FIXTURES / "pairs.jsonl", scores=ScoreRange(0, 1))) == 3
    ds = read_sts_file(FIXTURES / "pairs.csv", scores=ScoreRange(0, 1))
    assert ds[0]["sentence1"] == 'He said, "hi".'


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"a": ["x y", "z"], "b": ["y x", "w"], "label": [4.0, 1.0]}), path)
    ds = read_sts_file(path, columns=Columns("a", "b", "label"), scores=ScoreRange(0, 5))
    assert ds["score"] == pytest.approx([0.8, 0.2])


def test_bad_row_error_names_file_line_and_reason():
    with pytest.raises(DataError) as e:
        read_sts_file(FIXTURES / "bad_rows.jsonl", scores=ScoreRange(0, 1))
    message = str(e.value)
    assert "bad_rows.jsonl, line 2" in message
    assert "empty sentence in 'sentence2'" in message
    assert "data.on_bad_row=skip" in message


@pytest.mark.parametrize(
    "line,reason",
    [
        ('{"sentence1": "a", "sentence2": "b", "score": "high"}', "score 'score' is not a number ('high')"),
        ('{"sentence1": "a", "score": 0.5}', "missing field 'sentence2'"),
        ('{"sentence1": "a", "sentence2": "b", "score": 1.7}', "score 1.7 is outside [0, 1]"),
        ('{"sentence1": "a", "sentence2": "b", "score": null}', "is not a number"),
        ('{"sentence1": 5, "sentence2": "b", "score": 0.5}', "field 'sentence1' is not text"),
    ],
)
def test_each_kind_of_bad_row(tmp_path, line, reason):
    path = tmp_path / "one.jsonl"
    path.write_text('{"sentence1": "ok", "sentence2": "fine", "score": 0.5}\n' + line + "\n")
    with pytest.raises(DataError) as e:
        read_sts_file(path, scores=ScoreRange(0, 1))
    assert f"{path}, line 2: " in str(e.value)
    assert reason in str(e.value)


def test_skip_bad_rows_counts_them(caplog):
    ds = read_sts_file(FIXTURES / "bad_rows.jsonl", scores=ScoreRange(0, 1), on_bad_row="skip")
    assert len(ds) == 1
    assert "skipped 4 bad rows of 5" in caplog.text


def test_all_rows_bad_is_an_error(tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"sentence1": "", "sentence2": "b", "score": 0.5}\n')
    with pytest.raises(DataError, match="all 1 rows are bad"):
        read_sts_file(path, scores=ScoreRange(0, 1), on_bad_row="skip")


def test_not_utf8_empty_and_missing_files():
    with pytest.raises(DataError, match="not_utf8.tsv: not valid UTF-8"):
        read_sts_file(FIXTURES / "not_utf8.tsv")
    with pytest.raises(DataError, match="empty.jsonl: the file holds no rows"):
        read_sts_file(FIXTURES / "empty.jsonl")
    with pytest.raises(DataError, match="no such file"):
        read_sts_file(FIXTURES / "nope.jsonl")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_sts_file(FIXTURES / "train_small.txt")


def test_jsonl_given_as_json_says_so(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text('{"sentence1": "a", "sentence2": "b", "score": 0.5}\n{"sentence1": "c", "sentence2": "d", "score": 0.5}\n')
    with pytest.raises(DataError, match="data.format=jsonl"):
        read_sts_file(path)


def test_presets_on_shared_data(shared_data):
    korsts = load_sts_splits("korsts", data_dir=shared_data)
    assert {k: len(v) for k, v in korsts.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    stsb = load_sts_splits("stsb", splits=("train", "dev"), data_dir=shared_data)
    assert {k: len(v) for k, v in stsb.items()} == {"train": 5749, "dev": 1500}
    for ds in (*korsts.values(), *stsb.values()):
        assert min(ds["score"]) >= 0.0 and max(ds["score"]) <= 1.0


def test_missing_preset_offline_names_files_and_env_var(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as e:
        load_sts_splits("stsb", data_dir=tmp_path)
    message = str(e.value)
    assert "sts-train.csv" in message and "EMBED_DATA_DIR" in message and str(tmp_path / "stsb") in message


def test_korsts_is_shipped_and_found_without_data_dir_or_network(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("KorSTS ships with the repository: nothing may be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    splits = load_sts_splits("korsts", data_dir=tmp_path / "empty")
    assert {k: len(v) for k, v in splits.items()} == {"train": 5749, "dev": 1500, "test": 1379}
    assert (BUNDLED_DIR / "korsts" / "LICENSE").read_text().startswith("Attribution-ShareAlike 4.0")
    assert not (tmp_path / "empty").exists()


def test_preset_download_writes_files_atomically(tmp_path, monkeypatch):
    import io
    import urllib.request

    nli = (FIXTURES / "nli_train_small.tsv").read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(nli))
    splits = load_splits("kor_xnli", "triplets", splits=("train", "dev"), data_dir=tmp_path)
    assert sorted(splits) == ["dev", "train"] and len(splits["train"]) > 0
    assert sorted(p.name for p in (tmp_path / "kornli-xnli").iterdir()) == ["xnli.dev.ko.tsv", "xnli.test.ko.tsv"]


def test_sts_file_needs_a_path():
    with pytest.raises(DataError, match="data.train_path"):
        load_sts_splits("sts_file", splits=("train",))


def test_max_samples_limits_splits():
    splits = load_sts_splits(
        "sts_file",
        paths={"train": str(FIXTURES / "train_small.jsonl"), "dev": str(FIXTURES / "pairs.jsonl")},
        scores=ScoreRange(0, 1),
        max_train_samples=10,
        max_eval_samples=2,
    )
    assert len(splits["train"]) == 10 and len(splits["dev"]) == 2
    assert json.loads((FIXTURES / "train_small.jsonl").read_text().splitlines()[0])["sentence1"] == splits["train"][0]["sentence1"]


def test_decimal_comma_in_csv_is_a_bad_row_not_a_wrong_score(tmp_path, caplog):
    path = tmp_path / "decimal_comma.csv"
    path.write_text("sentence1,sentence2,score\n문장 하나,문장 둘,3.5\n문장 A,문장 B,4,5\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_sts_file(path, scores=ScoreRange(0, 5))
    message = str(e.value)
    assert f"{path}, line 3: 4 comma-separated fields, but the header has 3" in message and "4.5" in message
    ds = read_sts_file(path, scores=ScoreRange(0, 5), on_bad_row="skip")
    assert ds["score"] == pytest.approx([0.7]) and "skipped 1 bad rows of 2" in caplog.text


def test_tsv_row_with_an_extra_or_missing_tab_is_a_bad_row(tmp_path):
    path = tmp_path / "extra_tab.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\textra\t2.0\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3: 4 tab-separated fields, but the header has 3"):
        read_sts_file(path, scores=ScoreRange(0, 5))
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\t2.0\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3: 2 tab-separated fields, but the header has 3"):
        read_sts_file(path, scores=ScoreRange(0, 5))


@pytest.mark.parametrize("name,text", [
    ("pairs.csv", "text_a,text_b,label\nx,y,1\n"),
    ("pairs.tsv", "text_a\ttext_b\tlabel\nx\ty\t1\n"),
    ("pairs.jsonl", '{"text_a": "x", "text_b": "y", "label": 1}\n'),
])
def test_a_column_the_file_lacks_lists_the_columns_it_has(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_sts_file(path, columns=Columns("text_a", "text_b", "score"), scores=ScoreRange(0, 1))
    message = str(e.value)
    assert "no column data.columns.score='score'" in message and "columns are: text_a, text_b, label" in message
    assert len(read_sts_file(path, columns=Columns("text_a", "text_b", "label"), scores=ScoreRange(0, 1))) == 1


def test_a_nested_column_path_is_checked_too():
    with pytest.raises(DataError, match="no column data.columns.score='labels.score'"):
        read_sts_file(FIXTURES / "klue_sts_small.json", columns=Columns(score="labels.score"), scores=ScoreRange(0, 5))
