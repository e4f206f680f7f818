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
    # A held-out file in the preset's format: the last 40 dev pairs (STS-B's own test split is not here).
    held_out = tmp_path / "sts-test.csv"
    held_out.write_text("".join((shared_data / "stsb" / "sts-dev.csv").read_text(encoding="utf-8").splitlines(True)[-40:]), encoding="utf-8")
    # 48 pairs, 3 steps of 16: both sides train on every pair exactly once. lr 0 leaves the weights
    # as they were, so both must report the dev and test Spearman of the untrained model.
    report = bench.main([
        "--model", str(tiny_model_dir), "--data", "stsb", "--data-dir", str(shared_data), "--lr", "0",
        "--max-train-samples", "48", "--max-steps", "3", "--max-seq-length", "32", "--out", str(out),
        "--test-file", str(held_out),
    ])
    assert json.loads(out.read_text())["ratios"] == report["ratios"]
    splits = load_sts_splits("stsb", ("train", "dev"), shared_data, max_train_samples=48)
    model = build_sentence_transformer(str(tiny_model_dir), 32)
    tokens = sum(int(model.tokenize(splits["train"][c])["attention_mask"].sum()) for c in ("sentence1", "sentence2"))
    zero_shot = evaluate_sts(model, sts_evaluator(splits["dev"], 64))["spearman_cosine"]
    test = load_sts_splits("stsb", ("test",), shared_data, paths={"test": str(held_out)})["test"]
    assert len(test) == 40
    zero_shot_test = evaluate_sts(model, sts_evaluator(test, 64))["spearman_cosine"]
    sides = [k for k in report["runs"] if k.startswith("st_trainer")]
    assert sides[0] == "st_trainer" and report["runs"]["st_trainer"][0]["precision"] == "no"
    for side in ["ours", *sides]:
        run = report["runs"][side][0]
        assert run["pairs"] == 48 and run["real_tokens"] == tokens, side
        assert run["dev_spearman"] == pytest.approx(zero_shot, abs=1e-5), side
        assert run["test_spearman"] == pytest.approx(zero_shot_test, abs=1e-5), side
        summary = report["summary"][side]
        assert summary["pairs_per_s"] == pytest.approx(48 / run["seconds"])
        flops = training_flops_per_token(matmul_weights(model[0].auto_model), 2, 32, tokens / 96) * tokens
        assert summary["model_tflops_per_s"] == pytest.approx(flops / run["seconds"] / 1e12, rel=1e-6)
    ours, theirs = report["summary"]["ours"], report["summary"]["st_trainer"]
    # Bucketed batches pad less than the same pairs in random order.
    assert ours["padding_ratio"] < theirs["padding_ratio"]
    assert report["ratios"]["st_trainer"]["pairs_per_s"] == pytest.approx(ours["pairs_per_s"] / theirs["pairs_per_s"])
    assert report["ratios"]["st_trainer"]["test_spearman_diff"] == pytest.approx(0.0, abs=1e-5)
    printed = capsys.readouterr().out
    assert "headline: ours (" in printed and "at its default precision (no)" in printed
    assert "test_spearman over 1 seed(s), mean ± std: ours" in printed
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


def test_seeds_give_each_side_the_mean_and_spread_over_seeds_0_to_n(monkeypatch):
    from train.bench import cli

    seen = []

    def fake_run(kind, args):
        seen.append((kind, args.seed))
        # A figure that depends on the seed and the side, so the mean and spread are checkable.
        return {"seconds": 1.0, "pairs": 10, "precision": "no", "peak_rss_mb": 1.0,
                "dev_spearman": 0.5 + 0.1 * args.seed + (0.01 if kind == "ours" else 0.0)}

    monkeypatch.setattr(cli, "in_subprocess", fake_run)
    monkeypatch.setattr(cli, "_write", lambda report, out: None)
    report = cli.main(["--seeds", "3", "--precision", "no", "--st-precision", "no"])
    assert sorted(seen) == sorted((k, s) for k in ("ours", "st_trainer") for s in (0, 1, 2))
    ours, theirs = report["summary"]["ours"], report["summary"]["st_trainer"]
    assert ours["dev_spearman_mean"] == pytest.approx(0.61) and theirs["dev_spearman_mean"] == pytest.approx(0.6)
    assert ours["dev_spearman_std"] == pytest.approx(0.1)  # the sample standard deviation of .51, .61, .71
    assert report["ratios"]["st_trainer"]["dev_spearman_diff"] == pytest.approx(0.01)
