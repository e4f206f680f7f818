"""python -m train.mine: hard negatives for (query, positive) pairs, mined with a bi-encoder.

    python -m train.mine checkpoint=outputs/<run>/final data=pairs_file data.path=pairs.jsonl out=mined.jsonl
    python -m train.mine model=minilm data=kor_xnli split=dev out=mined-dev.jsonl num_negatives=5
    python -m train task=cross_encoder loss=lambda data=candidates_file data.train_path=mined.jsonl

The search and the filters are sentence-transformers' own `util.mine_hard_negatives`. Writes
`out` (JSONL, one record a query) in the query-with-candidates format data=candidates_file reads:
    {"query": "...", "positive": "..." (a list when the query has several), "negatives": ["...", ...]}
plus "scores" (one a candidate, positives first) with scores=true. A summary goes to mine.json
in the run dir (outputs/mine/...).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from statistics import mean
from typing import Any

import datasets
import hydra
from omegaconf import DictConfig

from train.builders import build_data, build_model, exit_2_on_config_errors, run_dir_from_hydra, setup_logging, user_errors
from train.checkpoint import write_json_atomic
from train.config import register_configs, to_plain
from train.config_checks import check_mine_config
from train.errors import ConfigError, DataError

register_configs()
log = logging.getLogger("train")

# The kinds of source that hold (query, positive) pairs; the others (STS scores, plain text)
# have no positive to mine against.
PAIR_KINDS = ("nli", "pairs", "candidates")


def mine_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    check_mine_config(cfg)
    out = check_out(cfg.out, cfg.overwrite)  # before hours of mining, not after
    pairs = load_pairs(cfg)
    extra_corpus = read_corpus(cfg.corpus) if cfg.corpus else None
    model = load_bi_encoder(cfg)
    mined = mine(pairs, model, extra_corpus, cfg)
    records = to_records(mined, with_scores=cfg.scores)
    write_jsonl_atomic(out, records)
    summary = summarize(pairs, records, cfg.num_negatives) | {"out": str(out), "split": cfg.split, "data": cfg.data.name}
    report(summary, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "mine.json", summary)
    return summary


def check_out(out: str | None, overwrite: bool) -> Path:
    if not out:
        raise ConfigError("out is required: the .jsonl file to write the mined queries to, e.g. out=mined.jsonl.")
    path = Path(out).expanduser()
    if path.suffix.lower() != ".jsonl":
        # data=candidates_file tells the format from the extension.
        raise ConfigError(f"out={out}: name it *.jsonl (one JSON record a line), e.g. out={path.with_suffix('.jsonl')}.")
    if path.is_dir():
        raise ConfigError(f"out={out} is a directory; give a file path, e.g. out={path / 'mined.jsonl'}.")
    if path.exists() and not overwrite:
        raise ConfigError(f"out={out} already exists and was left as it is: pass overwrite=true to replace it, or choose another out.")
    return path


def load_pairs(cfg: DictConfig) -> datasets.Dataset:
    """The split's (anchor, positive) pairs from any source the project reads as pairs."""
    from train.data.presets import source_kind

    d = to_plain(cfg.data)
    if source_kind(d.name) not in PAIR_KINDS:
        raise DataError(
            f"data={d.name} holds no (query, positive) pairs to mine negatives for. Use NLI data "
            "(data=kor_xnli, kornli, nli_file), pairs (data=pairs_file) or query-with-candidates (data=candidates_file)."
        )
    # NLI: every (premise, entailed hypothesis) pair, not only premises that have a contradiction:
    # the mined negatives take the contradictions' place.
    d.hard_negatives = False
    if d.path:  # one file stands in for the asked split
        setattr(d, f"{cfg.split}_path", d.path)
    splits = build_data(d, (cfg.split,), "triplets", eval_shape="triplets")
    if cfg.split not in splits:
        raise DataError(f"data={d.name} has no {cfg.split} split here. Try another split=, or give the file with data.path=<file>.")
    ds = splits[cfg.split]
    if "negative" in ds.column_names:
        log.info("data=%s: its own negatives are left out; the mined ones replace them", d.name)
    return ds.select_columns(["anchor", "positive"])


def read_corpus(path: str) -> list[str]:
    from train.data.readers import read_text_lines

    return list(read_text_lines(path)["text"])  # a list: sentence-transformers concatenates it with one


def load_bi_encoder(cfg: DictConfig):
    from train.models import load_saved_model, saved_model_kind

    if not cfg.checkpoint:
        return build_model(cfg.model, cfg.pooling)
    if saved_model_kind(cfg.checkpoint) == "cross_encoder":
        raise ConfigError(
            f"checkpoint={cfg.checkpoint} is a CrossEncoder (a reranker): it scores a pair but gives no embedding, "
            "so it cannot search a corpus. Mine with a bi-encoder: a task=bi_encoder run's final/, or model=minilm."
        )
    return load_saved_model(cfg.checkpoint)


def mine(pairs: datasets.Dataset, model, extra_corpus: list[str] | None, cfg: DictConfig) -> datasets.Dataset:
    """sentence-transformers' labeled-list rows: anchor, positive = [the positive, *negatives], labels or scores.
    One row a (query, positive) pair; a query's rows share its negatives; rows without any are left out."""
    from sentence_transformers.util import mine_hard_negatives

    random.seed(cfg.seed)  # sampling_strategy=random draws with the `random` module
    return mine_hard_negatives(
        pairs,
        model,
        anchor_column_name="anchor",
        positive_column_name="positive",
        corpus=extra_corpus,
        range_min=cfg.range_min,
        range_max=cfg.range_max,
        absolute_margin=cfg.absolute_margin,
        relative_margin=cfg.relative_margin,
        max_score=cfg.max_score,
        num_negatives=cfg.num_negatives,
        sampling_strategy=cfg.sampling_strategy.value,
        output_format="labeled-list",
        output_scores=cfg.scores,
        batch_size=cfg.batch_size,
    )


def to_records(mined: datasets.Dataset, with_scores: bool) -> list[dict[str, Any]]:
    """One record a query: its positives gathered from its rows, its negatives once."""
    grouped: dict[str, tuple[list, list]] = {}
    all_scores = list(mined["scores"]) if with_scores else None
    for i, (query, texts) in enumerate(zip(mined["anchor"], mined["positive"])):
        candidates = list(zip(texts, all_scores[i] if with_scores else [None] * len(texts)))
        if query not in grouped:
            # The query's own text (when it is also some row's positive) would be a sure false negative.
            grouped[query] = ([], [c for c in candidates[1:] if c[0] != query])
        grouped[query][0].append(candidates[0])
    return [_record(q, pos, neg, with_scores) for q, (pos, neg) in grouped.items() if neg]


def _record(query: str, positives: list[tuple], negatives: list[tuple], with_scores: bool) -> dict[str, Any]:
    texts = [text for text, _ in positives]
    record: dict[str, Any] = {"query": query, "positive": texts[0] if len(texts) == 1 else texts, "negatives": [t for t, _ in negatives]}
    if with_scores:
        record["scores"] = [s for _, s in positives + negatives]
    return record


def write_jsonl_atomic(path: Path, records: list[dict[str, Any]]) -> None:
    """Readers see the old file or the whole new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed name opened with "x" (not mkstemp, which would leave the file readable by its owner only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summarize(pairs: datasets.Dataset, records: list[dict[str, Any]], asked: int) -> dict[str, Any]:
    counts = [len(r["negatives"]) for r in records]
    queries = len(set(pairs["anchor"]))
    return {
        "pairs": len(pairs),
        "queries": queries,
        "written": len(records),
        "left_out_without_negatives": queries - len(records),
        "negatives_asked": asked,
        "negatives_mean": round(mean(counts), 3) if counts else 0.0,
        "negatives_min": min(counts, default=0),
        "fewer_than_asked": sum(c < asked for c in counts),
    }


def report(s: dict[str, Any], out: Path) -> None:
    log.info(
        "Mined %d queries (%d pairs): wrote %d to %s. Negatives per query: mean %.2f, min %d; %d got fewer than %d; "
        "%d got none and were left out.",
        s["queries"], s["pairs"], s["written"], out, s["negatives_mean"], s["negatives_min"],
        s["fewer_than_asked"], s["negatives_asked"], s["left_out_without_negatives"],
    )
    if s["left_out_without_negatives"] or s["fewer_than_asked"]:
        # The usual cause: a margin keeps only candidates scoring clearly below the query's own
        # positive, and they are searched among the top range_max only.
        log.warning(
            "%d of %d queries got fewer than %d negatives. A candidate must score below the query's positive by the "
            "margin and rank within range_max: a model that ranks positives low (one that does not know the "
            "language) leaves few. For more: raise range_max (e.g. range_max=400), lower relative_margin, add "
            "passages with corpus=<file>, or mine with a bi-encoder fine-tuned on this kind of data.",
            s["fewer_than_asked"] + s["left_out_without_negatives"], s["queries"], s["negatives_asked"],
        )
    log.info("Train a reranker on it: python -m train task=cross_encoder loss=lambda data=candidates_file data.train_path=%s", out)


@hydra.main(version_base="1.3", config_path="../conf", config_name="mine")
def main(cfg: DictConfig) -> None:
    with user_errors():
        mine_run(cfg)


if __name__ == "__main__":
    exit_2_on_config_errors(main)
