"""python -m train.retrieve: retrieve with a bi-encoder, rerank with a cross-encoder, measured.

    python -m train.retrieve model=minilm cross_encoder=outputs/<ce-run>/final data=kor_xnli max_queries=200
    python -m train.retrieve bi_encoder=outputs/<run>/final cross_encoder=outputs/<ce-run>/final \
        data=nli_file data.dev_path=klue-nli-v1.1_dev.json data.columns.sentence1=premise \
        data.columns.sentence2=hypothesis data.columns.label=gold_label

Each query (NLI: a premise) is searched in a corpus (NLI: every distinct entailed hypothesis of
the split; corpus=all adds the contradicted ones) and its own relevant documents are the hits.
Three kinds of system answer the same queries over the same corpus:

- the bi-encoder alone: the corpus is embedded once; a query costs one forward pass and a search;
- the bi-encoder's top k reranked by the cross-encoder, for each k of rerank_top_k: k more
  forward passes (pairs) a query;
- the cross-encoder over the whole corpus: one forward pass per document a query (only up to
  full_rerank_max_corpus documents).

With `lexical=[whitespace]` or `[kiwi]` (Korean morphemes), BM25 over the same corpus joins them,
and hybrid search (BM25 fused with the bi-encoder: fusion=rrf or score), reranked by the
cross-encoder too when one is given:

    python -m train.retrieve model=minilm data=korquad split=test lexical=[whitespace,kiwi]

Each is scored by the same function (NDCG@10, MRR@10, Recall@1/10/100, MAP@100: the library's
InformationRetrievalEvaluator's figures) and timed query by query, as a search service meets
them. Writes retrieve.json into its run dir and prints a table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from train.data.build import build_corpus

from train.models.build import build_model

from train.cli import exit_2_on_config_errors, run_dir_from_hydra, setup_logging, user_errors
from train.config.schema import to_plain
from train.config.store import register_configs
from train.evaluation.ranking import DEPTH, METRICS, RetrievalSet, pick, ranking_metrics, retrieval_set, from_split  # noqa: F401 (imported by tests)
from train.config.checks import check_retrieve_config
from train.evaluation.dense_search import DenseSearch
from train.evaluation.search import search_settings
from train.evaluation.tables import text_table
from train.errors import DataError, ModelLoadError

register_configs()
log = logging.getLogger("train")

SPLIT_NAMES = ("train", "dev", "test")


def load_retrieval_set(cfg: DictConfig) -> RetrievalSet:
    split = cfg.split
    if split not in SPLIT_NAMES:
        raise DataError(f"split={split!r}: use one of {', '.join(SPLIT_NAMES)}.")
    from train.data.beir import RETRIEVAL_DATA
    from train.data.presets import source_kind

    data_cfg = cfg.data
    if data_cfg.name in RETRIEVAL_DATA:  # queries against the whole corpus
        from train.data.build import retrieval_eval_sets

        found = retrieval_eval_sets(to_plain(data_cfg), (split,)).get(f"retrieval_{split}")
        if found is None:
            raise DataError(f"data={data_cfg.name} has no {split} split here (no qrels/{split}.tsv). Try split=dev or split=test.")
        data = from_split(found)
        n = cfg.max_queries
        return RetrievalSet(data.queries[:n], data.corpus, data.relevant[:n]) if n else data
    if source_kind(data_cfg.name) not in ("nli", "candidates"):
        raise DataError(
            f"data={data_cfg.name} has no queries with relevant documents. Retrieval needs NLI data "
            "(data=kor_xnli, kornli, nli_file: a premise finds its entailed hypotheses) or queries "
            "with candidates (data=candidates_file)."
        )
    if data_cfg.path:
        from omegaconf import OmegaConf

        data_cfg = OmegaConf.merge(data_cfg, {f"{split}_path": data_cfg.path})
    split_rows = build_corpus(data_cfg, "query_candidates", split)
    if split_rows is None:
        raise DataError(f"data={cfg.data.name} has no {split} split here. Try split=dev, or give the file with data.{split}_path=<file>.")
    return retrieval_set(split_rows, cfg.corpus.value, cfg.max_queries)


# --- Models -----------------------------------------------------------------------------------


def check_saved_kind(path: str, key: str, kind: str) -> None:
    """Refuses `key=path` unless it is a saved `kind` model dir (reads one small file)."""
    from train.models.saved import saved_model_kind

    where = Path(path).expanduser()
    if not where.is_dir():
        raise ModelLoadError(f"{key}={path}: no such directory.")
    found = saved_model_kind(where)
    if found != kind:
        other = "cross_encoder" if key == "bi_encoder" else "bi_encoder"
        raise ModelLoadError(
            f"{key}={path} is a saved {found.replace('_', '-')}, not a {kind.replace('_', '-')}. "
            f"Pass it as {other}={path}, and a {kind.replace('_', '-')} dir as {key}=."
        )


def load_model_as(path: str, key: str, kind: str, trust_remote_code: bool = False):
    """The saved model at `path` (given as `key=`), refused unless it is a `kind` model."""
    from train.models.saved import load_saved_model

    check_saved_kind(path, key, kind)
    where = Path(path).expanduser()
    try:
        model = load_saved_model(where, trust_remote_code)
    except ModelLoadError as e:
        # Its message names checkpoint=, the key of train.evaluate.
        raise ModelLoadError(str(e).replace("checkpoint=", f"{key}=", 1)) from None
    if kind == "cross_encoder" and model.num_labels != 1:
        raise ModelLoadError(
            f"cross_encoder={path} has {model.num_labels} outputs (an NLI classifier?): reranking needs "
            "a cross-encoder with one relevance score (trained with loss=bce, mnrl, lambda, listnet, ...)."
        )
    return model.eval()


def load_models(cfg: DictConfig) -> tuple[Any, str, Any | None]:
    """(bi-encoder, its name, cross-encoder or None), both in eval mode."""
    if cfg.bi_encoder:
        bi, bi_name = load_model_as(cfg.bi_encoder, "bi_encoder", "bi_encoder", cfg.model.trust_remote_code), str(cfg.bi_encoder)
    else:
        bi, bi_name = build_model(cfg.model, cfg.pooling).eval(), cfg.model.name
    cross = load_model_as(cfg.cross_encoder, "cross_encoder", "cross_encoder", cfg.model.trust_remote_code) if cfg.cross_encoder else None
    return bi, bi_name, cross


# --- Systems ----------------------------------------------------------------------------------


def dense_search(cfg: DictConfig, bi: Any, data: RetrievalSet, depth: int, search: dict[str, Any] | None = None) -> DenseSearch:
    """The bi-encoder's search of the split (train.evaluation.dense_search) with the run's cache,
    batch size, timed queries and data.prompts (anchor: the queries', positive: the documents')."""
    from train.data.corpus import CacheSettings
    from train.evaluation.dense_search import dense_search as search_split
    from train.models.prompts import check_prompt_names, column_prompts

    d = to_plain(cfg.data)
    check_prompt_names(bi, d.prompts)
    prompts = column_prompts(bi, d.prompts, ("anchor", "positive"))
    return search_split(bi, data, depth, CacheSettings.make(d.cache_dir, d.num_proc).root, cfg.batch_size, cfg.latency_queries,
                        prompts.get("anchor"), prompts.get("positive"), search)


def rerank(
    cross: Any, queries: Sequence[str], corpus: Sequence[str], shortlists: Sequence[Sequence[int]], batch_size: int, progress: str = ""
) -> tuple[list[list[int]], list[float], int]:
    """Each shortlist reordered by the cross-encoder's score of (query, document), the seconds
    each query took, and the pairs scored in all. With `progress`, logs every tenth of the queries."""
    rankings, seconds, pairs = [], [], 0
    every = max(1, len(queries) // 10)
    with torch.inference_mode():
        for i, (query, shortlist) in enumerate(zip(queries, shortlists)):
            if progress and i and i % every == 0:
                log.info("%s: %d/%d queries, %.0f s", progress, i, len(queries), sum(seconds))
            start = time.perf_counter()
            scores = cross.predict(list(zip([query] * len(shortlist), pick(corpus, shortlist))), batch_size=batch_size, show_progress_bar=False)
            order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
            seconds.append(time.perf_counter() - start)
            rankings.append([int(shortlist[i]) for i in order])
            pairs += len(shortlist)
    return rankings, seconds, pairs


def system_row(name: str, rankings, relevant, ms_per_query: float, ce_pairs: int, bi_passes: int, **extra: Any) -> dict[str, Any]:
    n = len(rankings)
    return {
        "system": name,
        **extra,
        **ranking_metrics(rankings, relevant),
        "ms_per_query": ms_per_query,
        "cross_encoder_pairs_per_query": ce_pairs / n,
        "bi_encoder_passes_per_query": bi_passes,
    }


def mean_ms(seconds: Sequence[float]) -> float:
    return 1000.0 * sum(seconds) / len(seconds) if seconds else 0.0


def cross_encoder_rows(cross: Any, data: RetrievalSet, bi_rankings, bi_seconds, ks: Sequence[int], full_max: int, batch_size: int) -> tuple[list[dict], str | None]:
    """The rerank-top-k rows and the full-corpus row (or why it was skipped). `bi_seconds`: the
    bi-encoder's timed queries, whose mean a reranking pipeline pays before its cross-encoder."""
    rows = []
    # The first call builds what later calls reuse; it would otherwise be billed to the first query.
    with torch.inference_mode():
        cross.predict([(data.queries[0], pick(data.corpus, [0])[0])], show_progress_bar=False)
    for k in ks:
        shortlists = [list(r[:k]) for r in bi_rankings]
        reranked, seconds, pairs = rerank(cross, data.queries, data.corpus, shortlists, batch_size)
        # Below the reranked top k the bi-encoder's order stands, so Recall@10 of k < 10 is defined.
        rankings = [head + list(tail[k:]) for head, tail in zip(reranked, bi_rankings)]
        ms = mean_ms(bi_seconds) + mean_ms(seconds)
        rows.append(system_row(f"bi-encoder top-{k} + cross-encoder", rankings, data.relevant, ms, pairs, 1, k=k))
    size, n = len(data.corpus), len(data.queries)
    if size > full_max:
        return rows, f"cross-encoder (full corpus) skipped: corpus {size} > full_rerank_max_corpus={full_max}"
    log.info("cross-encoder (full corpus): %d queries x %d documents = %d pairs", n, size, n * size)
    everything = [list(range(size))] * n
    rankings, seconds, pairs = rerank(cross, data.queries, data.corpus, everything, batch_size, progress="cross-encoder (full corpus)")
    rows.append(system_row("cross-encoder (full corpus)", rankings, data.relevant, mean_ms(seconds), pairs, 0, k=size))
    return rows, None


# --- Report -----------------------------------------------------------------------------------


def format_table(report: dict[str, Any]) -> str:
    head = (
        f"data={report['data']} {report['split']}: {report['n_queries']} queries, corpus {report['corpus_size']} "
        f"documents ({report['corpus']}); corpus embedding {report['corpus_embed_seconds']:.1f} s once"
    )
    columns = [*METRICS, "ms_per_query", "cross_encoder_pairs_per_query"]
    headers = {**dict(zip(METRICS, ["NDCG@10", "MRR@10", "R@1", "R@10", "R@100", "MAP@100"])), "ms_per_query": "ms/query", "cross_encoder_pairs_per_query": "CE pairs/q"}
    rows = {r["system"]: {c: float(r[c]) for c in columns} for r in report["systems"]}
    table = text_table(rows, columns, label="system", headers=headers, digits={"ms_per_query": 1, "cross_encoder_pairs_per_query": 1})
    return "\n".join([head, search_line(report["search"]), table, *report["notes"]])


def search_line(search: dict[str, Any]) -> str:
    line = (f"Search: {search['backend']}, {search['precision']} corpus vectors, {search['bytes_per_passage']} bytes a passage "
            f"({search['index_mb_per_million_passages']:,.1f} MiB a million)")
    if search.get("search_ms_per_query") is not None:
        line += f"; the search alone {search['search_ms_per_query']:.2f} ms/query"
    if search["precision"] != "float32":
        line += (f", rescored x{search['rescore_multiplier']} against float32" if search["rescore"] else ", not rescored")
    if "recall@10_vs_exact_float32" in search:
        line += f"; recall@10 against exact float32 search {search['recall@10_vs_exact_float32']:.4f}"
    return line


def score_systems(cfg: DictConfig, data: Any, cross: Any, bi_rankings: np.ndarray, bi_seconds: list[float], ks: list[int]) -> tuple[list[dict], list[str]]:
    """The bi-encoder's row, and one a rerank depth of the cross-encoder (when there is one), with
    the report's notes on what was and was not run."""
    systems = [system_row("bi-encoder", bi_rankings, data.relevant, mean_ms(bi_seconds), 0, 1)]
    notes = []
    if cross is None:
        notes.append("No cross_encoder=<dir>: bi-encoder only.")
    else:
        rows, skipped = cross_encoder_rows(cross, data, bi_rankings, bi_seconds, ks, cfg.full_rerank_max_corpus, cfg.batch_size)
        systems += rows
        notes += [skipped] if skipped else []
    timed = "every query" if len(bi_seconds) == len(data.queries) else f"the first {len(bi_seconds)} queries (latency_queries)"
    notes.append(f"ms/query: wall time query by query (bi-encoder: encoding + search; rerank: that plus the cross-encoder), over {timed}.")
    return systems, notes


def lexical_rows(
    cfg: DictConfig, data: RetrievalSet, cross: Any, dense: tuple[np.ndarray, np.ndarray], bi_seconds: list[float], ks: list[int]
) -> list[dict]:
    """For each tokenizer of `lexical`: BM25 alone, and hybrid (BM25 fused with the bi-encoder by
    `fusion`, BM25 weighted `fusion_weight`), then the hybrid shortlist reranked by the
    cross-encoder (when there is one). `cfg`: the command's config (its SearchSystems keys and
    batch_size); `dense`: the bi-encoder's (ranked ids, their cosines)."""
    from train.evaluation.lexical import BM25, fuse

    bi_rankings, bi_scores = dense
    rows = []
    depth = bi_rankings.shape[1]
    weight = float(cfg.fusion_weight)
    label = "" if weight == 0.5 else f", BM25 weight {weight:g}"
    for tokenizer in cfg.lexical:
        started = time.perf_counter()
        index = BM25(data.corpus, tokenizer)
        log.info("BM25 (%s): %d documents indexed in %.1f s", tokenizer, len(data.corpus), time.perf_counter() - started)
        ranked, scores, seconds = bm25_search(index, data.queries, depth, cfg.latency_queries)
        rows.append(system_row(f"BM25 ({tokenizer})", ranked, data.relevant, mean_ms(seconds), 0, 0))
        started = time.perf_counter()
        hybrid = fuse([ranked, bi_rankings], [scores, bi_scores], depth, cfg.fusion.value, weights=[weight, 1.0 - weight])
        fuse_ms = 1000.0 * (time.perf_counter() - started) / len(data.queries)
        name = f"hybrid: BM25 ({tokenizer}) + bi-encoder, {cfg.fusion.value}{label}"
        hybrid_seconds = [a + b for a, b in zip(seconds, bi_seconds)]
        rows.append(system_row(name, hybrid, data.relevant, mean_ms(hybrid_seconds) + fuse_ms, 0, 1))
        if cross is not None:
            reranked, _ = cross_encoder_rows(cross, data, hybrid, hybrid_seconds, ks, 0, cfg.batch_size)
            rows += [{**r, "system": r["system"].replace("bi-encoder", name)} for r in reranked]
    return rows


def bm25_search(index: Any, queries: list[str], depth: int, timed: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(ids, scores, seconds of each timed query): the first `timed` (0: all) one by one, as a
    service meets them, the rest in one batch."""
    timed = len(queries) if timed <= 0 else min(timed, len(queries))
    ids, scores, seconds = [], [], []
    for query in queries[:timed]:
        started = time.perf_counter()
        i, s = index.search([query], depth)
        seconds.append(time.perf_counter() - started)
        ids.append(i)
        scores.append(s)
    if timed < len(queries):
        i, s = index.search(queries[timed:], depth)
        ids.append(i)
        scores.append(s)
    return np.concatenate(ids), np.concatenate(scores), seconds


def retrieve_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    from train.engine import checkpoint

    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    check_retrieve_config(cfg)
    # A model of the wrong kind is found in a moment; loading the data first could hide it.
    for key in ("bi_encoder", "cross_encoder"):
        if cfg[key]:
            check_saved_kind(cfg[key], key, key)
    data = load_retrieval_set(cfg)
    bi, bi_name, cross = load_models(cfg)
    log.info("%d queries, corpus %d documents (corpus=%s)", len(data.queries), len(data.corpus), cfg.corpus.value)

    ks = sorted(set(cfg.rerank_top_k)) if cross is not None else []
    clamped = [min(k, len(data.corpus)) for k in ks]
    dense = dense_search(cfg, bi, data, max([DEPTH, *clamped]), search_settings(cfg.search))
    bi_rankings, bi_seconds, bi_scores = dense.rankings, dense.seconds, dense.scores
    embed_seconds, reused, search_seconds = dense.embed_seconds, dense.reused, dense.search_seconds
    systems, notes = score_systems(cfg, data, cross, bi_rankings, bi_seconds, sorted(set(clamped)))
    systems += lexical_rows(cfg, data, cross, (bi_rankings, bi_scores), bi_seconds, sorted(set(clamped)))
    report = {
        "data": cfg.data.name,
        "split": cfg.split,
        "corpus": cfg.corpus.value,
        "bi_encoder": bi_name,
        "cross_encoder": cfg.cross_encoder,
        "n_queries": len(data.queries),
        "corpus_size": len(data.corpus),
        "corpus_embed_seconds": embed_seconds,
        "corpus_embed_ms_per_document": 1000.0 * embed_seconds / len(data.corpus),
        "corpus_vectors_reused": reused,
        "search": dense.search | ({"recall@10_vs_exact_float32": dense.recall_vs_exact} if dense.recall_vs_exact is not None else {}),
        "bi_encoder_all_queries_seconds": search_seconds,
        "latency_queries": len(bi_seconds),
        "threads": torch.get_num_threads(),
        "systems": systems,
        "notes": notes,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json_atomic(run_dir / "retrieve.json", report)
    print(format_table(report))
    log.info("Wrote %s", run_dir / "retrieve.json")
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="retrieve")
def main(cfg: DictConfig) -> float:
    with user_errors():
        return retrieve_run(cfg)["systems"][-1]["ndcg@10"]


if __name__ == "__main__":
    exit_2_on_config_errors(main, "python -m train.retrieve")
