"""python -m train.score: a teacher's scores for every candidate, as the teacher itself gives them;
a killed run goes on from its last complete chunk; nothing is overwritten unasked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import FIXTURES, compose_config
from train.errors import ConfigError


def score(tmp_path, teacher, out, *extra):
    from train.score import score_run

    cfg = compose_config([f"teacher={teacher}", f"data.path={FIXTURES / 'candidates_small.jsonl'}", f"out={out}", "batch_size=3", *extra],
                         config_name="score")
    return score_run(cfg, run_dir=tmp_path / "run")


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cross_encoder_and_bi_encoder_scores_are_the_teachers_own(saved_models, tmp_path):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    bi, ce = saved_models
    score(tmp_path, ce, tmp_path / "ce.jsonl")
    rows = read(tmp_path / "ce.jsonl")
    assert rows and all(len(r["scores"]) == len(r["positive"]) + len(r["negatives"]) for r in rows)
    first = rows[0]
    expected = CrossEncoder(str(ce)).predict([(first["query"], c) for c in first["positive"] + first["negatives"]])
    assert np.allclose(first["scores"], expected, atol=1e-5)
    score(tmp_path, bi, tmp_path / "bi.jsonl")
    row = read(tmp_path / "bi.jsonl")[1]
    model = SentenceTransformer(str(bi))
    q = model.encode([row["query"]], normalize_embeddings=True)
    c = model.encode(row["positive"] + row["negatives"], normalize_embeddings=True)
    assert np.allclose(row["scores"], (q @ c.T)[0], atol=1e-5)


def test_a_killed_run_goes_on_after_its_last_complete_chunk(saved_models, tmp_path, monkeypatch):
    import train.score as module

    _, ce = saved_models
    whole = tmp_path / "whole.jsonl"
    score(tmp_path, ce, whole, "chunk_queries=2")
    calls = {"n": 0}
    real = module.teacher_scores

    def dies_on_the_second_chunk(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)

    out = tmp_path / "resumed.jsonl"
    monkeypatch.setattr(module, "teacher_scores", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        score(tmp_path, ce, out, "chunk_queries=2")
    assert not out.exists() and len((tmp_path / "resumed.jsonl.partial").read_text().splitlines()) == 2
    with open(tmp_path / "resumed.jsonl.partial", "a") as f:
        f.write('{"query": "torn')  # a line cut off mid-write
    monkeypatch.setattr(module, "teacher_scores", real)
    summary = score(tmp_path, ce, out, "chunk_queries=2")
    assert summary["resumed_after"] == 2
    assert read(out) == read(whole)
    assert not (tmp_path / "resumed.jsonl.partial").exists()


def test_an_existing_file_is_left_alone_and_the_teacher_must_be_a_saved_model(saved_models, tmp_path):
    _, ce = saved_models
    out = tmp_path / "x.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(ConfigError, match="already exists"):
        score(tmp_path, ce, out)
    assert out.read_text() == "keep me\n"
    with pytest.raises(ConfigError, match="not a saved cross-encoder or bi-encoder"):
        score(tmp_path, tmp_path / "nope", tmp_path / "y.jsonl")
