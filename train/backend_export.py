"""A saved model to an inference backend (python -m train.export): ONNX, optimized (O1-O4) and
int8 (dynamic, or static from calibration texts), through sentence-transformers' export functions
and optimum / onnxruntime (`pip install -e ".[export]"`).

The variants land beside the model, under onnx/ with the library's file names (model.onnx,
model_O3.onnx, model_qint8_avx512_vnni.onnx, ...), the layout Hub repos use and
`SentenceTransformer(dir, backend="onnx", model_kwargs={"file_name": ...})` reads; train.push
uploads them with the model. With truncate_dim (a Matryoshka model) or out=, the model is copied
to a new folder first, since its config changes. Each variant is loaded back with the bare library
and compared with the torch model before it is listed in the card and in exports.json.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from train.errors import ConfigError

log = logging.getLogger("train")

BASE = {"onnx": "onnx/model.onnx"}
MANIFEST = "exports.json"
QUANTIZE_CONFIGS = ("arm64", "avx2", "avx512", "avx512_vnni")
OPTIMIZE_LEVELS = ("O1", "O2", "O3", "O4")
# Never copied into an export folder: a checkpoint's training state, hidden files, old exports' staging.
NOT_COPIED = ("accelerate_state", "trainer_state.json", "manifest.json", MANIFEST, "onnx", "openvino")


def check_backend(backend: str) -> None:
    """Fails before any work when the backend's libraries are missing or cannot load here."""
    if backend == "openvino":
        import transformers

        try:
            import optimum.intel.openvino  # noqa: F401
            reason = "this release exports ONNX only"
        except Exception as e:  # an ImportError, or the error optimum-intel raises on import
            reason = f"optimum-intel does not load here ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        raise ConfigError(
            f"backend=openvino: {reason}. sentence-transformers reads OpenVINO models through optimum-intel, whose newest "
            f"release (2.2.0) requires transformers<5.6 (installed: {transformers.__version__}) and fails on import with it. "
            "Use backend=onnx (docs/serving.md, \"Export\")."
        )
    try:
        import onnxruntime  # noqa: F401
        from optimum.onnxruntime import ORTModel  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"backend=onnx needs optimum's ONNX Runtime support and onnxruntime ({e}): pip install -e \".[export]\"") from None


def cpu_quantize_config() -> str:
    """The dynamic int8 preset for this CPU: arm64, avx512_vnni, avx512 or avx2 (the x86 floor)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def variant_file(optimize: str | None, quantize: str, quantize_config: str) -> str:
    """The variant's path in the model folder, named as sentence-transformers' export functions name it."""
    suffix = "_".join(p for p in (optimize, {"int8_dynamic": f"qint8_{quantize_config}",
                                             "int8_static": f"qint8_static_{quantize_config}"}.get(quantize)) if p)
    return f"onnx/model_{suffix}.onnx" if suffix else BASE["onnx"]


@contextmanager
def traceable_masks() -> Iterator[None]:
    """optimum's ONNX exporter swaps transformers' attention-mask functions for vmap-free copies written
    for transformers 4.5x (they take `cache_position`). transformers 5's own sdpa_mask no longer uses
    vmap and takes `q_length`, so those copies break the trace (a TypeError); there, transformers'
    functions stand in for the copies while the model is traced."""
    from optimum.exporters.onnx import model_patcher
    from transformers import masking_utils

    old = model_patcher.sdpa_mask_without_vmap, model_patcher.eager_mask_without_vmap
    stale = "cache_position" in inspect.signature(old[0]).parameters
    if stale and "cache_position" not in inspect.signature(masking_utils.sdpa_mask).parameters:
        model_patcher.sdpa_mask_without_vmap, model_patcher.eager_mask_without_vmap = masking_utils.sdpa_mask, masking_utils.eager_mask
    try:
        yield
    finally:
        model_patcher.sdpa_mask_without_vmap, model_patcher.eager_mask_without_vmap = old


def model_class(kind: str):
    if kind == "cross_encoder":
        from sentence_transformers.cross_encoder import CrossEncoder

        return CrossEncoder
    if kind == "sparse":
        from sentence_transformers import SparseEncoder

        return SparseEncoder
    if kind == "image_text":
        raise ConfigError("train.export: an image-text (CLIP) model has no ONNX export in sentence-transformers; "
                          "export a bi-encoder, a cross-encoder or a sparse encoder.")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer


def copy_model(folder: Path, into: Path, truncate_dim: int | None) -> None:
    """The model's files (no training state, no earlier exports) into `into`, with `truncate_dim` in its config."""
    for item in folder.iterdir():
        if item.name.startswith(".") or item.name in NOT_COPIED:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, into / item.name)
    if truncate_dim is not None:
        path = into / "config_sentence_transformers.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**config, "truncate_dim": truncate_dim}, indent=2))


def prepare_out(folder: Path, out: str | None, truncate_dim: int | None) -> Path:
    """Where the variants go: the model folder itself, or (out=, or truncate_dim: the config changes)
    a copy of it, made in one rename; an existing copy with the same truncate_dim takes more variants."""
    from train.engine.checkpoint import atomic_dir

    if out is None and truncate_dim is None:
        return folder
    target = Path(out).expanduser() if out is not None else folder.parent / f"{folder.name}-dim{truncate_dim}"
    if target.resolve() == folder.resolve():
        if truncate_dim is not None:
            raise ConfigError(f"truncate_dim={truncate_dim} changes the model's config: give out=<a new folder> (not the model's own).")
        return folder
    if (target / "modules.json").is_file():
        config = target / "config_sentence_transformers.json"
        saved = json.loads(config.read_text()).get("truncate_dim") if config.is_file() else None
        if saved != truncate_dim:
            raise ConfigError(f"out={target} holds a model with truncate_dim={saved}, not {truncate_dim}: give another out=.")
        return target
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"out={target} exists and holds no model: give a new folder (nothing is written over).")
    if target.exists():
        target.rmdir()
    with atomic_dir(target) as tmp:
        copy_model(folder, tmp, truncate_dim)
    return target


def export_base(folder: Path, kind: str, staging: Path) -> Any:
    """The model traced to ONNX in `staging` (onnx/model.onnx), loaded as the library loads it.
    The torch model is loaded as this project loads a saved model (token types fitted to the
    backbone: klue/roberta's BERT tokenizer would feed the trace a token type it has no row for)."""
    from train.models.saved import load_saved_model

    load_saved_model(folder).save(str(staging / "torch"))
    with traceable_masks():
        model = model_class(kind)(str(staging / "torch"), backend="onnx", device="cpu")
    model.save(str(staging))
    shutil.rmtree(staging / "torch")
    return model


def load_variant(folder: Path, kind: str, file_name: str) -> Any:
    kwargs = {} if file_name == BASE["onnx"] else {"model_kwargs": {"file_name": file_name}}
    return model_class(kind)(str(folder), backend="onnx", device="cpu", **kwargs)


def static_quantize(model: Any, kind: str, quantize_config: str, texts: list[str], staging: Path, suffix: str) -> None:
    """onnxruntime's static int8: activation ranges from `texts` (min-max), then the quantized graph
    written where export_dynamic_quantized_onnx_model writes its own (the library's helper moves it)."""
    import datasets
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig
    from sentence_transformers.backend.utils import save_or_push_to_hub_model

    tokenizer = model.tokenizer
    pairs = (texts[0::2], texts[1::2]) if kind == "cross_encoder" else (texts,)
    features = tokenizer(*pairs, truncation=True, max_length=model.max_seq_length or 512)
    calibration = datasets.Dataset.from_dict(dict(features))
    quantizer = ORTQuantizer.from_pretrained(model.transformers_model)
    # Per-channel weights and MatMul alone, min-max ranges: on MiniLM and KorSTS texts, cosine to the
    # torch model 0.897 on average, against 0.830 per tensor and 0.800 with every operator optimum
    # lists quantized (percentile ranges: 0.719). docs/serving.md has the figures.
    qconfig = getattr(AutoQuantizationConfig, quantize_config)(is_static=True, per_channel=True, operators_to_quantize=["MatMul"])
    # The calibration graph goes into the staging dir (optimum's default is the working directory).
    ranges = quantizer.fit(dataset=calibration, calibration_config=AutoCalibrationConfig.minmax(calibration),
                           operators_to_quantize=qconfig.operators_to_quantize, onnx_augmented_model_name=staging / "augmented_model.onnx")
    save_or_push_to_hub_model(
        export_function=lambda d: quantizer.quantize(qconfig, d, file_suffix=suffix, calibration_tensors_range=ranges),
        export_function_name="static int8 (train.export)", config=qconfig, model_name_or_path=str(staging), file_suffix=suffix,
        backend="onnx", model=model,
    )


def make_variant(model: Any, kind: str, staging: Path, optimize: str | None, quantize: str, quantize_config: str,
                 calibration_texts: list[str]) -> str:
    """Writes the variant into `staging`/onnx (from the traced model there); returns its file name."""
    from sentence_transformers import export_dynamic_quantized_onnx_model, export_optimized_onnx_model

    if optimize:
        export_optimized_onnx_model(model, optimize, str(staging))
    name = variant_file(optimize, quantize, quantize_config)
    suffix = Path(name).stem.removeprefix("model_")
    if quantize == "int8_dynamic":
        export_dynamic_quantized_onnx_model(model, quantize_config, str(staging), file_suffix=suffix)
    elif quantize == "int8_static":
        static_quantize(model, kind, quantize_config, calibration_texts, staging, suffix)
    return name


def fidelity(reference: Any, exported: Any, kind: str, texts: list[str]) -> dict[str, Any]:
    """How far the variant's outputs are from the torch model's on `texts`: cosine per text for a
    bi-encoder, |score difference| per pair for a cross-encoder."""
    import numpy as np

    if kind == "cross_encoder":
        pairs = list(zip(texts[0::2], texts[1::2]))
        diff = np.abs(np.asarray(reference.predict(pairs)) - np.asarray(exported.predict(pairs)))
        return {"pairs": len(pairs), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
    if kind == "sparse":  # sparse tensors over the vocabulary: compared dense
        a, b = (m.encode(texts, convert_to_sparse_tensor=False, convert_to_tensor=True).float().numpy() for m in (reference, exported))
        a, b = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (a, b))
    else:
        a, b = reference.encode(texts, normalize_embeddings=True), exported.encode(texts, normalize_embeddings=True)
    cos = (a * b).sum(axis=1)
    return {"texts": len(texts), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def file_mb(folder: Path, name: str) -> float:
    path = folder / name
    extra = [p for p in path.parent.glob(path.name + "_data*")]  # external weights of a model over 2 GB
    return sum(p.stat().st_size for p in [path, *extra]) / 2**20


def place(staging: Path, target: Path, names: list[str], overwrite: bool) -> list[str]:
    """Moves the variant files (and their external-data files) from staging into the model folder,
    each in one rename; a file already there is kept unless overwrite. Returns what was moved."""
    moved = []
    for name in names:
        src = staging / name
        if (target / name).exists() and not overwrite:
            continue
        for part in [src, *src.parent.glob(src.name + "_data*")]:
            dest = target / part.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, dest)
            moved.append(dest.relative_to(target).as_posix())
    return moved


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"variants": []}


def record(folder: Path, kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Adds `entries` to exports.json (each replacing one of the same file) and the card's section."""
    from train.cards.export_card import export_section, with_export_section
    from train.engine.checkpoint import add_file

    manifest = read_manifest(folder)
    files = {e["file"] for e in entries}
    manifest["variants"] = [v for v in manifest["variants"] if v["file"] not in files] + entries
    add_file(folder, MANIFEST, json.dumps(manifest, indent=2))
    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else f"# {folder.name}\n"
    add_file(folder, "README.md", with_export_section(text, export_section(kind, manifest["variants"])))
    return manifest


def check_request(optimize: str | None, quantize: str, quantize_config: str) -> None:
    if optimize is not None and optimize not in OPTIMIZE_LEVELS:
        raise ConfigError(f"optimize={optimize}: one of {', '.join(OPTIMIZE_LEVELS)} (or null: none).")
    if optimize is not None and quantize != "none":
        # onnxruntime's quantizer cannot type the fused nodes of an optimized graph (shape inference fails).
        raise ConfigError(f"optimize={optimize} with quantize={quantize}: export them as two variants (one command each); "
                          "onnxruntime does not quantize an optimized graph.")
    if quantize_config not in QUANTIZE_CONFIGS:
        raise ConfigError(f"quantize_config={quantize_config}: one of auto, {', '.join(QUANTIZE_CONFIGS)}.")


def export_model(folder: Path, kind: str, optimize: str | None, quantize: str, quantize_config: str, out: Path,
                 calibration_texts: list[str], calibration_source: str, check_texts: list[str], truncate_dim: int | None,
                 overwrite: bool) -> list[dict[str, Any]]:
    """Exports one variant of the model in `folder` into `out` (the same folder, or a new copy of it),
    and onnx/model.onnx, the variants' base, if `out` has none; returns their exports.json entries."""
    from train.engine.checkpoint import list_in_manifest
    from train.models.saved import load_saved_model

    check_request(optimize, quantize, quantize_config)
    if quantize == "int8_static" and len(calibration_texts) < 2:
        raise ConfigError(f"quantize=int8_static calibrates on the data option's train texts: {calibration_source} gave "
                          f"{len(calibration_texts)} (calibration_samples ≥ 2, and a data option with a train split).")
    name = variant_file(optimize, quantize, quantize_config)
    if (out / name).exists() and not overwrite:
        raise ConfigError(f"{out / name} exists: it is kept. Pass overwrite=true to export it again.")
    started = time.perf_counter()
    staging = out / ".export.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model = export_base(folder, kind, staging)
        with quiet_root_logger():  # onnxruntime's quantizer logs a line per tensor at INFO on the root logger
            made = make_variant(model, kind, staging, optimize, quantize, quantize_config, calibration_texts)
        placed = place(staging, out, sorted({BASE["onnx"], made}), overwrite=overwrite)
        list_in_manifest(out, placed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    reference = load_saved_model(out)
    entries = []
    for file, (o, q) in ((BASE["onnx"], (None, "none")), (made, (optimize, quantize))):
        if file not in placed or (entries and file == entries[0]["file"]):
            continue
        entry = {"file": file, "backend": "onnx", "optimize": o, "quantize": q, "quantize_config": quantize_config if q != "none" else None,
                 "truncate_dim": truncate_dim, "mb": file_mb(out, file), "seconds": seconds,
                 "check": fidelity(reference, load_variant(out, kind, file), kind, check_texts), "source": str(folder)}
        if q == "int8_static":
            entry["calibration"] = {"source": calibration_source, "samples": len(calibration_texts)}
        entries.append(entry)
    record(out, kind, entries)
    return entries


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)
