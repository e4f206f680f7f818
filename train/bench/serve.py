"""python -m train.bench --serve: what a query costs, each way of running the same model.

For each variant (torch fp32, torch bf16, and the ONNX / OpenVINO backends of sentence-transformers
where they can be loaded): ms a query at batch 1 (median and p95, one query at a time, as a
search service meets them), texts a second at batch 32, the weights' size, and KorSTS test
Spearman (the library's EmbeddingSimilarityEvaluator, cosine). A variant whose backend does not
load is a row that says why, not a missing row.

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

# (row name, backend, what SentenceTransformer is given besides the folder)
VARIANTS = [
    ("torch fp32", "torch", {}),
    ("torch bf16", "torch", {"dtype": "bfloat16"}),
    ("ONNX fp32", "onnx", {}),
    ("ONNX O3", "onnx", {"file_name": "onnx/model_O3.onnx"}),
    ("ONNX int8", "onnx", {"file_name": "onnx/model_qint8_avx512_vnni.onnx"}),
    ("OpenVINO fp32", "openvino", {}),
    ("OpenVINO int8", "openvino", {"file_name": "openvino/openvino_model_qint8_quantized.xml"}),
]


def korsts_test(data_dir: Path) -> tuple[list[str], list[str], list[float]]:
    """KorSTS test as the project reads it (scores rescaled to [0, 1])."""
    from train.data.presets import load_sts_splits

    test = load_sts_splits("korsts", ("test",), data_dir=data_dir)["test"]
    return list(test["sentence1"]), list(test["sentence2"]), [float(s) for s in test["score"]]


def load_variant(model_dir: str, package: str | None, backend: str, kwargs: dict[str, Any], max_seq_length: int):
    import torch
    from sentence_transformers import SentenceTransformer

    from train.models.bi_encoder import build_sentence_transformer

    if backend == "torch":
        model = build_sentence_transformer(model_dir, max_seq_length, "mean", offline_package=package)
        return model.to(torch.bfloat16) if kwargs.get("dtype") == "bfloat16" else model
    return SentenceTransformer(model_dir, device="cpu", backend=backend, model_kwargs=kwargs or None)


def weights_bytes(model: Any, model_dir: str, backend: str, kwargs: dict[str, Any]) -> int:
    """The bytes of the weights the variant runs: the torch state dict as held, or the exported file."""
    if backend == "torch":
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())
    name = kwargs.get("file_name") or ("onnx/model.onnx" if backend == "onnx" else "openvino/openvino_model.xml")
    path = Path(model_dir) / name
    return sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file())


def measure(model: Any, queries: list[str], texts: list[str], sts: tuple[list[str], list[str], list[float]]) -> dict[str, Any]:
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
    evaluator = EmbeddingSimilarityEvaluator(*sts, main_similarity="cosine", name="korsts-test")
    figures = evaluator(model)
    ms = sorted(1000 * s for s in seconds)
    return {"ms_median": statistics.median(ms), "ms_p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))], "texts_per_s": throughput,
            "korsts_test_spearman": float(figures[evaluator.primary_metric])}


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from train.bench.common import resolve_model

    model_dir, package = resolve_model(args.model)
    if package:
        from train.models.sources import package_model_dir

        model_dir = str(package_model_dir(package))
    sts = korsts_test(Path(args.data_dir))
    queries = sts[0][: args.serve_queries]
    texts = (sts[0] + sts[1])[: args.serve_texts]
    rows = {}
    for name, backend, kwargs in VARIANTS:
        try:
            model = load_variant(model_dir, package, backend, kwargs, args.max_seq_length)
        except Exception as e:  # a backend that does not install or load here: the row says so
            rows[name] = {"available": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            print(f"{name}: not available ({rows[name]['reason']})", flush=True)
            continue
        with torch.inference_mode():
            rows[name] = {"available": True, "weights_mb": weights_bytes(model, model_dir, backend, kwargs) / 2**20,
                          **measure(model, queries, texts, sts)}
        print(f"{name}: {rows[name]}", flush=True)
    return {"model": args.model, "model_dir": model_dir, "threads": torch.get_num_threads(), "queries": len(queries),
            "texts": len(texts), "variants": rows, "table": table(rows)}


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| variant | ms/query, batch 1 (median / p95) | texts/s, batch 32 | weights (MB) | KorSTS test Spearman |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        if not r["available"]:
            lines.append(f"| {name} | not available: {r['reason']} | | | |")
        else:
            lines.append(f"| {name} | {r['ms_median']:.2f} / {r['ms_p95']:.2f} | {r['texts_per_s']:.1f} | {r['weights_mb']:.1f} | "
                         f"{r['korsts_test_spearman']:.4f} |")
    return "\n".join(lines)
