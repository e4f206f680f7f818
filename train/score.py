"""python -m train.score: a teacher's score for every (query, candidate) of a candidates file, the
labels that distillation losses train on (loss=margin_mse, kl_div; cross-encoder mse, margin_mse).

    python -m train.score teacher=outputs/<ce-run>/final data=candidates_file data.path=mined.jsonl out=scored.jsonl
    python -m train.score teacher=outputs/<bi-run>/final data=candidates_file data.path=mined.jsonl out=scored.jsonl

The teacher is a saved cross-encoder (its score of each pair, as `CrossEncoder.predict` gives it)
or a bi-encoder (the cosine of query and candidate). The rows are read through the data cache and
scored `chunk_queries` queries at a time; each chunk is appended to `<out>.partial` as it is done,
so a killed run started again with the same command goes on after the last complete chunk (the
settings beside it must match, or it starts over only with overwrite=true). When every query is
scored the file is renamed to `out`: readers see no half-written file. Writes, one record a query,
what data=candidates_file reads:
    {"query": "...", "positive": [...], "negatives": [...], "scores": [teacher scores, positives first]}
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from train.cli import check_jsonl_out, exit_2_on_config_errors, run_dir_from_hydra, setup_logging, user_errors
from train.config.checks import check_score_config
from train.config.schema import to_plain
from train.config.store import register_configs
from train.data.build import build_corpus
from train.engine.checkpoint import write_json_atomic
from train.errors import ConfigError, DataError

register_configs()
log = logging.getLogger("train")


def score_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    check_score_config(cfg)
    out = check_jsonl_out(cfg.out, cfg.overwrite, "the scored queries", "scored.jsonl")
    rows = load_candidates(cfg)
    teacher, kind = load_teacher(cfg.teacher, cfg.model.trust_remote_code)
    # What the scores depend on: the teacher and the rows (their cache entry names the file's content).
    settings = {"teacher": str(Path(cfg.teacher).expanduser().resolve()), "rows_entry": rows.entry.path.name, "rows": len(rows)}
    started = time.perf_counter()
    done = score_into(rows, teacher, kind, out, settings, cfg.chunk_queries, cfg.batch_size, cfg.overwrite)
    summary = {"out": str(out), "teacher": str(cfg.teacher), "teacher_kind": kind, "queries": len(rows), "resumed_after": done,
               "seconds": round(time.perf_counter() - started, 2)}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "score.json", summary)
    log.info("Wrote %s: %d queries scored by %s (%s)", out, len(rows), cfg.teacher, kind)
    return summary


def load_candidates(cfg: DictConfig):
    d = to_plain(cfg.data)
    if d.name != "candidates_file":
        raise DataError(f"data={d.name}: train.score reads query-with-candidates files (data=candidates_file, what train.mine writes).")
    if d.path:
        setattr(d, f"{cfg.split}_path", d.path)
    rows = build_corpus(d, "query_candidates", cfg.split)
    if rows is None:
        raise DataError(f"data={d.name} has no {cfg.split} split: give the file with data.path=<file>.")
    return rows


def load_teacher(path: str | None, trust_remote_code: bool = False) -> tuple[Any, str]:
    from train.models.saved import load_saved_model, saved_model_kind

    if not path:
        raise ConfigError("teacher is required: a saved cross-encoder or bi-encoder dir (a run's final/).")
    kind = saved_model_kind(path) if Path(path).expanduser().is_dir() else None
    if kind not in ("cross_encoder", "bi_encoder"):
        raise ConfigError(f"teacher={path}: not a saved cross-encoder or bi-encoder dir (a run's final/, best/ or a sentence-transformers folder).")
    return load_saved_model(path, trust_remote_code), kind


def teacher_scores(teacher: Any, kind: str, queries: list[str], candidates: list[list[str]], batch_size: int) -> list[list[float]]:
    """Each query's candidates scored by the teacher, in the candidates' order."""
    with torch.inference_mode():
        if kind == "cross_encoder":
            pairs = [(q, c) for q, cs in zip(queries, candidates) for c in cs]
            flat = np.asarray(teacher.predict(pairs, batch_size=batch_size, show_progress_bar=False), dtype=np.float64).reshape(len(pairs), -1)[:, 0]
        else:
            texts = [c for cs in candidates for c in cs]
            q = teacher.encode(queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
            c = teacher.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
            owner = np.repeat(np.arange(len(queries)), [len(cs) for cs in candidates])
            flat = (q[owner] * c).sum(axis=1)
    out, start = [], 0
    for cs in candidates:
        out.append([round(float(s), 6) for s in flat[start : start + len(cs)]])
        start += len(cs)
    return out


def records(rows: Any, start: int, end: int) -> list[dict[str, Any]]:
    """Rows [start, end) as {query, positive, negatives}: positives first, as the file holds them."""
    part = rows.dataset.select(range(start, end)).to_dict()
    out = []
    for query, candidates, labels in zip(part["query"], part["candidates"], part["labels"]):
        positives = [c for c, label in zip(candidates, labels) if label > 0]
        negatives = [c for c, label in zip(candidates, labels) if label <= 0]
        out.append({"query": query, "positive": positives, "negatives": negatives})
    return out


def score_into(rows: Any, teacher: Any, kind: str, out: Path, settings: dict[str, Any], chunk: int, batch_size: int, overwrite: bool) -> int:
    """Scores the rows into `out`, a chunk at a time through `<out>.partial`; returns how many
    queries an earlier, killed run had already scored."""
    partial, stamp = out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.json")
    done = resume_point(partial, stamp, settings, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, settings)
    total = len(rows)
    with open(partial, "a", encoding="utf-8") as f:
        for start in range(done, total, chunk):
            part = records(rows, start, min(start + chunk, total))
            scores = teacher_scores(teacher, kind, [r["query"] for r in part], [r["positive"] + r["negatives"] for r in part], batch_size)
            f.write("".join(json.dumps({**r, "scores": s}, ensure_ascii=False) + "\n" for r, s in zip(part, scores)))
            f.flush()
            os.fsync(f.fileno())
            log.info("scored %d / %d queries", min(start + chunk, total), total)
    os.replace(partial, out)
    stamp.unlink(missing_ok=True)
    return done


def resume_point(partial: Path, stamp: Path, settings: dict[str, Any], overwrite: bool) -> int:
    """Complete lines of an earlier run's `.partial` with the same settings (a torn last line is cut off)."""
    if not partial.exists():
        return 0
    earlier = json.loads(stamp.read_text()) if stamp.exists() else None
    if earlier != settings:
        if not overwrite:
            raise ConfigError(f"{partial} is an unfinished run with other settings ({earlier} != {settings}): "
                              "pass overwrite=true to start over, or delete it.")
        partial.unlink()
        return 0
    data = partial.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        partial.write_bytes(complete)
    done = complete.count(b"\n")
    log.info("%s: %d queries already scored; going on from there", partial, done)
    return done


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
def main(cfg: DictConfig) -> None:
    with user_errors():
        score_run(cfg)


if __name__ == "__main__":
    exit_2_on_config_errors(main, "python -m train.score")
