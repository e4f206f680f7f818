"""python -m train.evaluate: the figures of any checkpoint or model, zero-shot included.

    python -m train.evaluate checkpoint=outputs/<run>/final data=korsts split=test
    python -m train.evaluate model=minilm data=korsts split=test
    python -m train.evaluate model=minilm data=sts_file data.path=dev.json data.columns.score=labels.label

A checkpoint's kind is read from the files it carries: a bi-encoder gets STS correlations of
cosine similarities; a cross-encoder gets Spearman of its scores on scored pairs, accuracy on
NLI labels, or MAP/MRR@10/NDCG@10 on queries with candidates (data=candidates_file); an
image–text model gets zero-shot accuracy and image↔text Recall@1/5/10 on image data:

    python -m train.evaluate checkpoint=outputs/<run>/final data=fashion_mnist split=test
Writes eval.json into its own run dir (outputs/eval/...) and prints a table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from train.data.beir import RETRIEVAL_DATA
from train.data.build import build_data, build_image_text_splits

from train.models.build import build_model

from train.cli import exit_2_on_config_errors, run_dir_from_hydra, setup_logging, user_errors
from train.config.store import register_configs
from train.config.checks import check_evaluate_config
from train.data.checks import check_scorable
from train.errors import DataError

register_configs()
log = logging.getLogger("train")

SPLIT_NAMES = ("train", "dev", "test")


def evaluate_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    from train.evaluation.figures import evaluate_sts, format_table, sts_evaluator

    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    check_evaluate_config(cfg)
    split = cfg.split
    if split not in SPLIT_NAMES:
        raise DataError(f"split={split!r}: use one of {', '.join(SPLIT_NAMES)}.")

    data_cfg = cfg.data
    if data_cfg.path:
        # One file to score: it stands in for the asked split.
        from omegaconf import OmegaConf

        data_cfg = OmegaConf.merge(data_cfg, {f"{split}_path": data_cfg.path})
    kind = _model_kind(cfg)
    if cfg.data.name in RETRIEVAL_DATA:
        return _write(run_dir, *_retrieval_figures(cfg, kind), cfg, kind)
    if kind == "image_text":
        splits = build_image_text_splits(data_cfg, (split,))
    else:
        shape = _cross_encoder_shape(data_cfg.name) if kind == "cross_encoder" else "scored_pairs"
        splits = build_data(data_cfg, (split,), shape, shape)
    if split not in splits:
        raise DataError(
            f"data={cfg.data.name} has no {split} split here. Try split=dev, or give the file with data.path=<file>."
        )
    if kind in ("bi_encoder", "sparse", "multi_vector"):
        check_scorable(splits[split], str(data_cfg.get(f"{split}_path") or f"data={cfg.data.name} ({split} split)"))

    model, model_name = _load_model(cfg, kind)
    log.info("Model:\n%s", model)
    if kind == "image_text":
        from train.tasks import image_text

        metrics = image_text.evaluate_split(model, splits[split], cfg.batch_size)
        table = image_text.format_table({split: metrics})
    elif kind == "cross_encoder":
        from train.tasks import cross_encoder

        metrics = cross_encoder.evaluate_set(model, splits[split], cfg.batch_size)
        table = cross_encoder.format_table({split: metrics})
    elif kind == "sparse":
        from train.evaluation.sparse_figures import evaluate_sparse_sts
        from train.evaluation.tables import text_table

        metrics = evaluate_sparse_sts(model, splits[split], cfg.batch_size)
        table = text_table({split: metrics})
    elif kind == "multi_vector":
        from train.evaluation.multi_vector_figures import evaluate_multi_vector_sts
        from train.evaluation.tables import text_table

        metrics = evaluate_multi_vector_sts(model, splits[split], cfg.batch_size)
        table = text_table({split: metrics})
    else:
        from train.models.prompts import check_prompt_names, column_prompts

        check_prompt_names(model, dict(cfg.data.prompts))
        prompts = column_prompts(model, dict(cfg.data.prompts), ("sentence1", "sentence2"))
        metrics = evaluate_sts(model, sts_evaluator(splits[split], cfg.batch_size, prompts=prompts))
        table = format_table({split: metrics})
    return _write(run_dir, metrics, table, model_name, cfg, kind)


def _write(run_dir: Path, metrics: dict[str, Any], table: str, model_name: str, cfg: DictConfig, kind: str) -> dict[str, Any]:
    from train.engine import checkpoint

    out = {cfg.split: metrics, "task": kind, "model": model_name, "data": cfg.data.name}
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json_atomic(run_dir / "eval.json", out)
    print(table)
    log.info("Wrote %s", run_dir / "eval.json")
    return out


def _retrieval_figures(cfg: DictConfig, kind: str) -> tuple[dict[str, Any], str, str]:
    """data=beir / korquad: the split's queries against the whole corpus, the library's figures
    (ndcg@10, mrr@10, recall@1/10/100, map@100); (figures, table, model name)."""
    from train.config.schema import to_plain
    from train.data.build import retrieval_eval_sets
    from train.evaluation.figures import evaluate_retrieval, retrieval_evaluator
    from train.evaluation.tables import text_table
    from train.models.prompts import check_prompt_names, column_prompts

    if kind not in ("bi_encoder", "sparse", "multi_vector"):
        raise DataError(f"data={cfg.data.name} scores bi-encoders, sparse and multi-vector encoders (retrieval); "
                        "rerank with a cross-encoder in train.retrieve.")
    if cfg.dense and kind != "sparse":
        raise DataError(f"dense={cfg.dense}: the hybrid of a sparse and a dense model is scored with a sparse checkpoint; "
                        f"checkpoint={cfg.checkpoint} is a {kind.replace('_', '-')}.")
    found = retrieval_eval_sets(to_plain(cfg.data), (cfg.split,))
    if not found:
        raise DataError(f"data={cfg.data.name} has no {cfg.split} split here (no qrels/{cfg.split}.tsv). Try split=dev or split=test.")
    model, model_name = _load_model(cfg, kind)
    if kind == "sparse":
        from train.evaluation.sparse_figures import evaluate_sparse_retrieval, sparse_query_cost

        split_set = found[f"retrieval_{cfg.split}"]
        metrics = {k.removeprefix("retrieval_"): v for k, v in evaluate_sparse_retrieval(model, split_set, cfg.batch_size).items()}
        metrics.update(sparse_query_cost(model, split_set, cfg.latency_queries or len(split_set.queries), cfg.batch_size))
        table = text_table({cfg.split: metrics})
        if cfg.dense:
            rows = sparse_dense_rows(cfg, model, split_set)
            metrics = {**metrics, "systems": rows}
            table += "\n\n" + systems_table(rows, "ms/query: query by query (sparse: encoding + sparse dot products; bi-encoder: encoding + "
                                                   "search; hybrid: both, then the fusion).")
        return metrics, table, model_name
    if kind == "multi_vector":
        return _multi_vector_figures(cfg, model, found[f"retrieval_{cfg.split}"]) + (model_name,)
    check_prompt_names(model, dict(cfg.data.prompts))
    prompts = column_prompts(model, dict(cfg.data.prompts), ("anchor", "positive"))
    ir = retrieval_evaluator(found[f"retrieval_{cfg.split}"], cfg.batch_size, prompts)
    metrics = {k.removeprefix("retrieval_"): v for k, v in evaluate_retrieval(model, ir).items()}
    table = text_table({cfg.split: metrics})
    if cfg.lexical:
        systems, lexical_table = search_systems(cfg, model, found[f"retrieval_{cfg.split}"])
        metrics = {**metrics, "systems": systems}
        table = f"{table}\n\n{lexical_table}"
    return metrics, table, model_name


def _multi_vector_figures(cfg: DictConfig, model: Any, split_set: Any) -> tuple[dict[str, Any], str]:
    """Exact MaxSim retrieval and what it costs; with lexical=[...], BM25 and its top 100 reranked by MaxSim as rows of one table."""
    from train.evaluation.multi_vector_figures import evaluate_multi_vector_retrieval, multi_vector_query_cost
    from train.evaluation.tables import text_table

    metrics = {k.removeprefix("retrieval_"): v for k, v in evaluate_multi_vector_retrieval(model, split_set, cfg.batch_size).items()}
    metrics.update(multi_vector_query_cost(model, split_set, cfg.latency_queries or len(split_set.queries), cfg.batch_size))
    table = text_table({cfg.split: metrics})
    if cfg.lexical:
        rows = maxsim_rerank_rows(cfg, model, split_set)
        metrics = {**metrics, "systems": rows}
        table += "\n\n" + systems_table(rows, "ms/query: query by query (BM25: its search; reranked: + encoding the query and its 100 "
                                               "candidates, MaxSim).")
    return metrics, table


def systems_table(rows: list[dict[str, Any]], note: str) -> str:
    from train.evaluation.tables import text_table

    columns = ["ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "ms_per_query"]
    return text_table({r["system"]: {c: float(r[c]) for c in columns} for r in rows}, columns, label="system", digits={"ms_per_query": 1}) + "\n" + note


def sparse_dense_rows(cfg: DictConfig, model: Any, split_set: Any) -> list[dict[str, Any]]:
    """dense=<bi-encoder dir>: the sparse model's row, the bi-encoder's, and their hybrid (`fusion`,
    the sparse model weighted `fusion_weight`), on the same queries and corpus."""
    from train.evaluation.lexical import fuse
    from train.evaluation.ranking import DEPTH, from_split
    from train.evaluation.sparse_figures import sparse_search
    from train.retrieve import dense_search, load_model_as, mean_ms, system_row

    data = from_split(split_set)
    ranked, scores, seconds = sparse_search(model, data.queries, data.corpus, DEPTH, cfg.latency_queries, cfg.batch_size)
    dense = dense_search(cfg, load_model_as(cfg.dense, "dense", "bi_encoder", cfg.model.trust_remote_code), data, DEPTH)
    weight = float(cfg.fusion_weight)
    hybrid = fuse([ranked, dense.rankings], [scores, dense.scores], DEPTH, cfg.fusion.value, weights=[weight, 1.0 - weight])
    both = [a + b for a, b in zip(seconds, dense.seconds)]
    return [system_row("sparse", ranked, data.relevant, mean_ms(seconds), 0, 0),
            system_row("bi-encoder", dense.rankings, data.relevant, mean_ms(dense.seconds), 0, 1),
            system_row(f"hybrid: sparse + bi-encoder, {cfg.fusion.value}, sparse weight {weight:g}", hybrid, data.relevant, mean_ms(both), 0, 1)]


def maxsim_rerank_rows(cfg: DictConfig, model: Any, split_set: Any, depth: int = 100) -> list[dict[str, Any]]:
    """For each tokenizer of `lexical`: BM25 alone, and its top `depth` reranked by the model's MaxSim."""
    from train.evaluation.lexical import BM25
    from train.evaluation.multi_vector_figures import maxsim_rerank
    from train.evaluation.ranking import from_split
    from train.retrieve import bm25_search, mean_ms, system_row

    data = from_split(split_set)
    rows = []
    for tokenizer in cfg.lexical:
        ranked, _, seconds = bm25_search(BM25(data.corpus, tokenizer), data.queries, depth, cfg.latency_queries)
        rows.append(system_row(f"BM25 ({tokenizer})", ranked, data.relevant, mean_ms(seconds), 0, 0))
        reranked, rerank_seconds = maxsim_rerank(model, data.queries, data.corpus, ranked, cfg.batch_size, cfg.latency_queries)
        ms = mean_ms(seconds) + mean_ms(rerank_seconds)
        rows.append(system_row(f"BM25 ({tokenizer}) top-{depth} + MaxSim", reranked, data.relevant, ms, 0, 1))
    return rows


def search_systems(cfg: DictConfig, model: Any, split_set: Any) -> tuple[list[dict[str, Any]], str]:
    """lexical=[...]: the bi-encoder, BM25 and hybrid search as rows of one table with ms/query
    (train.retrieve's systems, on the same queries and corpus)."""
    from train.evaluation.ranking import DEPTH, from_split
    from train.retrieve import dense_search, format_table, lexical_rows, mean_ms, system_row

    data = from_split(split_set)
    dense = dense_search(cfg, model, data, DEPTH)
    rows = [system_row("bi-encoder", dense.rankings, data.relevant, mean_ms(dense.seconds), 0, 1),
            *lexical_rows(cfg, data, None, (dense.rankings, dense.scores), dense.seconds, [])]
    timed = "every query" if len(dense.seconds) == len(data.queries) else f"the first {len(dense.seconds)} queries (latency_queries)"
    report = {"data": cfg.data.name, "split": cfg.split, "n_queries": len(data.queries), "corpus_size": len(data.corpus), "corpus": "all",
              "corpus_embed_seconds": dense.embed_seconds, "search": dense.search, "systems": rows,
              "notes": [f"ms/query: wall time query by query (bi-encoder: encoding + search; BM25: its search), over {timed}."]}
    return rows, format_table(report)


def _load_model(cfg: DictConfig, kind: str) -> tuple[Any, str]:
    """The model to score and its name. A saved folder gives one figure however it is named
    (checkpoint=DIR or model.name=DIR): its own max_seq_length in both, unless model.max_seq_length
    is given on the command line, which then applies to both (a bare transformer: model.max_seq_length)."""
    from train.models.saved import load_saved_model

    given = max_seq_length_given(cfg)
    if not cfg.checkpoint:
        return build_model(cfg.model, cfg.pooling, task=kind, keep_own_max_seq_length=not given), cfg.model.name
    model = load_saved_model(cfg.checkpoint, cfg.model.trust_remote_code)
    if given and kind == "bi_encoder" and model.max_seq_length != cfg.model.max_seq_length:
        log.info("max_seq_length %d (model.max_seq_length; the checkpoint's own: %d)", cfg.model.max_seq_length, model.max_seq_length)
        model.max_seq_length = cfg.model.max_seq_length
    return model, str(cfg.checkpoint)


def max_seq_length_given(cfg: DictConfig) -> bool:
    """Whether the user set model.max_seq_length: on the command line (a preset's value is a
    training length, not a choice for scoring), or outside Hydra a value other than the default."""
    from hydra.core.hydra_config import HydraConfig

    from train.config.schema import ModelConfig

    if HydraConfig.initialized():
        return any(o.split("=", 1)[0].lstrip("+~") == "model.max_seq_length" for o in HydraConfig.get().overrides.task)
    return cfg.model.max_seq_length != ModelConfig().max_seq_length


def _model_kind(cfg: DictConfig) -> str:
    """What is evaluated: the checkpoint's own kind, or (a model preset) what the data scores."""
    from train.config.checks import IMAGE_DATA
    from train.models.saved import saved_model_kind

    if cfg.checkpoint and Path(cfg.checkpoint).is_dir():
        kind = saved_model_kind(cfg.checkpoint)
    else:
        kind = "image_text" if cfg.data.name in IMAGE_DATA else "bi_encoder"
    if (kind == "image_text") != (cfg.data.name in IMAGE_DATA):
        what = "an image–text model" if kind == "image_text" else f"a {kind.replace('_', '-')}"
        raise DataError(f"checkpoint={cfg.checkpoint} is {what}, and data={cfg.data.name} does not fit it: "
                        + ("give images and captions (data=image_text_file, image_folder, fashion_mnist)." if kind == "image_text"
                           else "image data scores image–text models only."))
    return kind


def _cross_encoder_shape(data_name: str) -> str:
    """What a cross-encoder is scored on for this data: scores, NLI labels or candidate lists."""
    from train.data.presets import source_kind

    kind = source_kind(data_name)
    if kind == "nli":
        return "labeled_pairs"
    if kind == "candidates":
        return "query_candidates"
    if kind == "sts":
        return "scored_pairs"
    raise DataError(f"data={data_name} ({kind} data) has nothing to score a cross-encoder on: use scored pairs, NLI or data=candidates_file.")


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    with user_errors():
        out = evaluate_run(cfg)
        metrics = out[cfg.split]
        for key in ("spearman_cosine", "spearman", "accuracy", "ndcg@10", "zero_shot_accuracy", "image_to_text_recall@1"):
            if key in metrics:
                return metrics[key]
        return None


if __name__ == "__main__":
    exit_2_on_config_errors(main, "python -m train.evaluate")
