"""python -m train.bench: the command line; each run happens in a fresh subprocess."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from train.bench.common import machine, precision as _precision, write_report
from train.bench.recipes import __doc__ as DOC, run_encode, run_ours, run_st_trainer, unit_of

QUALITY = ("dev_spearman", "test_spearman", "test_ndcg@10", "test_recall@1", "test_recall@10", "dev_zero_shot")  # the figures averaged over seeds


def _child(kind: str, args: argparse.Namespace, queue) -> None:
    try:
        if args.task == "image_text":
            from train.bench import image_text as side

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
    if "process_seconds" in runs[0]:
        out["process_seconds_mean"] = statistics.fmean(r["process_seconds"] for r in runs)
    if "real_tokens" in runs[0]:
        out["real_tokens_per_s"] = sum(r["real_tokens"] for r in runs) / total
        out["padded_tokens_per_s"] = sum(r["padded_tokens"] for r in runs) / total
        out["padding_ratio"] = sum(r["padded_tokens"] for r in runs) / sum(r["real_tokens"] for r in runs)
    for figure in QUALITY:
        if figure in runs[0]:
            values = [r[figure] for r in runs]
            out[f"{figure}_mean"] = statistics.fmean(values)
            # Over seeds: the spread says whether a difference in means is more than seed noise.
            out[f"{figure}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
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
    if "process_seconds_mean" in summary[ours] and "process_seconds_mean" in summary[theirs]:
        # How many times faster the whole process is (its seconds, theirs over ours).
        out["whole_process"] = summary[theirs]["process_seconds_mean"] / summary[ours]["process_seconds_mean"]
    for figure in QUALITY:
        if f"{figure}_mean" in summary[ours] and f"{figure}_mean" in summary[theirs]:
            out[f"{figure}_diff"] = summary[ours][f"{figure}_mean"] - summary[theirs][f"{figure}_mean"]
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
        print(f"ratios (ours / {label[theirs]}): " + ", ".join(f"{k}={v:.4f}" if k.endswith("_diff") else f"{k}={v:.3f}" for k, v in r.items()))
    for figure in QUALITY:
        if f"{figure}_mean" in summary[kinds[0]]:
            n = len(runs[kinds[0]])
            print(f"{figure} over {n} seed(s), mean ± std: " + ", ".join(
                f"{label[k]} {summary[k][f'{figure}_mean']:.4f} ± {summary[k][f'{figure}_std']:.4f}" for k in kinds if f"{figure}_mean" in summary[k]))
    if unit in ("pairs", "images"):
        ours = summary[kinds[0]]
        parts = [f"{r[f'{unit}_per_s']:.2f}x SentenceTransformerTrainer at {'its default' if t == 'st_trainer' else 'equal'} precision "
                 f"({runs[t][0]['precision']})" + (f" ({r['whole_process']:.2f}x as a whole process)" if "whole_process" in r else "")
                 for t, r in ratios.items()]
        print(f"headline: ours ({runs[kinds[0]][0]['precision']}) {ours[f'{unit}_per_s']:.1f} {unit}/s = " + ", ".join(parts))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.bench", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    _recipe_arguments(p)
    _scale_arguments(p)
    p.add_argument("--out", default=None, help="the JSON report (default bench_results/bench.json, or scale.json); "
                                                "--suite: the folder for suite.json and suite.md")
    steps = p.add_argument_group("steady-state step rates (train/bench/steps.py)")
    steps.add_argument("--steps", action="store_true", help="time the training step of each variant (padding-free or padded, "
                       "chunks, bf16 or fp32, compiled or not) after warm-up steps, the device synchronised at the window's edges")
    steps.add_argument("--steps-only", default=None, metavar="NAME,NAME", help="--steps: only these variants")
    steps.add_argument("--warmup-steps", type=int, default=20, help="--steps: steps run before the timed window")
    steps.add_argument("--timed-steps", type=int, default=200, help="--steps: steps timed")
    steps.add_argument("--collation", action="store_true", help="ms the loader spends a batch (--batch-size, default 256 MNRL pairs): "
                       "gathering rows, padding (vectorised and row by row) and packing")
    serve = p.add_argument_group("query cost (train/bench/serve.py)")
    serve.add_argument("--serve", action="store_true", help="ms/query at batch 1, texts/s at batch 32, weights and KorSTS test "
                       "Spearman of --model run by torch fp32/bf16 and the ONNX/OpenVINO backends")
    serve.add_argument("--serve-queries", type=int, default=300, help="--serve: queries timed one at a time")
    serve.add_argument("--serve-texts", type=int, default=2048, help="--serve: texts embedded at batch 32")
    p.add_argument("--suite", default=None, choices=["gpu"],
                   help="gpu: every GPU recipe against the library's trainer at equal precision, one JSON and one Markdown "
                        "table (train/bench/suite.py)")
    p.add_argument("--suite-override", action="append", default=[], metavar="KEY=VALUE",
                   help="--suite: a setting applied to every recipe (max_steps=2, model=PATH, ...): small runs, e.g. on a CPU")
    p.add_argument("--suite-only", default=None, metavar="NAME,NAME", help="--suite: only these recipes")
    p.add_argument("--profile", action="store_true",
                   help="ours: a torch.profiler summary of the timed span (top operators by GPU and CPU time) beside --out")
    return p


def _recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The recipe both sides train: task, model, data, loss, sizes, precision, repeats."""
    p.add_argument("--task", default="bi_encoder", choices=["bi_encoder", "cross_encoder", "image_text", "sparse", "multi_vector"],
                   help="bi_encoder: CoSENT against SentenceTransformerTrainer; cross_encoder: BCE (gold/5) against "
                        "CrossEncoderTrainer; image_text: CLIP's loss on Fashion-MNIST against SentenceTransformerTrainer; "
                        "sparse: SPLADE (loss=splade) against SparseEncoderTrainer; multi_vector: ColBERT (loss=colbert) against "
                        "MultiVectorEncoderTrainer (both on pairs or triplets: --data korquad, kor_xnli, kornli)")
    p.add_argument("--query-length", type=int, default=32, help="multi_vector: model.query_length (queries padded to it with [MASK])")
    p.add_argument("--vit", default="small", choices=["small", "b32"],
                   help="image_text: the scratch image tower, model=minilm_vit's (28 px) or ViT-B/32-sized (224 px)")
    p.add_argument("--workers", type=int, default=2, help="image_text: DataLoader worker processes on both sides")
    p.add_argument("--max-eval-samples", type=int, default=1000, help="image_text: dev images scored; sparse, multi_vector: KorSTS dev and test pairs scored (contrastive data other than korquad)")
    p.add_argument("--model", default="minilm",
                   help="a model preset of conf/model (minilm, roberta_base_random: base size, random weights), a Hub id or a local path")
    p.add_argument("--data", default="stsb", help="a preset: stsb or korsts; for --loss mnrl an NLI preset (kor_xnli, kornli) or korquad "
                   "(its train articles' questions and paragraphs; scored on its test articles against every paragraph)")
    p.add_argument("--loss", default=None, choices=["cosent", "bce", "mnrl", "cached_mnrl"],
                   help="default: cosent (bi_encoder), bce (cross_encoder); mnrl/cached_mnrl: the contrastive recipe "
                        "(in-batch negatives, no duplicate texts in a batch) on --data's triplets or --train-file's pairs, "
                        "scored on KorSTS dev and test")
    p.add_argument("--train-file", default=None, help="--loss mnrl: a JSONL of anchor, positive[, negative] to train on instead of --data")
    p.add_argument("--data-dir", default=os.environ.get("EMBED_DATA_DIR", "data"))
    p.add_argument("--batch-size", type=int, default=None, help="default 16; --scale 32")
    p.add_argument("--lr", type=float, default=None, help="default 2e-5; image_text 1e-3 (its image tower starts from scratch)")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=None, help="0 = one epoch (the default); --scale: default 2")
    p.add_argument("--max-train-samples", type=int, default=0)
    p.add_argument("--bucket-windows", type=int, default=0, help="ours: trainer.bucket_windows (default 0: random batches)")
    p.add_argument("--chunk-rows", type=int, default=None, help="ours: trainer.forward_chunk_rows (default: the trainer's)")
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
    p.add_argument("--seeds", type=int, default=0,
                   help="run both sides with seeds 0..N-1 (sets --repeats N --seed 0): mean and spread of the figures")
    p.add_argument("--test-file", default=None,
                   help="a held-out file in the --data preset's format (e.g. the STS Benchmark's sts-test.csv), scored "
                        "beside dev; a preset with its own test split (korsts) is scored on it without this")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="both sides; default each side's own (this project 0.01, the library's trainers 0.0)")
    p.add_argument("--skip-eval", action="store_true", help="no dev Spearman (speed only)")
    p.add_argument("--encode", action="store_true", help="benchmark embedding a split instead of training")
    p.add_argument("--num-proc", type=int, default=None, help="ours: processes that tokenize (data.num_proc); default the cores")


def _scale_arguments(p: argparse.ArgumentParser) -> None:
    scale = p.add_argument_group("scale (train/bench/scale.py)")
    scale.add_argument("--scale", type=lambda v: [int(n) for n in v.split(",")], default=[],
                       help="comma-separated corpus sizes: synthetic pairs, MNRL, first and second run of both sides")
    scale.add_argument("--scale-file", action="append", default=[], help="a pairs JSONL (anchor, positive) to use instead")
    scale.add_argument("--scale-dir", default="bench_results/scale", help="where the generated files, caches and logs go")
    scale.add_argument("--processes", type=int, default=1, help="ours under accelerate launch with this many CPU processes")
    scale.add_argument("--skip-st", action="store_true", help="only this project's runs (also outside --scale)")
    scale.add_argument("--keep", action="store_true", help="keep both sides' caches after the runs")
    scale.add_argument("--timeout", type=float, default=7200, help="seconds a run may take")
    scale.add_argument("--override", action="append", default=[], help="an extra override for ours (repeatable)")
    scale.add_argument("--retrieval", type=int, default=0, help="train.mine and train.retrieve over this many synthetic passages")
    scale.add_argument("--queries", type=int, default=100_000, help="--retrieval: queries mined and retrieved")
    scale.add_argument("--beir-corpus", type=lambda v: [int(n) for n in v.split(",")], default=[],
                       help="comma-separated sizes: a synthetic BEIR corpus.jsonl read as a dict and through the data cache "
                            "(time and peak RSS; train/bench/corpus_scale.py)")
    scale.add_argument("--sparse-index", type=lambda v: [int(n) for n in v.split(",")], default=[],
                       help="comma-separated sizes: the sparse index and search of train.evaluate on synthetic vectors, "
                            "chunked against whole-corpus (time and peak RSS; train/bench/sparse_index_scale.py)")
    scale.add_argument("--active-dims", type=int, default=128, help="--sparse-index: active dimensions a passage")
    scale.add_argument("--sparse-ways", default="chunked,whole", help="--sparse-index: which ways to run, comma-separated")
    scale.add_argument("--reuse-vectors", action="store_true",
                       help="--retrieval: keep the corpus embeddings cached by an earlier run of the same size")
    scale.add_argument("--search", default="auto", choices=["auto", "faiss", "torch"], help="--retrieval: the search backend")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser()
    args = p.parse_args(argv)
    if args.steps:
        from train.bench.steps import run_steps

        return run_steps(args, argv if argv is not None else sys.argv[1:])
    if args.collation:
        from train.bench.steps import collation_cost

        return collation_cost(args)
    if args.serve:
        from train.bench.serve import run_serve

        report = {"args": vars(args), "machine": machine(), "results": run_serve(args)}
        print(report["results"]["table"])
        write_report(report, args.out or "bench_results/serve.json")
        return report
    if args.suite:
        from train.bench.suite import run_suite

        return run_suite(args, argv if argv is not None else sys.argv[1:], run_recipe=main)
    _check(p, args)
    if args.seeds:
        args.repeats, args.seed = args.seeds, 0
    if args.lr is None:
        args.lr = 1e-3 if args.task == "image_text" else 2e-5
    sizing = bool(args.scale or args.scale_file)
    args.batch_size = args.batch_size or (32 if sizing else 16)
    args.max_steps = args.max_steps if args.max_steps is not None else (2 if sizing else 0)
    args.out = args.out or f"bench_results/{'scale' if sizing else 'bench'}.json"
    if args.beir_corpus:
        from train.bench.corpus_scale import run_corpus_scale

        work = Path(args.scale_dir)
        work.mkdir(parents=True, exist_ok=True)
        report = {"args": vars(args), "machine": machine(), "results": run_corpus_scale(args.beir_corpus, work, Path(args.data_dir) / "korsts")}
        write_report(report, args.out if args.out != "bench_results/bench.json" else "bench_results/beir_corpus.json")
        return report
    if args.sparse_index:
        from train.bench.sparse_index_scale import run_sparse_index_scale

        results = run_sparse_index_scale(args.sparse_index, args.active_dims, args.sparse_ways.split(","), args.timeout)
        report = {"args": vars(args), "machine": machine(), "results": results}
        write_report(report, args.out if args.out != "bench_results/bench.json" else "bench_results/sparse_index.json")
        return report
    if args.retrieval:
        from train.bench.scale import run_retrieval_scale

        report = {"args": vars(args), "machine": machine(), "results": run_retrieval_scale(args)}
        write_report(report, args.out if args.out != "bench_results/bench.json" else "bench_results/retrieval.json")
        return report
    if sizing:
        from train.bench.scale import run_scale

        report = {"args": vars(args), "machine": machine(), "results": run_scale(args)}
        write_report(report, args.out)
        return report

    return compare(args)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Each side in its own subprocess, repeated (alternating which goes first), then the summary and ratios."""
    kinds = ("encode_ours", "encode_st") if args.encode else ("ours", "st_trainer")
    ours_precision = _precision(args.precision, args.device)
    if not args.encode and not args.no_equal_precision and ours_precision != _precision(args.st_precision, args.device):
        kinds = (*kinds, "st_trainer_same")
    if args.skip_st:  # a variant of ours against figures the library's side already gave
        kinds = kinds[:1]
    unit = unit_of(vars(args))
    runs: dict[str, list] = {k: [] for k in kinds}
    for repeat in range(args.repeats):
        order = kinds if repeat % 2 == 0 else kinds[::-1]  # alternate A/B against drift
        # A new seed each repeat (the same for both sides): dev means average over seeds too.
        repeat_args = argparse.Namespace(**{**vars(args), "seed": args.seed + repeat})
        for kind in order:
            started = time.perf_counter()
            result = {"seed": repeat_args.seed, **in_subprocess(kind, repeat_args)}
            # The whole process: start-up and imports, model and data loading, training, dev evaluation.
            result["process_seconds"] = time.perf_counter() - started
            runs[kind].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {kind}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in result.items()), flush=True)
    summary = {k: summarize(v, unit) for k, v in runs.items()}
    ratios = {theirs: ratios_against(summary, kinds[0], theirs, unit) for theirs in kinds[1:]}
    print_summary(runs, summary, ratios, unit)
    report = {"args": vars(args), "machine": machine(), "runs": runs, "summary": summary, "ratios": ratios}
    write_report(report, args.out)
    return report


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.task in ("sparse", "multi_vector"):
        if args.loss is not None:
            p.error(f"--task {args.task} trains its own recipe (loss={'splade' if args.task == 'sparse' else 'colbert'}): leave --loss out")
        if not args.train_file and args.data not in ("kor_xnli", "kornli", "korquad"):
            p.error(f"--task {args.task} needs pairs or triplets: --data korquad, kor_xnli (or kornli), or --train-file pairs.jsonl")
    elif args.loss in ("mnrl", "cached_mnrl"):
        if args.task != "bi_encoder":
            p.error(f"--loss {args.loss} trains a bi-encoder: leave --task at bi_encoder")
        if not args.train_file and args.data not in ("kor_xnli", "kornli", "korquad"):
            p.error(f"--loss {args.loss} needs pairs or triplets: --data kor_xnli (or kornli), korquad, or --train-file pairs.jsonl")
    elif args.loss == "bce" and args.task != "cross_encoder" or args.loss == "cosent" and args.task != "bi_encoder":
        p.error(f"--loss {args.loss} does not go with --task {args.task}")
    elif args.train_file and args.task not in ("sparse", "multi_vector"):
        p.error("--train-file is for --loss mnrl or cached_mnrl, --task sparse and --task multi_vector")


if __name__ == "__main__":
    main()
