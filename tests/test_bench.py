"""python -m train.bench end to end on the tiny model, and the FLOPs/MFU arithmetic it reports."""

from __future__ import annotations

import json

import pytest
from transformers import BertConfig, BertModel

from train import bench
from train.flops import matmul_weights, peak_tflops, training_flops_per_token, utilisation


def test_matmul_weights_are_the_encoder_layers_matrices():
    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    # Per layer: Q, K, V, output (4 * 32 * 32) and the feed-forward pair (2 * 32 * 64).
    assert matmul_weights(model) == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert training_flops_per_token(1000, 2, 32, 10) == 6 * 1000 + 12 * 2 * 32 * 10


def test_mfu_against_the_device_peak():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp16") == 312.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "no") is None  # fp32 peak is not the tensor-core one
    assert peak_tflops("cpu", "bf16") is None

    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    flops = training_flops_per_token(matmul_weights(model), 2, 32, 20) * 2000
    out = utilisation(model, real_tokens=2000, sequences=100, seconds=2.0, peak=1e-6)
    assert out["model_tflops_per_s"] == pytest.approx(flops / 2.0 / 1e12)
    assert out["mfu"] == pytest.approx(out["model_tflops_per_s"] / 1e-6)
    assert "mfu" not in utilisation(model, 2000, 100, 2.0, peak=None)


def test_bench_runs_both_trainers_and_writes_comparable_results(tiny_model_dir, shared_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main([
        "--model", str(tiny_model_dir), "--data", "stsb", "--data-dir", str(shared_data),
        "--max-train-samples", "64", "--max-steps", "3", "--max-seq-length", "32", "--out", str(out),
    ])
    assert json.loads(out.read_text())["ratios"] == report["ratios"]
    ours, theirs = report["summary"]["ours"], report["summary"]["st_trainer"]
    # Both trained on exactly 3 batches of 16 pairs, and both were scored on STS-B dev.
    assert report["runs"]["ours"][0]["pairs"] == report["runs"]["st_trainer"][0]["pairs"] == 48
    for side in (ours, theirs):
        assert side["pairs_per_s"] > 0 and side["real_tokens_per_s"] > 0 and side["model_tflops_per_s"] > 0
        assert -1 <= side["dev_spearman_mean"] <= 1
    # Bucketed batches pad less than the same pairs in random order.
    assert ours["padding_ratio"] < theirs["padding_ratio"]
    assert report["ratios"]["pairs_per_s"] == pytest.approx(ours["pairs_per_s"] / theirs["pairs_per_s"])
    assert "ratios (ours / sentence-transformers)" in capsys.readouterr().out


def test_encode_bench_embeds_the_whole_dev_split(tiny_model_dir, shared_data, tmp_path):
    report = bench.main([
        "--model", str(tiny_model_dir), "--data", "stsb", "--data-dir", str(shared_data), "--encode",
        "--max-seq-length", "32", "--out", str(tmp_path / "encode.json"),
    ])
    runs = report["runs"]
    assert runs["encode_ours"][0]["sentences"] == runs["encode_st"][0]["sentences"] == 3000
    assert report["ratios"]["sentences_per_s"] > 0
