"""python -m train.bench --serve: what a query costs, each way of running the same model.

The model is saved once as a sentence-transformers folder; each ONNX variant is made from it by
train.export's own code (fp32, O3, int8 dynamic, int8 static calibrated on 300 KorSTS train
texts) and loaded with the bare library. For each variant: ms a query at batch 1 (median and p95,
one query at a time, as a search service meets them), texts a second at batch 32, the weights'
size, KorSTS test Spearman (the library's EmbeddingSimilarityEvaluator, cosine) and KorQuAD test
nDCG@10 (exact search of its 1,264 questions over all 964 paragraphs). A variant whose backend does not load (OpenVINO
here) is a row that says why, not a missing row.

    python -m train.bench --serve                                  # MiniLM
    python -m train.bench --serve --model roberta_base_random      # klue/roberta-base's shape (random weights: speed only)
    python -m train.bench --serve --model outputs/<run>/final      # your trained model
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

# (row name, backend, torch: the weights' dtype; ONNX: (optimize, quantize) of the export; OpenVINO: None)
VARIANTS = [
    ("torch fp32", "torch", "float32"),
    ("torch bf16", "torch", "bfloat16"),
    ("ONNX fp32", "onnx", (None, "none")),
    ("ONNX O3", "onnx", ("O3", "none")),
    ("ONNX int8 (dynamic)", "onnx", (None, "int8_dynamic")),
    ("ONNX int8 (static, 300 KorSTS train texts)", "onnx", (None, "int8_static")),
    ("OpenVINO fp32", "openvino", None),
    ("OpenVINO int8", "openvino", None),
]
CALIBRATION_TEXTS = 300


def korsts_test(data_dir: Path) -> tuple[list[str], list[str], list[float]]:
    """KorSTS test as the project reads it (scores rescaled to [0, 1])."""
    from train.data.presets import load_sts_splits

    test = load_sts_splits("korsts", ("test",), data_dir=data_dir)["test"]
    return list(test["sentence1"]), list(test["sentence2"]), [float(s) for s in test["score"]]


def save_model(model_dir: str, package: str | None, max_seq_length: int, into: Path) -> Path:
    """The model as one sentence-transformers folder, which every variant is made from."""
    from train.models.bi_encoder import build_sentence_transformer

    build_sentence_transformer(model_dir, max_seq_length, "mean", offline_package=package).save(str(into))
    return into


def export_variant(folder: Path, settings: tuple[str | None, str], calibration: list[str], check: list[str]) -> str:
    """The variant made by train.export's own code (train/backend_export.py); returns its file."""
    from train import backend_export

    optimize, quantize = settings
    qconfig = backend_export.cpu_quantize_config()
    name = backend_export.variant_file(optimize, quantize, qconfig)
    if not (folder / name).exists():
        backend_export.export_model(folder, "bi_encoder", optimize, quantize, qconfig, folder, calibration, "KorSTS train", check, None, False)
    return name


def load_variant(folder: Path, backend: str, settings: Any, calibration: list[str], check: list[str]) -> tuple[Any, str | None]:
    import torch
    from sentence_transformers import SentenceTransformer

    if backend == "openvino":
        from train.backend_export import check_backend

        check_backend("openvino")  # raises, saying why
    if backend == "torch":
        model = SentenceTransformer(str(folder), device="cpu")
        return model.to(getattr(torch, settings)), None
    file = export_variant(folder, settings, calibration, check)
    return SentenceTransformer(str(folder), device="cpu", backend="onnx", model_kwargs={"file_name": file}), file


def weights_bytes(model: Any, folder: Path, file: str | None) -> int:
    """The bytes of the weights the variant runs: the torch state dict as held, or the exported file."""
    if file is None:
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return sum(p.stat().st_size for p in (folder / file).parent.glob(Path(file).name + "*"))


def korquad_ndcg(model: Any, split: Any) -> float:
    """nDCG@10 of exact cosine search over KorQuAD test (1,264 questions against all 964 paragraphs)."""
    import numpy as np

    from train.evaluation.ranking import ranking_metrics

    ids = list(split.corpus)
    queries = list(split.relevant)
    q = model.encode([split.queries[i] for i in queries], batch_size=32, normalize_embeddings=True)
    c = model.encode([split.corpus[i] for i in ids], batch_size=32, normalize_embeddings=True)
    rankings = np.argsort(-(q.astype(np.float32) @ c.astype(np.float32).T), axis=1)[:, :100]
    position = {cid: n for n, cid in enumerate(ids)}
    return ranking_metrics(rankings.tolist(), [{position[c] for c in split.relevant[qid]} for qid in queries])["ndcg@10"]


def measure(model: Any, queries: list[str], texts: list[str], sts: tuple[list[str], list[str], list[float]] | None) -> dict[str, Any]:
    """Speed, and KorSTS test Spearman unless `sts` is None (a model of random weights: the figure means nothing)."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    model.encode(queries[:5], batch_size=1)  # warm-up: the first calls allocate
    seconds = []
    for q in queries:
        start = time.perf_counter()
        model.encode([q], batch_size=1)
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    throughput = len(texts) / (time.perf_counter() - start)
    spearman = None
    if sts is not None:
        evaluator = EmbeddingSimilarityEvaluator(*sts, main_similarity="cosine", name="korsts-test")
        spearman = float(evaluator(model)[evaluator.primary_metric])
    ms = sorted(1000 * s for s in seconds)
    return {"ms_median": statistics.median(ms), "ms_p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))], "texts_per_s": throughput,
            "korsts_test_spearman": spearman}


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    import torch

    from train.bench.common import resolve_model
    from train.data.beir import KORQUAD_FILE, retrieval_split
    from train.data.presets import load_sts_splits

    model_dir, package = resolve_model(args.model)
    sts = korsts_test(Path(args.data_dir))
    queries = sts[0][: args.serve_queries]
    texts = (sts[0] + sts[1])[: args.serve_texts]
    calibration = list(dict.fromkeys(load_sts_splits("korsts", ("train",), data_dir=args.data_dir)["train"]["sentence1"]))[:CALIBRATION_TEXTS]
    # KorQuAD is not shipped: where --data-dir lacks it, the nDCG column is empty (a bench downloads nothing).
    korquad_file = Path(args.data_dir) / KORQUAD_FILE
    korquad = retrieval_split("korquad", korquad_file, "test") if korquad_file.is_file() else None
    random_weights = is_random_preset(args.model)  # speed only: quality columns stay empty
    rows = {}
    with tempfile.TemporaryDirectory(prefix="serve-") as tmp:
        folder = save_model(model_dir, package, args.max_seq_length, Path(tmp) / "model")
        for name, backend, settings in VARIANTS:
            try:
                model, file = load_variant(folder, backend, settings, calibration, list(sts[1][:256]))
            except Exception as e:  # a backend that does not install or load here: the row says so
                rows[name] = {"available": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                print(f"{name}: not available ({rows[name]['reason']})", flush=True)
                continue
            with torch.inference_mode():
                rows[name] = {"available": True, "file": file, "weights_mb": weights_bytes(model, folder, file) / 2**20,
                              **measure(model, queries, texts, None if random_weights else sts),
                              "korquad_test_ndcg@10": korquad_ndcg(model, korquad) if korquad and not random_weights else None}
            print(f"{name}: {rows[name]}", flush=True)
    return {"model": args.model, "model_dir": model_dir, "threads": torch.get_num_threads(), "queries": len(queries),
            "texts": len(texts), "variants": rows, "table": table(rows)}


def is_random_preset(model: str) -> bool:
    from train.bench.common import CONF_MODELS

    preset = CONF_MODELS / f"{model}.yaml"
    return "/" not in model and preset.is_file() and "random_init" in preset.read_text()


def number(x: float | None, missing: str) -> str:
    return missing if x is None else f"{x:.4f}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| variant | ms/query, batch 1 (median / p95) | texts/s, batch 32 | weights (MB) | KorSTS test Spearman | KorQuAD test nDCG@10 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        if not r["available"]:
            lines.append(f"| {name} | not available: {r['reason'].split('. ')[0]} (the JSON has the whole reason) | | | | |")
        else:
            lines.append(f"| {name} | {r['ms_median']:.2f} / {r['ms_p95']:.2f} | {r['texts_per_s']:.1f} | {r['weights_mb']:.1f} | "
                         f"{number(r['korsts_test_spearman'], '(random weights)')} | "
                         f"{number(r['korquad_test_ndcg@10'], '(random weights)' if r['korsts_test_spearman'] is None else '(no KorQuAD in --data-dir)')} |")
    return "\n".join(lines)
