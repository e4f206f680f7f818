"""python -m train.mine: hard negatives for (query, positive) pairs, mined with a bi-encoder.

    python -m train.mine checkpoint=outputs/<run>/final data=pairs_file data.path=pairs.jsonl out=mined.jsonl
    python -m train.mine model=minilm data=kor_xnli split=dev out=mined-dev.jsonl num_negatives=5
    python -m train task=cross_encoder loss=lambda data=candidates_file data.train_path=mined.jsonl

The filters are those of sentence-transformers' `util.mine_hard_negatives` (its defaults,
margins, range and sampling), applied to the same search; what differs is scale. The pairs are
read through the data cache (memory-mapped), the corpus is embedded chunk by chunk into a file in
the cache (reused by a later mine or retrieve with the same model and corpus), searched exactly
(faiss's flat index when `faiss-cpu` is installed, else torch, `search.backend=`; `search.precision=int8|ubinary` searches quantized codes), and the queries are
processed and written a batch at a time, so memory holds one copy of the corpus vectors and no
Python copy of its texts. Writes `out` (JSONL, one record a query) in the query-with-candidates
format data=candidates_file reads:
    {"query": "...", "positive": "..." (a list when the query has several), "negatives": ["...", ...]}
plus "scores" (one a candidate, positives first) with scores=true. A summary goes to mine.json
in the run dir (outputs/mine/...).
"""

from __future__ import annotations

import json
import logging
from array import array
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from train.data.build import build_corpus

from train.models.build import build_model

from train.cli import check_jsonl_out, exit_2_on_config_errors, run_dir_from_hydra, setup_logging, user_errors
from train.engine.checkpoint import write_json_atomic
from train.config.schema import to_plain
from train.config.store import register_configs
from train.config.checks import check_mine_config
from train.data.corpus import Corpus
from train.data.texts import Texts, column_hashes, unique_first
from train.errors import ConfigError, DataError

register_configs()
log = logging.getLogger("train")

# The kinds of source that hold (query, positive) pairs; the others (STS scores, plain text)
# have no positive to mine against.
PAIR_KINDS = ("nli", "pairs", "candidates")
QUERY_CHUNK = 16_384  # queries embedded, searched and written at a time


def mine_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    check_mine_config(cfg)
    out = check_jsonl_out(cfg.out, cfg.overwrite, "the mined queries", "mined.jsonl")  # before hours of mining, not after
    pairs = load_pairs(cfg)
    extra_corpus = read_corpus(cfg) if cfg.corpus else None
    model = load_bi_encoder(cfg)
    cross = load_cross_encoder(cfg.cross_encoder, cfg.model.trust_remote_code) if cfg.cross_encoder else None
    started = time.perf_counter()
    summary = mine(pairs, model, extra_corpus, cfg, out, cross)
    summary |= {"out": str(out), "split": cfg.split, "data": cfg.data.name, "seconds": round(time.perf_counter() - started, 2)}
    report(summary, out)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "mine.json", summary)
    return summary


def load_pairs(cfg: DictConfig) -> Corpus:
    """The split's (anchor, positive) pairs from any source the project reads as pairs, through the cache."""
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
    pairs = build_corpus(d, "triplets", cfg.split)
    if pairs is None:
        raise DataError(f"data={d.name} has no {cfg.split} split here. Try another split=, or give the file with data.path=<file>.")
    if "negative" in pairs.column_names:
        log.info("data=%s: its own negatives are left out; the mined ones replace them", d.name)
    return pairs


def read_corpus(cfg: DictConfig) -> Corpus:
    """corpus=<file>: one passage a line, its distinct lines through the cache."""
    from train.data.corpus import CacheSettings, load_corpus
    from train.data.presets import data_spec

    d = to_plain(cfg.data)
    return load_corpus(data_spec("text_file", paths={"train": cfg.corpus}), "train", "texts", False, CacheSettings.make(d.cache_dir, d.num_proc))


def load_bi_encoder(cfg: DictConfig):
    from train.models.saved import load_saved_model, saved_model_kind

    if not cfg.checkpoint:
        return build_model(cfg.model, cfg.pooling)
    if saved_model_kind(cfg.checkpoint) == "cross_encoder":
        raise ConfigError(
            f"checkpoint={cfg.checkpoint} is a CrossEncoder (a reranker): it scores a pair but gives no embedding, "
            "so it cannot search a corpus. Mine with a bi-encoder: a task=bi_encoder run's final/, or model=minilm."
        )
    return load_saved_model(cfg.checkpoint, cfg.model.trust_remote_code)


def load_cross_encoder(path: str, trust_remote_code: bool = False):
    from train.models.saved import load_saved_model, saved_model_kind

    if saved_model_kind(path) != "cross_encoder":
        raise ConfigError(f"cross_encoder={path} is not a saved cross-encoder (a task=cross_encoder run's final/): it rescores (query, passage) pairs.")
    model = load_saved_model(path, trust_remote_code)
    if model.num_labels != 1:
        raise ConfigError(f"cross_encoder={path} has {model.num_labels} outputs (an NLI classifier?): rescoring needs one score a pair.")
    return model


def rescore(cross, queries: list[str], corpus: Texts, ids: np.ndarray, positives: list[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The bi-encoder's candidates (ids, a row a query; -1 none) and each query's positives scored by
    the cross-encoder in one pass: (candidate scores sorted best first, their ids, positive scores)."""
    pairs = []
    for i, query in enumerate(queries):
        pairs += [(query, corpus[int(d)]) for d in ids[i] if d >= 0]
        pairs += [(query, corpus[int(d)]) for d in positives[i]]
    with torch.inference_mode():
        flat = np.asarray(cross.predict(pairs, batch_size=batch_size, show_progress_bar=False), dtype=np.float32).reshape(-1)
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    positive_scores, k = [], 0
    for i in range(len(queries)):
        found = np.nonzero(ids[i] >= 0)[0]
        scores[i, found] = flat[k : k + len(found)]
        k += len(found)
        positive_scores.append(flat[k : k + len(positives[i])].copy())
        k += len(positives[i])
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1), positive_scores


def search_depth(cfg: DictConfig, max_positives: int) -> int:
    """range_max as sentence-transformers derives it when it is not set."""
    if cfg.range_max is not None:
        return cfg.range_max
    if cfg.absolute_margin is not None or cfg.relative_margin is not None or cfg.max_score is not None:
        return cfg.range_min + cfg.num_negatives * 10 + max_positives
    return cfg.range_min + cfg.num_negatives + max_positives


class Layout:
    """Who is who, as arrays: queries are the distinct anchors (in order of first occurrence), the
    corpus the distinct texts of the extra passages and then the positives, and each query's
    distinct positives (as corpus rows, in file order)."""

    def __init__(self, pairs: Corpus, extra: Corpus | None) -> None:
        anchors, positives = pairs.column("anchor"), pairs.column("positive")
        anchor_hash, positive_hash = column_hashes(anchors), column_hashes(positives)
        self.query_rows, query_of_row = unique_first(anchor_hash)
        self.query_hash = anchor_hash[self.query_rows]
        extra_column = [extra.column("anchor")] if extra is not None else []
        extra_hash = column_hashes(extra_column[0]) if extra is not None else np.zeros(0, np.uint64)
        every_hash = np.concatenate([extra_hash, positive_hash])
        doc_rows, doc_of = unique_first(every_hash)
        self.doc_hash = every_hash[doc_rows]
        self.corpus = Texts.of([*extra_column, positives], doc_rows)
        self.queries = Texts(anchors, self.query_rows)
        doc_of_row = doc_of[len(extra_hash) :]
        # Each (query, positive) once, in file order, grouped by query.
        _, first = np.unique(query_of_row * len(doc_rows) + doc_of_row, return_index=True)
        first.sort()
        by_query = first[np.argsort(query_of_row[first], kind="stable")]
        self.positive_docs = doc_of_row[by_query]
        self.positive_starts = np.searchsorted(query_of_row[by_query], np.arange(len(self.query_rows) + 1))
        self.pairs = len(anchor_hash)
        # Each query's own text as a corpus row (when it is also some row's positive), else -1.
        row_of_doc = {int(h): i for i, h in enumerate(self.doc_hash)}
        self.query_doc = np.array([row_of_doc.get(int(h), -1) for h in self.query_hash], dtype=np.int64)
        # As sentence-transformers counts a query's positives (its rows) for the search depth.
        self.max_rows_a_query = int(np.bincount(query_of_row).max()) if len(query_of_row) else 0

    def positives(self, q: int) -> np.ndarray:
        return self.positive_docs[self.positive_starts[q] : self.positive_starts[q + 1]]


def mine(pairs: Corpus, model, extra: Corpus | None, cfg: DictConfig, out: Path, cross: Any = None) -> dict[str, Any]:
    """Mines every query's negatives and writes its record to `out` (atomically); returns the
    summary. `cross`: a cross-encoder that rescores the candidates and positives before the filters."""
    from train.data.corpus import CacheSettings
    from train.evaluation.bars import ProgressLog
    from train.models.prompts import check_prompt_names, column_prompts
    from train.evaluation.search import Index, cached_vectors, embed, gather, search_settings

    layout = Layout(pairs, extra)
    n_queries = len(layout.query_rows)
    max_positives = layout.max_rows_a_query
    range_max = search_depth(cfg, max_positives)
    if cfg.range_min >= range_max or cfg.num_negatives > range_max - cfg.range_min:
        raise ConfigError(
            f"range_min={cfg.range_min} and range_max={range_max} leave {max(range_max - cfg.range_min, 0)} ranks, "
            f"fewer than num_negatives={cfg.num_negatives}: raise range_max or lower range_min."
        )
    log.info("%d queries (%d pairs), corpus %d passages; %d candidates a query searched", n_queries, layout.pairs, len(layout.corpus), range_max)
    d = to_plain(cfg.data)
    check_prompt_names(model, d.prompts)
    # data.prompts: anchor names the queries' prompt, positive the passages'.
    prompts = column_prompts(model, d.prompts, ("anchor", "positive"))
    root = CacheSettings.make(d.cache_dir, d.num_proc).root
    vectors, embed_seconds, reused = cached_vectors(model, layout.corpus, root, cfg.batch_size, prompt=prompts.get("positive"))
    index = Index(vectors, **search_settings(cfg.search), cache_root=root)
    random.seed(cfg.seed)  # sampling_strategy=random draws with the `random` module, query by query

    def records() -> Iterator[dict[str, Any]]:
        progress = ProgressLog("Mining", n_queries, "queries")
        for start in range(0, n_queries, QUERY_CHUNK):
            progress(start)
            stop = min(start + QUERY_CHUNK, n_queries)
            queries = embed(model, layout.queries[start:stop], cfg.batch_size, prompts.get("anchor"))
            # Its positives and its own text are searched past, as sentence-transformers does.
            scores, ids = index.search(queries, range_max + max_positives + 1)
            positives = [layout.positives(q) for q in range(start, stop)]
            positive_scores = [gather(vectors, p) @ queries[i] for i, p in enumerate(positives)]
            if cross is not None:
                scores, ids, positive_scores = rescore(cross, layout.queries[start:stop], layout.corpus, ids, positives, cfg.batch_size)
            negatives, negative_scores = select_negatives(scores, ids, positives, positive_scores, range_max, cfg, layout.query_doc[start:stop])
            texts = layout.queries[start:stop]
            for i in range(stop - start):
                if len(negatives[i]):
                    yield _record(texts[i], layout.corpus, positives[i], positive_scores[i], negatives[i], negative_scores[i], cfg.scores)

    counts = write_jsonl_atomic(out, records(), count=lambda r: len(r["negatives"]))
    corpus = {"corpus": len(layout.corpus), "corpus_embed_seconds": round(embed_seconds, 2), "corpus_vectors_reused": reused}
    return summarize(layout.pairs, n_queries, counts, cfg.num_negatives) | corpus | {"search": index.describe()}


def select_negatives(
    scores: np.ndarray, ids: np.ndarray, positives: list[np.ndarray], positive_scores: list[np.ndarray], range_max: int, cfg: DictConfig,
    own: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each query's negatives (corpus rows) and their scores, best first, from its search results:
    sentence-transformers' mine_hard_negatives filters (its positives and its own text never, a
    margin below the query's hardest positive, max_score, ranks range_min..range_max, the top or a
    random draw). `own`: each query's own text as a corpus row, or -1."""
    scores_t, ids_t = torch.from_numpy(scores.copy()), torch.from_numpy(ids)
    scores_t[ids_t == -1] = -float("inf")
    if own is not None:
        # The query's own text (when it is also some row's positive) would be a sure false negative.
        scores_t[ids_t == torch.from_numpy(own)[:, None]] = -float("inf")
    width = max(len(p) for p in positives)
    pos = torch.full((len(positives), width), -2, dtype=torch.long)
    pos_scores = torch.full((len(positives), width), float("inf"))
    for i, (p, s) in enumerate(zip(positives, positive_scores)):
        pos[i, : len(p)] = torch.from_numpy(p)
        pos_scores[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
    scores_t[(ids_t[:, :, None] == pos[:, None, :]).any(-1)] = -float("inf")
    hardest = pos_scores.min(dim=1).values  # the margin is kept from the query's hardest positive
    if cfg.absolute_margin is not None:
        scores_t[scores_t + cfg.absolute_margin > hardest[:, None]] = -float("inf")
    if cfg.relative_margin is not None:
        scores_t[scores_t > (hardest - hardest.abs() * cfg.relative_margin)[:, None]] = -float("inf")
    if cfg.max_score is not None:
        scores_t[scores_t > cfg.max_score] = -float("inf")
    best, local = torch.topk(scores_t, k=range_max, dim=1)
    chosen = ids_t.gather(1, local)
    best, chosen = best[:, cfg.range_min :], chosen[:, cfg.range_min :]
    if cfg.sampling_strategy.value == "top":
        best, chosen = best[:, : cfg.num_negatives], chosen[:, : cfg.num_negatives]
    else:
        options = (chosen.size(1) - best.isinf().sum(1)).clamp(min=cfg.num_negatives)
        picked = torch.tensor([random.sample(range(int(o)), k=cfg.num_negatives) for o in options], dtype=torch.long)
        best, chosen = best.gather(1, picked), chosen.gather(1, picked)
        best, order = best.sort(dim=1, descending=True)
        chosen = chosen.gather(1, order)
    keep = ~best.isinf()
    return [chosen[i][keep[i]].numpy() for i in range(len(positives))], [best[i][keep[i]].numpy() for i in range(len(positives))]


def _record(query: str, corpus: Texts, positives: np.ndarray, positive_scores: np.ndarray, negatives: np.ndarray,
            negative_scores: np.ndarray, with_scores: bool) -> dict[str, Any]:
    texts = [corpus[int(d)] for d in positives]
    record: dict[str, Any] = {"query": query, "positive": texts[0] if len(texts) == 1 else texts, "negatives": [corpus[int(d)] for d in negatives]}
    if with_scores:
        record["scores"] = [float(s) for s in positive_scores] + [float(s) for s in negative_scores]
    return record


def write_jsonl_atomic(path: Path, records: Any, count: Any = None) -> array:
    """Writes records as they come; readers see the old file or the whole new one, never half of
    one. Returns `count(record)` of each record written (with `count`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed name opened with "x" (not mkstemp, which would leave the file readable by its owner only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    counts = array("i")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                if count is not None:
                    counts.append(count(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def summarize(pairs: int, queries: int, counts: array, asked: int) -> dict[str, Any]:
    return {
        "pairs": pairs,
        "queries": queries,
        "written": len(counts),
        "left_out_without_negatives": queries - len(counts),
        "negatives_asked": asked,
        "negatives_mean": round(float(np.mean(counts)), 3) if counts else 0.0,
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
    exit_2_on_config_errors(main, "python -m train.mine")
