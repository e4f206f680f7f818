"""`python -m train.bench --steps`: the training step's steady-state rate, variant against variant.

Each variant is this project's own loop (train/engine/loop.py: setup, then update and count a batch at a
time, as `train` calls them) on one model and recipe, in a fresh process. Its first
`--warmup-steps` steps are not timed (kernel selection, allocator growth, compilation, the
loader's workers starting); the device is synchronised at both edges of the timed window of
`--timed-steps` steps, so the window holds the GPU's work, not just the launches. Reported: pairs
and real tokens a second, model TFLOP/s of the real tokens and their MFU against the
matrix-product rate this device reaches at that precision (measured first), the distinct input
shapes the backbone saw, and peak GPU memory.

    python -m train.bench --steps --device cuda --out bench_results/steps      # every variant
    python -m train.bench --steps --device cpu --steps-only minilm_cosent_free,minilm_cosent_chunks --timed-steps 20

Compared: padding-free against padded (one forward pass, and length-sorted chunks), bf16 against
fp32 (with TF32 on CUDA), torch.compile on and off, for MiniLM and the roberta-base-size preset
(random weights): CoSENT on STS-B (batch 64), MNRL on KorSTS pairs (batch 256), and the
cross-encoder's BCE on STS-B (batch 64).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

BASE = {"warmup": 20, "device": "cuda"}
# name -> settings; "seconds": a guess at one variant's whole process on an H100 (load, data,
# warm-up, compile, the timed steps), for the estimate printed before the suite starts.
VARIANTS: dict[str, dict[str, Any]] = {
    "minilm_cosent_free": {"model": "minilm", "loss": "cosent", "batch_size": 64, "precision": "bf16", "seconds": 20},
    "minilm_cosent_one_pass": {"model": "minilm", "loss": "cosent", "batch_size": 64, "precision": "bf16", "padding_free": False, "chunk_rows": 0, "seconds": 20},
    "minilm_cosent_chunks": {"model": "minilm", "loss": "cosent", "batch_size": 64, "precision": "bf16", "padding_free": False, "chunk_rows": 64, "seconds": 20},
    "minilm_cosent_free_fp32": {"model": "minilm", "loss": "cosent", "batch_size": 64, "precision": "no", "seconds": 20},
    "minilm_mnrl_free": {"model": "minilm", "loss": "mnrl", "batch_size": 256, "precision": "bf16", "seconds": 25},
    "roberta_mnrl_free": {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "precision": "bf16", "seconds": 35},
    "roberta_mnrl_one_pass": {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "precision": "bf16", "padding_free": False, "chunk_rows": 0, "seconds": 35},
    "roberta_mnrl_chunks": {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "precision": "bf16", "padding_free": False, "chunk_rows": 128, "seconds": 35},
    "roberta_mnrl_free_fp32": {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "precision": "no", "seconds": 45},
    "roberta_mnrl_free_compiled": {"model": "roberta_base_random", "loss": "mnrl", "batch_size": 256, "precision": "bf16", "compile": True, "seconds": 100},
    "roberta_ce_free": {"model": "roberta_base_random", "task": "cross_encoder", "loss": "bce", "batch_size": 64, "precision": "bf16", "seconds": 30},
    "roberta_ce_one_pass": {"model": "roberta_base_random", "task": "cross_encoder", "loss": "bce", "batch_size": 64, "precision": "bf16", "padding_free": False, "chunk_rows": 0, "seconds": 30},
}


def selected(only: str | None) -> dict[str, dict[str, Any]]:
    if not only:
        return VARIANTS
    names = only.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--steps-only: no variant {', '.join(unknown)}; there are {', '.join(VARIANTS)}")
    return {n: VARIANTS[n] for n in names}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _corpus(v: dict[str, Any], rows: int, data_dir: Path, cache_dir: str):
    """The variant's training split through a fresh data cache: STS-B's scored pairs, or KorSTS
    pairs (gold ≥ 3, each text tagged with its row so none repeats) for MNRL."""
    from train.bench.scale import synthetic_pairs
    from train.data.corpus import CacheSettings, load_corpus
    from train.data.presets import data_spec
    from train.data.rows import Columns

    settings = CacheSettings.make(cache_dir, None)
    if v["loss"] == "mnrl":
        path = synthetic_pairs(Path(cache_dir) / "pairs.jsonl", rows, data_dir / "korsts", splits=("train",), min_score=3.0, tag="{text} ({i})")
        spec = data_spec("pairs_file", paths={"train": str(path)}, columns=Columns("anchor", "positive"))
        return load_corpus(spec, "train", "triplets", True, settings, 0)
    return load_corpus(data_spec("stsb", str(data_dir)), "train", "scored_pairs", True, settings, 0)


def _shapes(model) -> set:
    """Every input shape the transformer module is called with (its features' input_ids), by a hook."""
    seen: set = set()
    module = next(m for m in model.modules() if hasattr(m, "auto_model"))
    module.register_forward_pre_hook(lambda m, args: seen.add(tuple(args[0]["input_ids"].shape)))
    return seen


def endless(loader, sampler):
    """The loader's batches epoch after epoch (the sampler shuffles each anew)."""
    for epoch in itertools.count():
        sampler.use_epoch(epoch)
        yield from loader


def run_variant(v: dict[str, Any]) -> dict[str, Any]:
    """One variant, in this process: build, warm up, time."""
    import torch

    from train.engine import loop
    from train.engine.session import Workload
    from train.bench.common import peak_memory, resolve_model
    from train.bench.flops import utilisation
    from train.config.schema import MixedPrecision, TrainerConfig
    from train.losses.registry import build_loss
    from train.models.bi_encoder import build_sentence_transformer
    from train.models.cross_encoder import build_cross_encoder
    from train.tasks import get_task

    steps = v["warmup"] + v["timed"]
    name, package = resolve_model(v["model"])
    task = get_task(v.get("task", "bi_encoder"))
    torch.manual_seed(0)
    if task.name == "cross_encoder":
        model = build_cross_encoder(name, v.get("max_seq_length", 128), 1, offline_package=package)
    else:
        model = build_sentence_transformer(name, v.get("max_seq_length", 128), "mean", offline_package=package)
    settings = TrainerConfig(
        max_steps=steps, batch_size=v["batch_size"], mixed_precision=MixedPrecision(v["precision"]), log_every=10**9,
        eval_every=10**9, save_every=10**9, padding_free=v.get("padding_free", True), forward_chunk_rows=v.get("chunk_rows"),
        compile=v.get("compile", False),
    )
    loss, spec = build_loss(v["loss"], model, task=task.name)
    shapes = _shapes(model)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _corpus(v, v["batch_size"] * steps, Path(v["data_dir"]), tmp)
        rows, collate, sampler = task.training_inputs(corpus, model, spec, settings)
        s = loop.setup(Workload(model, loss, rows, collate, sampler, task.train_step(spec, collate)), settings, Path(tmp) / "run")
        batches = endless(s.loader, sampler)
        s.model.train()
        timed = {}
        for i in range(steps):
            if i == v["warmup"]:
                _sync(v["device"])
                timed = {"started": time.perf_counter(), "pairs": s.meter.pairs, "real": s.meter.real_tokens, "ran": s.meter.padded_tokens, "shapes": len(shapes)}
            batch = next(batches)
            loop.update(s, batch)
            loop.count(s, batch)
        _sync(v["device"])
        seconds = time.perf_counter() - timed["started"]
    pairs, real, ran = s.meter.pairs - timed["pairs"], s.meter.real_tokens - timed["real"], s.meter.padded_tokens - timed["ran"]
    sequences = pairs * (1 if task.name == "cross_encoder" else 2)
    flops = utilisation(model[0].auto_model, real, sequences, seconds, v.get("peak"))
    return {"seconds": seconds, "steps": v["timed"], "pairs_per_s": pairs / seconds, "real_tokens_per_s": real / seconds,
            "computed_tokens_per_s": ran / seconds, "distinct_shapes": len(shapes), "shapes_in_warmup": timed["shapes"], **flops,
            **peak_memory(v["device"]), "precision": s.accelerator.mixed_precision, "tf32": s.tf32}


def _child(v: dict[str, Any], queue) -> None:
    try:
        queue.put(run_variant(v))
    except BaseException as e:
        queue.put({"error": f"{type(e).__name__}: {e}"})
        raise


def in_subprocess(v: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(v, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def markdown(rows: dict[str, dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"`{header['command']}` — {header['date']}, {header['device']}, torch {header['torch']}; {header['timed']} timed steps after "
        f"{header['warmup']} warm-up; measured matmul peak " + ", ".join(f"{k} {v:,.1f} TFLOP/s" for k, v in header["peak_tflops"].items()) + ".",
        "",
        "| variant | precision | pairs/s | real tokens/s | computed tokens/s | model TFLOP/s | MFU (real tokens) | shapes | peak GPU MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "–"
        lines.append(
            f"| {name} | {r['precision']}{' (TF32)' if r['tf32'] else ''} | {r['pairs_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | "
            f"{r['computed_tokens_per_s']:,.0f} | {r['model_tflops_per_s']:.1f} | {mfu} | {r['distinct_shapes']} | {r.get('peak_gpu_allocated_mb', 0):,.0f} |"
        )
    return "\n".join(lines) + "\n"


def run_steps(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import datetime

    import torch

    from train.bench.flops import measured_peak_tflops
    from train.bench.suite import overrides

    variants = selected(args.steps_only)
    estimate = sum(v["seconds"] for v in variants.values()) * max(args.timed_steps / 200, 0.5)
    print(f"{len(variants)} variants, about {estimate / 60:.1f} minutes on an H100 (a guess; a CPU is far slower)", flush=True)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 peak that trainer.tf32 (the default) reaches
    peak = {p: measured_peak_tflops(args.device, p) for p in ("bf16", "no")}
    out = Path(args.out or "bench_results/steps")
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    extra = overrides(args.suite_override)  # --suite-override model=... and the like, for every variant
    for name, v in variants.items():
        v = {**v, **extra}
        settings = {**BASE, **v, "device": args.device, "warmup": args.warmup_steps, "timed": args.timed_steps,
                    "data_dir": args.data_dir, "peak": peak["bf16" if v["precision"] == "bf16" else "no"]}
        started = time.perf_counter()
        rows[name] = in_subprocess(settings)
        print(f"{name}: {json.dumps(rows[name])} ({time.perf_counter() - started:.0f} s)", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    header = {"command": "python -m train.bench " + " ".join(argv), "date": datetime.date.today().isoformat(), "device": device,
              "torch": torch.__version__, "peak_tflops": peak, "warmup": args.warmup_steps, "timed": args.timed_steps}
    table = markdown(rows, header)
    (out / "steps.json").write_text(json.dumps({**header, "rows": rows}, indent=2))
    (out / "steps.md").write_text(table)
    print("\n" + table)
    return {"header": header, "rows": rows}


def row_by_row_pad(sequences, pad_id: int):
    """The collator's padding before it was vectorised (a tensor a row), kept to compare against."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def collation_cost(args: argparse.Namespace) -> dict[str, float]:
    """ms a batch of `--batch-size` (default 256) MNRL pairs costs the loader: gathering the rows
    from the token cache, then padding them (vectorised, and row by row as before) or packing them."""
    import numpy as np

    from train.bench.common import resolve_model
    from train.data.batching import Collator
    from train.data.packing import PackLayout
    from train.data.tokens import token_table
    from train.models.bi_encoder import build_sentence_transformer

    batch_size = args.batch_size or 256
    name, package = resolve_model(args.model)
    model = build_sentence_transformer(name, 128, "mean", offline_package=package)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _corpus({"loss": "mnrl"}, batch_size * 40, Path(args.data_dir), tmp)
        tokens = token_table(corpus, model.tokenizer, 128, "columns", {})
        rows = tokens.dataset.select_columns(["ids_anchor", "ids_positive"])
        common = dict(pad_token_id=model.tokenizer.pad_token_id, columns=("anchor", "positive"), label=None)
        padded, packed = Collator(**common, chunk_rows=0), Collator(**common, packed=PackLayout(0, False))
        rng = np.random.default_rng(0)
        draws = [rng.choice(len(rows), batch_size, replace=False).tolist() for _ in range(30)]
        costs: dict[str, list[float]] = {"gather rows": [], "pad (vectorised)": [], "pad (row by row, before)": [], "pack": []}
        for indices in draws:
            started = time.perf_counter()
            batch = rows.__getitems__(indices)
            costs["gather rows"].append(time.perf_counter() - started)
            sequences = [r[c] for c in ("ids_anchor", "ids_positive") for r in batch]
            for label, work in (("pad (vectorised)", lambda: padded(batch)), ("pad (row by row, before)", lambda: row_by_row_pad(sequences, 0)),
                                ("pack", lambda: packed(batch))):
                started = time.perf_counter()
                work()
                costs[label].append(time.perf_counter() - started)
    result = {k: 1000 * float(np.median(v)) for k, v in costs.items()}
    print(f"collation of a batch of {batch_size} pairs ({2 * batch_size} sentences), median ms over {len(draws)} batches:")
    for k, v in result.items():
        print(f"  {k:<26} {v:8.2f} ms")
    return result
