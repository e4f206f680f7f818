"""python -m train.export: a saved model as ONNX, optimized or int8, for cheap queries.

    python -m train.export outputs/<run>/final                              # onnx/model.onnx (fp32)
    python -m train.export outputs/<run>/final quantize=int8_dynamic        # onnx/model_qint8_<cpu>.onnx
    python -m train.export outputs/<run>/final optimize=O3                  # onnx/model_O3.onnx
    python -m train.export outputs/<run>/final quantize=int8_static calibration_samples=300 data=korsts
    python -m train.export outputs/<run>/final truncate_dim=256             # a copy, final-dim256/

Bi-encoders, cross-encoders and sparse encoders. The variant loads with the bare library, as the card says:
`SentenceTransformer(dir, backend="onnx", model_kwargs={"file_name": "onnx/model_O3.onnx"})`.
The work is train/backend_export.py's; this writes export.json in outputs/export/<date>/<time>/.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from train import backend_export, publish
from train.cli import exit_2_on_config_errors, positional_as, run_dir_from_hydra, setup_logging, user_errors
from train.config.store import register_configs
from train.engine.checkpoint import write_json_atomic

register_configs()
log = logging.getLogger("train")


def split_texts(data: DictConfig, calibration: int, check: int) -> tuple[list[str], list[str]]:
    """Calibration texts from the data option's train split, check texts from its test split (else
    dev, else the train texts after the calibration ones); each list of distinct texts."""
    from train.data.build import data_spec_of
    from train.data.presets import load_spec_splits, source_kind

    shape = "scored_pairs" if source_kind(data.name) == "sts" else "pairs"
    splits = load_spec_splits(data_spec_of(data, shape), shape, ("train", "dev", "test"))

    def texts(ds) -> list[str]:
        columns = [c for c in ds.column_names if isinstance(ds[0][c], str)]
        # Interleaved by row (s1, s2, s1, s2, ...): consecutive texts make a cross-encoder's pairs.
        return list(dict.fromkeys(t for row in zip(*(ds[c] for c in columns)) for t in row))

    train = texts(splits["train"]) if "train" in splits else []
    held_out = next((texts(splits[s]) for s in ("test", "dev") if s in splits), train[calibration:])
    return train[:calibration], held_out[:check]


def export_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    from train.config.checks import check_export_config
    from train.models.saved import saved_model_kind

    check_export_config(cfg)
    folder = publish.model_folder(cfg.dir)
    kind = saved_model_kind(folder)
    backend_export.model_class(kind)  # an image-text model is refused before any work
    backend_export.check_backend(cfg.backend.value)
    quantize = cfg.quantize.value
    qconfig = backend_export.cpu_quantize_config() if cfg.quantize_config == "auto" else cfg.quantize_config
    backend_export.check_request(cfg.optimize, quantize, qconfig)
    calibration, check = split_texts(cfg.data, cfg.calibration_samples if quantize == "int8_static" else 0, cfg.check_samples)
    out = backend_export.prepare_out(folder, cfg.out, cfg.truncate_dim)
    entries = backend_export.export_model(folder, kind, cfg.optimize, quantize, qconfig, out, calibration, f"data={cfg.data.name}",
                                          check, cfg.truncate_dim, cfg.overwrite)
    from train.cards.export_card import fidelity_text, load_line

    for e in entries:
        log.info("Wrote %s (%.1f MB): %s. Load it with\n  %s", out / e["file"], e["mb"], fidelity_text(e["check"]),
                 load_line(kind, e["file"], "onnx").replace("<this folder or repo>", str(out)))
    report = {"folder": str(folder), "out": str(out), "kind": kind, "variants": entries}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "export.json", report)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        export_run(cfg)


if __name__ == "__main__":
    positional_as("dir")
    exit_2_on_config_errors(main, "python -m train.export")
