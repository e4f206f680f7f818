"""`python -m train.bench --suite gpu --out DIR`: the GPU recipes in one command, one table.

Each recipe is one ordinary bench run (ours, then the library's trainer at the precision ours
resolved to, each in a fresh process), so a row can be rerun alone with the command the table
prints. Before the recipes, the device's matrix-product rate is measured at bf16 and fp32: MFU is
reported against what this device reaches, not against a data sheet. Writes DIR/suite.json (every
run's figures) and DIR/suite.md (the table docs/benchmarks.md carries).

    python -m train.bench --suite gpu --device cuda --out bench_results/gpu
    python -m train.bench --suite gpu --device cpu --out /tmp/suite \\
        --suite-override max_steps=2 --suite-override max_train_samples=64 --suite-override batch_size=8
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (name, what it measures, settings). Sizes fit one H200 in about 8 minutes, both sides.
RECIPES: list[tuple[str, str, dict[str, Any]]] = [
    ("minilm_sts_auto", "MiniLM, CoSENT on STS-B, batch 64, trainer.mixed_precision=auto",
     {"model": "minilm", "data": "stsb", "batch_size": 64, "precision": "auto"}),
    ("minilm_sts_fp32", "the same at fp32", {"model": "minilm", "data": "stsb", "batch_size": 64, "precision": "no"}),
    ("minilm_mnrl_256", "MiniLM, MNRL on KorSTS pairs, batch 256, 60 steps",
     {"model": "minilm", "loss": "mnrl", "batch_size": 256, "precision": "auto"}),
    ("roberta_base_mnrl_256", "roberta-base size (random weights), MNRL, batch 256, max length 128, 60 steps",
     {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "max_seq_length": 128, "precision": "auto"}),
    ("roberta_base_mnrl_256_fp32", "the same at fp32",
     {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "max_seq_length": 128, "precision": "no"}),
    ("cross_encoder_auto", "MiniLM cross-encoder, BCE on STS-B, batch 64, auto",
     {"task": "cross_encoder", "model": "minilm", "data": "stsb", "batch_size": 64, "precision": "auto"}),
    ("cross_encoder_fp32", "the same at fp32",
     {"task": "cross_encoder", "model": "minilm", "data": "stsb", "batch_size": 64, "precision": "no"}),
    ("roberta_base_cross_encoder_auto", "roberta-base size cross-encoder (random weights), STS-B, batch 64, auto",
     {"task": "cross_encoder", "model": "roberta_base_random", "data": "stsb", "batch_size": 64, "precision": "auto"}),
    ("roberta_base_cross_encoder_fp32", "the same at fp32",
     {"task": "cross_encoder", "model": "roberta_base_random", "data": "stsb", "batch_size": 64, "precision": "no"}),
    ("image_text_b32", "image–text, ViT-B/32-sized image tower (224 px), Fashion-MNIST, batch 256, auto",
     {"task": "image_text", "vit": "b32", "batch_size": 256, "max_train_samples": 12800, "workers": 8, "precision": "auto"}),
]


MNRL_STEPS = 60


def mnrl_pairs(path: Path, rows: int, data_dir: Path) -> Path:
    """(anchor, positive) rows for the MNRL recipes: KorSTS train's similar pairs (gold ≥ 3), in turn,
    each text tagged with its row number so that no text repeats (Korean XNLI's 1,670 triplets
    would make 6 steps of 256: too few to time). KorSTS dev and test stay unseen."""
    from train.bench.scale import synthetic_pairs

    return synthetic_pairs(path, rows, data_dir / "korsts", splits=("train",), min_score=3.0, tag="{text} ({i})")


def recipe_settings(name: str, settings: dict[str, Any], extra: dict[str, Any], device: str, data_dir: Path, out: Path) -> dict[str, Any]:
    """A recipe's bench settings: its own, the pairs file of an MNRL recipe, then the overrides."""
    if settings.get("loss") == "mnrl":
        rows = extra.get("batch_size", settings["batch_size"]) * MNRL_STEPS
        settings = {"train_file": str(mnrl_pairs(out / f"mnrl_pairs_{rows}.jsonl", rows, data_dir)), **settings}
    return {**settings, **extra, "device": device, "data_dir": str(data_dir), "out": str(out / f"{name}.json")}


def selected(only: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    if not only:
        return RECIPES
    names = only.split(",")
    unknown = sorted(set(names) - {name for name, _, _ in RECIPES})
    if unknown:
        raise SystemExit(f"--suite-only: no recipe {', '.join(unknown)}; the suite has {', '.join(n for n, _, _ in RECIPES)}")
    return [r for r in RECIPES if r[0] in names]


def recipe_argv(settings: dict[str, Any], device: str) -> list[str]:
    """A recipe's bench command line: the library's trainer at the precision ours resolves to, so
    that the ratio is the loop's, not the precision's."""
    from train.bench.common import precision as resolve

    return [*_argv(settings), "--st-precision", resolve(settings["precision"], device), "--no-equal-precision"]


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--suite-override {item!r}: give KEY=VALUE, e.g. max_steps=2")
        out[key.replace("-", "_")] = _value(value)
    return out


def _argv(settings: dict[str, Any]) -> list[str]:
    argv = []
    for key, value in settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _row(name: str, what: str, report: dict[str, Any], peak: dict[str, float]) -> dict[str, Any]:
    from train.bench.recipes import unit_of

    summary, runs = report["summary"], report["runs"]
    ours, theirs = summary["ours"], summary.get("st_trainer", {})
    unit = unit_of(report["args"])
    precision = runs["ours"][0]["precision"]
    row = {
        "recipe": name, "what": what, "precision": precision, "unit": unit,
        "ours_per_s": ours[f"{unit}_per_s"], "library_per_s": theirs.get(f"{unit}_per_s"),
        "ratio": report["ratios"].get("st_trainer", {}).get(f"{unit}_per_s"),
        "real_tokens_per_s": ours.get("real_tokens_per_s"), "padded_tokens_per_s": ours.get("padded_tokens_per_s"),
        "library_padded_tokens_per_s": theirs.get("padded_tokens_per_s"),
        "model_tflops_per_s": ours.get("model_tflops_per_s"), "peak_tflops": peak.get(precision),
        "peak_gpu_mb": ours.get("peak_gpu_allocated_mb_max"), "library_peak_gpu_mb": theirs.get("peak_gpu_allocated_mb_max"),
    }
    if row["model_tflops_per_s"] and row["peak_tflops"]:
        row["mfu"] = row["model_tflops_per_s"] / row["peak_tflops"]
    for figure in ("dev_spearman", "dev_zero_shot"):
        if f"{figure}_mean" in ours:
            row["dev"] = (figure, ours[f"{figure}_mean"], theirs.get(f"{figure}_mean"))
    return row


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"`{header['command']}` — {header['date']}, {header['device']}, torch {header['torch']}; measured peak "
        + ", ".join(f"{k} {v:,.1f} TFLOP/s" for k, v in header["peak_tflops"].items()) + ".",
        "",
        "| recipe | precision | ours | library (equal precision) | ratio | real / padded tokens/s (ours) | MFU (real tokens) | peak GPU MB (ours / library) | dev (ours / library) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        dev = f"{r['dev'][1]:.4f} / {_fmt(r['dev'][2], 4)}" if "dev" in r else "–"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "–"
        lines.append(
            f"| {r['recipe']} | {r['precision']} | {_fmt(r['ours_per_s'])} {r['unit']}/s | {_fmt(r['library_per_s'])} | "
            f"{_fmt(r['ratio'], 2)}× | {_fmt(r['real_tokens_per_s'], 0)} / {_fmt(r['padded_tokens_per_s'], 0)} | {mfu} | "
            f"{_fmt(r['peak_gpu_mb'], 0)} / {_fmt(r['library_peak_gpu_mb'], 0)} | {dev} |"
        )
    return "\n".join(lines) + "\n"


def run_suite(args: argparse.Namespace, argv: list[str], run_recipe: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
    """Each recipe through the bench's own command line (`run_recipe`: train.bench.cli.main), then one table."""
    import torch

    from train.bench.common import machine
    from train.bench.flops import measured_peak_tflops

    out = Path(args.out or "bench_results/suite")
    out.mkdir(parents=True, exist_ok=True)
    extra = overrides(args.suite_override)
    # Both precisions a recipe can resolve to; fp16 is no recipe's.
    peak = {p: measured_peak_tflops(args.device, p) for p in ("bf16", "no")}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({machine()['cpus']} cores)"
    header = {"command": "python -m train.bench " + " ".join(argv), "date": datetime.date.today().isoformat(), "device": device,
              "torch": torch.__version__, "peak_tflops": peak}
    rows, reports = [], {}
    for name, what, settings in selected(args.suite_only):
        settings = recipe_settings(name, settings, extra, args.device, Path(args.data_dir), out)
        argv_of_recipe = recipe_argv(settings, args.device)
        print(f"\n=== {name}: {what}\n    python -m train.bench {' '.join(argv_of_recipe)}", flush=True)
        report = run_recipe(argv_of_recipe)
        reports[name] = {"command": "python -m train.bench " + " ".join(argv_of_recipe), **report}
        rows.append(_row(name, what, report, peak))
    table = markdown(rows, header)
    (out / "suite.json").write_text(json.dumps({**header, "machine": machine(), "rows": rows, "runs": reports}, indent=2, default=str))
    (out / "suite.md").write_text(table)
    print("\n" + table + f"\nwrote {out / 'suite.json'} and {out / 'suite.md'}")
    return {"rows": rows, "header": header}
