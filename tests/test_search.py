"""Exact search over a vector file (torch in chunks, or faiss), and corpus vectors embedded once."""

from __future__ import annotations

import numpy as np
import pytest

from train.evaluation import search
from train.evaluation.search import Index, Vectors, cached_vectors


def vector_file(tmp_path, rows: int, dim: int = 8, seed: int = 0) -> tuple[Vectors, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp_path / "v.f32"
    x.tofile(path)
    return Vectors(path, rows, dim), x


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_search_returns_the_exact_top_k_across_chunks_and_batches(tmp_path, monkeypatch, backend):
    if backend == "faiss" and not search.faiss_available():
        pytest.skip("faiss-cpu is not installed")
    monkeypatch.setattr(search, "DOC_CHUNK", 7)  # 50 rows: 8 chunks, the last one short
    monkeypatch.setattr(search, "QUERY_BATCH", 5)
    vectors, x = vector_file(tmp_path, 50)
    queries = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)
    index = Index(vectors, backend)
    assert index.backend == backend
    scores, ids = index.search(queries, 10)
    expected = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, np.take_along_axis(queries @ x.T, expected, 1), atol=1e-5)
    # Asked for more than the corpus holds: the rest is padding (-1, -inf), as sentence-transformers pads.
    scores, ids = index.search(queries, 53)
    assert np.array_equal(ids[:, :50], np.argsort(-(queries @ x.T), axis=1, kind="stable")) and (ids[:, 50:] == -1).all()
    assert np.isneginf(scores[:, 50:]).all()


def test_corpus_vectors_are_embedded_once_per_model_and_texts(tiny_model_dir, tmp_path, monkeypatch):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny_model_dir), 16)
    texts = [f"passage number {i}" for i in range(30)]
    vectors, seconds, reused = cached_vectors(model, texts, tmp_path, batch_size=8)
    assert seconds > 0 and not reused and vectors.rows == 30
    assert np.allclose(vectors.read(0, 30), search.embed(model, texts, 8), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors.read(0, 30), axis=1), 1.0, atol=1e-5)

    def refuse(*args, **kwargs):
        raise AssertionError("embedded again")

    monkeypatch.setattr(search, "embed_to_file", refuse)
    again, _, reused = cached_vectors(model, texts, tmp_path, batch_size=8)
    assert reused and again.path == vectors.path
    monkeypatch.undo()
    import torch

    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # other weights: other vectors
    other, _, _ = cached_vectors(model, texts, tmp_path, batch_size=8)
    assert other.path != vectors.path
    third, _, _ = cached_vectors(model, texts[:-1], tmp_path, batch_size=8)
    assert third.path not in (vectors.path, other.path) and third.rows == 29


def test_long_loops_log_their_progress_at_most_every_interval(monkeypatch, caplog):
    """Embedding, mining and searching at a million rows say how far they are: a line when the
    interval has passed, none before, with done, total and the seconds since the start."""
    import logging

    from train.evaluation import bars as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    log = progress.ProgressLog("Mining", 100_000, "queries", seconds=30)
    with caplog.at_level(logging.INFO, logger="train"):
        now[0] = 120.0
        log(16_384)  # 20 s: quiet
        now[0] = 131.0
        log(32_768)  # 31 s since the start: a line
        now[0] = 150.0
        log(49_152)  # 19 s since that line: quiet
    lines = [r.getMessage() for r in caplog.records if r.name == "train"]
    assert lines == ["Mining: 32,768 of 100,000 queries, 31 s"]
