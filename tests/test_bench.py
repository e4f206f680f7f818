"""python -m train.bench end to end on the tiny model, and the FLOPs/MFU arithmetic it reports."""

from __future__ import annotations

import importlib.util

import json

import pytest
from transformers import BertConfig, BertModel

from train import bench
from train.bench.flops import matmul_weights, peak_tflops, training_flops_per_token, utilisation

from tests.conftest import ROOT


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
    from train.evaluation.figures import evaluate_sts, sts_evaluator
    from train.models.bi_encoder import build_sentence_transformer

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
    monkeypatch.setattr(cli, "write_report", lambda report, out: None)
    report = cli.main(["--seeds", "3", "--precision", "no", "--st-precision", "no"])
    assert sorted(seen) == sorted((k, s) for k in ("ours", "st_trainer") for s in (0, 1, 2))
    ours, theirs = report["summary"]["ours"], report["summary"]["st_trainer"]
    assert ours["dev_spearman_mean"] == pytest.approx(0.61) and theirs["dev_spearman_mean"] == pytest.approx(0.6)
    assert ours["dev_spearman_std"] == pytest.approx(0.1)  # the sample standard deviation of .51, .61, .71
    assert report["ratios"]["st_trainer"]["dev_spearman_diff"] == pytest.approx(0.01)


def test_every_suite_recipe_is_a_valid_bench_command(monkeypatch, shared_data, tmp_path):
    """Each recipe of the GPU suite parses as a bench command that passes the bench's checks (the suite
    test below runs one recipe of each family, to keep CI short)."""
    from train.bench import cli
    from train.bench.suite import RECIPES, recipe_argv, recipe_settings

    seen = []
    monkeypatch.setattr(cli, "in_subprocess", lambda kind, args: seen.append((kind, args)) or {"seconds": 1.0})
    monkeypatch.setattr(cli, "summarize", lambda runs, unit: {})
    monkeypatch.setattr(cli, "ratios_against", lambda *a: {})
    monkeypatch.setattr(cli, "print_summary", lambda *a: None)
    monkeypatch.setattr(cli, "write_report", lambda *a: None)
    for name, _, own in RECIPES:
        seen.clear()
        settings = recipe_settings(name, own, {}, "cpu", shared_data, tmp_path)
        cli.main(recipe_argv(settings, "cpu"))
        assert [k for k, _ in seen] == ["ours", "st_trainer"], name
        args = seen[0][1]
        assert all(getattr(args, k) == v for k, v in settings.items()), name
        assert args.st_precision == cli._precision(settings["precision"], "cpu"), name


SUITE_FAMILIES = "minilm_sts_fp32,minilm_mnrl_256,cross_encoder_auto,image_text_b32"


def test_gpu_suite_runs_its_recipes_and_writes_one_table(tiny_model_dir, shared_data, tmp_path):
    """The GPU suite at tiny sizes on the CPU, one recipe of each family: both sides train, and the
    table holds a row per recipe with the throughput ratio, MFU against the measured peak and dev figures."""
    out = tmp_path / "suite"
    small = ["max_steps=1", "max_train_samples=32", "batch_size=8", "max_seq_length=32", "max_eval_samples=16", "vit=small",
             "workers=0", "num_proc=1", f"model={tiny_model_dir}"]
    report = bench.main(["--suite", "gpu", "--device", "cpu", "--data-dir", str(shared_data), "--out", str(out),
                         "--suite-only", SUITE_FAMILIES, *[a for o in small for a in ("--suite-override", o)]])
    suite = json.loads((out / "suite.json").read_text())
    rows = suite["rows"]
    assert [r["recipe"] for r in rows] == SUITE_FAMILIES.split(",") == [r["recipe"] for r in report["rows"]]
    # MFU against the peak measured at the row's own precision (fp32 rows against the fp32 rate).
    assert suite["peak_tflops"]["bf16"] != suite["peak_tflops"]["no"]
    assert all(r["peak_tflops"] == suite["peak_tflops"][r["precision"]] for r in rows)
    table = (out / "suite.md").read_text()
    for r in rows:
        assert r["ours_per_s"] > 0 and r["library_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["ours_per_s"] / r["library_per_s"], rel=1e-6)
        assert r["peak_tflops"] > 0 and 0 < r["mfu"] == pytest.approx(r["model_tflops_per_s"] / r["peak_tflops"])
        assert -1 <= r["dev"][1] <= 1 and -1 <= r["dev"][2] <= 1
        assert f"| {r['recipe']} | {r['precision']} |" in table
        # Each row is an ordinary bench run that can be rerun alone.
        assert (out / f"{r['recipe']}.json").is_file()
    # The library's side runs at the precision ours resolved to: one ratio, equal precision.
    fp32 = next(r for r in rows if r["recipe"] == "minilm_sts_fp32")
    assert fp32["precision"] == "no"
    assert json.loads((out / "minilm_sts_fp32.json").read_text())["runs"]["st_trainer"][0]["precision"] == "no"
    assert {r["dev"][0] for r in rows} == {"dev_spearman", "dev_zero_shot"}


def test_profile_writes_the_top_operators_of_our_run(tiny_model_dir, shared_data, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--model", str(tiny_model_dir), "--data", "stsb", "--data-dir", str(shared_data), "--max-train-samples", "32",
                "--max-steps", "2", "--max-seq-length", "32", "--skip-st", "--skip-eval", "--profile", "--out", str(out)])
    summary = (tmp_path / "bench.profile.txt").read_text()
    assert "Top operators by CPU time" in summary and "aten::" in summary
    assert int(summary.split("Distinct matrix-product input shapes: ")[1].split()[0]) > 0


def test_contrastive_recipe_trains_both_sides_on_the_same_triplets(tiny_model_dir, shared_data, tmp_path):
    report = bench.main(["--model", str(tiny_model_dir), "--data", "kor_xnli", "--loss", "mnrl", "--data-dir", str(shared_data),
                         "--max-train-samples", "48", "--batch-size", "16", "--max-steps", "3", "--max-seq-length", "32",
                         "--lr", "0", "--no-equal-precision", "--out", str(tmp_path / "b.json")])
    ours, theirs = report["runs"]["ours"][0], report["runs"]["st_trainer"][0]
    assert ours["pairs"] == theirs["pairs"] == 48  # every triplet once, three batches of 16
    assert ours["real_tokens"] == theirs["real_tokens"]  # the same 48 triplets on both sides
    # lr 0: both score the untrained model on KorSTS dev and test, so the figures agree exactly.
    assert ours["dev_spearman"] == pytest.approx(theirs["dev_spearman"], abs=1e-6)
    assert ours["test_spearman"] == pytest.approx(theirs["test_spearman"], abs=1e-6)
    with pytest.raises(SystemExit):
        bench.main(["--loss", "mnrl", "--data", "stsb"])  # scored pairs cannot feed in-batch negatives


@pytest.mark.parametrize("task", ["sparse", "multi_vector"])
def test_sparse_and_multi_vector_recipes_train_against_the_librarys_own_trainer_on_the_same_triplets(task, tiny_model_dir, shared_data, tmp_path):
    report = bench.main(["--task", task, "--model", str(tiny_model_dir), "--data", "kor_xnli", "--data-dir", str(shared_data),
                         "--max-train-samples", "48", "--batch-size", "16", "--max-steps", "3", "--max-seq-length", "32", "--query-length", "16",
                         "--max-eval-samples", "64", "--lr", "0", "--no-equal-precision", "--out", str(tmp_path / "b.json")])
    ours, theirs = report["runs"]["ours"][0], report["runs"]["st_trainer"][0]
    assert ours["pairs"] == theirs["pairs"] == 48
    # The same texts as the library tokenizes them (queries cut to the query length on both sides).
    assert ours["real_tokens"] == theirs["real_tokens"]
    assert ours["dev_spearman"] == pytest.approx(theirs["dev_spearman"], abs=1e-6)  # lr 0: the same untrained model
    with pytest.raises(SystemExit):
        bench.main(["--task", task, "--loss", "mnrl", "--data", "kor_xnli"])  # the task trains its own loss


def test_steps_bench_times_each_variant_after_its_warm_up_and_writes_one_table(tiny_model_dir, shared_data, tmp_path):
    """--steps on the CPU with the tiny model: each variant (padding-free, padded in one pass or in
    chunks) trains its warm-up and timed steps through the loop and gets a row."""
    out = tmp_path / "steps"
    names = "minilm_cosent_free,minilm_cosent_one_pass,minilm_cosent_chunks"
    report = bench.main(["--steps", "--device", "cpu", "--data-dir", str(shared_data), "--out", str(out), "--steps-only", names,
                         "--warmup-steps", "1", "--timed-steps", "2", "--suite-override", f"model={tiny_model_dir}",
                         "--suite-override", "batch_size=8", "--suite-override", "max_seq_length=32"])
    rows = report["rows"]
    assert list(rows) == names.split(",")
    for name, row in rows.items():
        assert row["steps"] == 2 and row["pairs_per_s"] > 0 and row["distinct_shapes"] >= 1, name
        assert 0 < row["mfu"] and row["model_tflops_per_s"] > 0
    free, one_pass = rows["minilm_cosent_free"], rows["minilm_cosent_one_pass"]
    assert free["computed_tokens_per_s"] == pytest.approx(free["real_tokens_per_s"])  # padding-free computes real tokens only
    assert one_pass["computed_tokens_per_s"] > one_pass["real_tokens_per_s"]
    table = (out / "steps.md").read_text()
    assert all(f"| {name} |" in table for name in rows)


def test_collation_bench_reports_each_part_of_a_batch(tiny_model_dir, shared_data):
    costs = bench.main(["--collation", "--model", str(tiny_model_dir), "--data-dir", str(shared_data), "--batch-size", "32"])
    assert set(costs) == {"gather rows", "pad (vectorised)", "pad (row by row, before)", "pack"} and all(v > 0 for v in costs.values())


def test_serve_bench_times_each_variant_and_says_why_a_backend_is_missing(tiny_model_dir, tmp_path):
    import argparse

    from train.bench.serve import run_serve

    args = argparse.Namespace(model=str(tiny_model_dir), data_dir=str(ROOT / "data"), serve_queries=12, serve_texts=40, max_seq_length=32)
    report = run_serve(args)
    rows = report["variants"]
    assert list(rows) == ["torch fp32", "torch bf16", "ONNX fp32", "ONNX O3", "ONNX int8 (dynamic)", "ONNX int8 (static, 300 KorSTS train texts)",
                          "OpenVINO fp32", "OpenVINO int8"]
    fp32, bf16 = rows["torch fp32"], rows["torch bf16"]
    assert fp32["available"] and 0 < fp32["ms_median"] <= fp32["ms_p95"] and fp32["texts_per_s"] > 0
    assert bf16["weights_mb"] == pytest.approx(fp32["weights_mb"] / 2)
    assert -1 <= bf16["korsts_test_spearman"] <= 1 and abs(bf16["korsts_test_spearman"] - fp32["korsts_test_spearman"]) < 0.1
    assert fp32["korquad_test_ndcg@10"] is None and "(no KorQuAD in --data-dir)" in report["table"]  # data/ does not ship KorQuAD
    if importlib.util.find_spec("optimum.onnxruntime"):  # the [export] extra: the ONNX rows are made by train.export's code
        onnx, q = rows["ONNX fp32"], rows["ONNX int8 (dynamic)"]
        assert onnx["available"] and onnx["file"] == "onnx/model.onnx" and q["file"].startswith("onnx/model_qint8_")
        assert onnx["korsts_test_spearman"] == pytest.approx(fp32["korsts_test_spearman"], abs=1e-3)
    assert "optimum-intel" in rows["OpenVINO int8"]["reason"] and not rows["OpenVINO int8"]["available"]
    assert "| torch bf16 |" in report["table"] and report["queries"] == 12


def test_sparse_index_bench_runs_both_ways_and_they_rank_alike(tmp_path, capsys):
    # The two ways must find the same best passage for every query (the bench raises otherwise),
    # so the memory and time they print compare the same search.
    out = tmp_path / "sparse.json"
    report = bench.main(["--sparse-index", "3000", "--active-dims", "32", "--out", str(out)])
    runs = report["results"]["3000"]
    assert set(runs) == {"chunked", "whole"} and runs["chunked"]["checksum"] == runs["whole"]["checksum"]
    assert all(r["peak_rss_mb"] > 0 and r["ms_per_query"] > 0 for r in runs.values())
    assert json.loads(out.read_text())["results"]["3000"]["chunked"]["passages"] == 3000
    assert "3,000 passages x 32 active dims  chunked" in capsys.readouterr().out


def test_synthetic_sparse_vectors_do_not_depend_on_how_texts_are_batched():
    import torch

    from train.bench.sparse_index_scale import SyntheticSparseEncoder

    model = SyntheticSparseEncoder(64)
    texts = [f"p{i}" for i in range(10)]
    whole = model.encode_document(texts).coalesce().to_dense()
    parts = torch.cat([model.encode_document(texts[s : s + 4]).coalesce().to_dense() for s in (0, 4, 8)])
    assert torch.allclose(whole, parts, atol=1e-5) and (whole > 0).sum(dim=1).min() > 10
    assert not torch.equal(model.encode_query(["q0"]).to_dense(), model.encode_document(["p0"]).to_dense())
