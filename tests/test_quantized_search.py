"""Quantized search (search.precision=int8|ubinary): the library's codes, its rescoring, the cache."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss

from train.evaluation import quantized, search
from train.evaluation.search import Index

from tests.test_search import vector_file


def queries(n: int = 12, dim: int = 8, seed: int = 1) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_codes_written_chunk_by_chunk_are_the_librarys_codes_of_the_whole_corpus(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(quantized, "QUANTIZE_CHUNK", 7)  # 50 rows: the ranges must come from every chunk
    vectors, x = vector_file(tmp_path, 50, dim=12)
    codes = quantized.cached_codes(vectors, precision, tmp_path / "cache")
    assert np.array_equal(codes.load(), quantize_embeddings(x, precision=precision))
    assert codes.row_bytes == (12 if precision == "int8" else 2)


def test_binary_search_finds_semantic_search_faiss_candidates_and_rescores_them_against_float32(tmp_path, monkeypatch):
    if not search.faiss_available():
        pytest.skip("faiss-cpu is not installed")
    monkeypatch.setattr(search, "QUERY_BATCH", 5)
    vectors, x = vector_file(tmp_path, 200, dim=64)
    q = queries(12, 64)
    codes = quantize_embeddings(x, precision="ubinary")
    index = Index(vectors, "faiss", precision="ubinary", rescore=False, cache_root=tmp_path / "cache")
    scores, ids = index.search(q, 30)
    hamming, _ = semantic_search_faiss(q, corpus_embeddings=codes, corpus_precision="ubinary", top_k=30, rescore=False)
    assert ids.tolist() == [[hit["corpus_id"] for hit in hits] for hits in hamming]
    assert np.allclose(scores, 1 - 2 * np.array([[hit["score"] for hit in hits] for hits in hamming]) / 64)
    # Rescored: those 30 candidates (3 × 10) reordered by the exact cosine. (The library rescores
    # against the unpacked bits; the float32 vectors are on disk here, so they are the judge.)
    scores, ids = Index(vectors, "faiss", precision="ubinary", rescore_multiplier=3, cache_root=tmp_path / "cache").search(q, 10)
    for i, hits in enumerate(hamming):
        candidates = np.array([hit["corpus_id"] for hit in hits])
        cosines = x[candidates] @ q[i]
        assert ids[i].tolist() == candidates[np.argsort(-cosines, kind="stable")[:10]].tolist()
        assert np.allclose(scores[i], np.sort(cosines)[::-1][:10], atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_torch_and_faiss_find_the_same_candidates(tmp_path, precision):
    if not search.faiss_available():
        pytest.skip("faiss-cpu is not installed")
    vectors, _ = vector_file(tmp_path, 120, dim=32)
    q = queries(9, 32)
    found = [Index(vectors, backend, precision=precision, rescore=False, cache_root=tmp_path / "cache").search(q, 15) for backend in ("torch", "faiss")]
    # Hamming distances tie often: compare each query's scores, and ids where no tie straddles the cut.
    assert np.allclose(found[0][0], found[1][0], atol=1e-6)
    assert (found[0][0] <= 1.0 + 1e-6).all() and (found[0][0] >= -1.0 - 1e-6).all()


def test_int8_scores_are_the_float_query_against_the_dequantized_codes(tmp_path, monkeypatch):
    monkeypatch.setattr(quantized, "QUANTIZE_CHUNK", 16)
    vectors, x = vector_file(tmp_path, 70, dim=16)
    q = queries(6, 16)
    scores, ids = Index(vectors, "torch", precision="int8", rescore=False, cache_root=tmp_path / "cache").search(q, 5)
    low, high = x.min(axis=0), x.max(axis=0)
    steps = (high - low) / 255
    dequantized = (quantize_embeddings(x, precision="int8").astype(np.float32) + 128) * steps + low
    reference = q @ dequantized.T
    assert np.array_equal(ids, np.argsort(-reference, axis=1, kind="stable")[:, :5])
    assert np.allclose(scores, np.take_along_axis(reference, ids, 1), atol=1e-5)
    # Close to the exact cosines, not equal to them: the codes lose precision.
    assert 0 < np.abs(scores - np.take_along_axis(q @ x.T, ids, 1)).max() < 0.05


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_rescoring_over_the_whole_corpus_gives_exact_search(tmp_path, monkeypatch, precision):
    monkeypatch.setattr(quantized, "RESCORE_QUERIES", 5)  # 12 queries: three blocks, the last short
    vectors, x = vector_file(tmp_path, 40)
    q = queries()
    scores, ids = Index(vectors, "torch", precision=precision, rescore_multiplier=4, cache_root=tmp_path / "cache").search(q, 10)
    exact = q @ x.T
    assert np.array_equal(ids, np.argsort(-exact, axis=1, kind="stable")[:, :10])
    assert np.allclose(scores, np.take_along_axis(exact, ids, 1), atol=1e-6)
    # Asked past the corpus: padding, as exact search pads.
    scores, ids = Index(vectors, "torch", precision=precision, cache_root=tmp_path / "cache").search(q, 45)
    assert (ids[:, 40:] == -1).all() and np.isneginf(scores[:, 40:]).all() and (ids[:, :40] >= 0).all()


def test_codes_are_quantized_once_per_vector_file_and_precision(tmp_path, monkeypatch):
    vectors, _ = vector_file(tmp_path, 30)
    root = tmp_path / "cache"
    first = quantized.cached_codes(vectors, "int8", root)

    def refuse(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(quantized, "write_codes", refuse)
    again = quantized.cached_codes(vectors, "int8", root)
    assert again.path == first.path and np.array_equal(again.ranges, first.ranges)
    monkeypatch.undo()
    assert quantized.cached_codes(vectors, "ubinary", root).path != first.path


def test_the_index_reports_what_a_passage_costs(tmp_path):
    vectors, _ = vector_file(tmp_path, 30, dim=384)
    sizes = {p: Index(vectors, "torch", precision=p, cache_root=tmp_path / "cache").describe() for p in quantized.PRECISIONS}
    assert [sizes[p]["bytes_per_passage"] for p in ("float32", "int8", "ubinary")] == [1536, 384, 48]
    assert sizes["ubinary"]["index_mb_per_million_passages"] == pytest.approx(45.8, abs=0.05)
    assert sizes["ubinary"]["rescore_multiplier"] == 4 and "rescore" not in sizes["float32"]


def test_one_query_at_a_time_by_popcount_scores_as_the_batch_path_does(tmp_path, monkeypatch):
    monkeypatch.setattr(quantized, "HAMMING_CHUNK", 16)  # 100 rows: seven chunks
    vectors, x = vector_file(tmp_path, 100, dim=40)
    q = queries(5, 40)
    index = Index(vectors, "torch", precision="ubinary", rescore=False, cache_root=tmp_path / "cache")
    few = index.search(q, 12)
    monkeypatch.setattr(quantized, "FEW_QUERIES", 0)  # every call through the ±1 matmul
    many = index.search(q, 12)
    assert np.allclose(few[0], many[0], atol=1e-6)
    signs = np.where(x > 0, 1.0, -1.0) @ np.where(q > 0, 1.0, -1.0).T / 40
    assert np.allclose(few[0], np.take_along_axis(signs.T, few[1], 1), atol=1e-6)
    assert (np.diff(few[0], axis=1) <= 0).all()
