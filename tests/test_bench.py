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
    from train.data.presets import load_sts_splits
    from train.evaluation import evaluate_sts, sts_evaluator
    from train.models import build_sentence_transformer

    out = tmp_path / "bench.json"
    # 48 pairs, 3 steps of 16: both sides train on every pair exactly once. lr 0 leaves the weights
    # as they were, so both must report the dev Spearman of the untrained model.
    report = bench.main([
        "--model", str(tiny_model_dir), "--data", "stsb", "--data-dir", str(shared_data), "--lr", "0",
        "--max-train-samples", "48", "--max-steps", "3", "--max-seq-length", "32", "--out", str(out),
    ])
    assert json.loads(out.read_text())["ratios"] == report["ratios"]
    splits = load_sts_splits("stsb", ("train", "dev"), shared_data, max_train_samples=48)
    model = build_sentence_transformer(str(tiny_model_dir), 32)
    tokens = sum(int(model.tokenize(splits["train"][c])["attention_mask"].sum()) for c in ("sentence1", "sentence2"))
    zero_shot = evaluate_sts(model, sts_evaluator(splits["dev"], 64))["spearman_cosine"]
    sides = [k for k in report["runs"] if k.startswith("st_trainer")]
    assert sides[0] == "st_trainer" and report["runs"]["st_trainer"][0]["precision"] == "no"
    for side in ["ours", *sides]:
        run = report["runs"][side][0]
        assert run["pairs"] == 48 and run["real_tokens"] == tokens, side
        assert run["dev_spearman"] == pytest.approx(zero_shot, abs=1e-5), side
        summary = report["summary"][side]
        assert summary["pairs_per_s"] == pytest.approx(48 / run["seconds"])
        flops = training_flops_per_token(matmul_weights(model[0].auto_model), 2, 32, tokens / 96) * tokens
        assert summary["model_tflops_per_s"] == pytest.approx(flops / run["seconds"] / 1e12, rel=1e-6)
    ours, theirs = report["summary"]["ours"], report["summary"]["st_trainer"]
    # Bucketed batches pad less than the same pairs in random order.
    assert ours["padding_ratio"] < theirs["padding_ratio"]
    assert report["ratios"]["st_trainer"]["pairs_per_s"] == pytest.approx(ours["pairs_per_s"] / theirs["pairs_per_s"])
    printed = capsys.readouterr().out
    assert "headline: ours (" in printed and "at its default precision (no)" in printed
    if len(sides) == 2:  # ours ran in bf16 (native here): the equal-precision ratio is in the headline too
        assert report["runs"]["st_trainer_same"][0]["precision"] == report["runs"]["ours"][0]["precision"] == "bf16"
        assert "at equal precision (bf16)" in printed


def test_encode_bench_embeds_the_whole_dev_split(tiny_model_dir, shared_data, tmp_path):
    report = bench.main([
        "--model", str(tiny_model_dir), "--data", "stsb", "--data-dir", str(shared_data), "--encode",
        "--max-seq-length", "32", "--out", str(tmp_path / "encode.json"),
    ])
    runs, summary = report["runs"], report["summary"]
    assert runs["encode_ours"][0]["sentences"] == runs["encode_st"][0]["sentences"] == 3000
    assert summary["encode_ours"]["sentences_per_s"] == pytest.approx(3000 / runs["encode_ours"][0]["seconds"])
    assert report["ratios"]["encode_st"]["sentences_per_s"] == pytest.approx(
        summary["encode_ours"]["sentences_per_s"] / summary["encode_st"]["sentences_per_s"]
    )
