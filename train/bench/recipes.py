"""python -m train.bench: this project's loop against SentenceTransformerTrainer, same recipe.

Each run happens in a fresh subprocess (so peak memory is its own), A and B alternating over
`--repeats`. Both start from the same backbone with a fresh pooling layer, the same data, loss,
batch size, learning rate and warm-up; both are scored with the same (fp32) dev evaluator.
Precision: ours runs at `--precision` (default `auto`, as trainer.mixed_precision);
SentenceTransformerTrainer at its own default (fp32, `--st-precision`) and, when that differs
from what ours resolved to, a second time at ours' precision, so that the headline gives both
the default-precision and the equal-precision ratio.

Timed span, the same on both sides: from a loaded model and the raw training split to the
trained model in memory. It holds tokenization (ours: into an empty token cache, as a first run
does), the optimizer, the accelerator and data loader setup and the training loop (ours also
writes its final/ model dir); no evaluation. Ours reads the raw split into its cache first, as the
library's side gets its split as a loaded `datasets` table.

    python -m train.bench --model minilm --data stsb                 # one epoch of STS-B train
    python -m train.bench --task cross_encoder --data stsb          # a reranker, against CrossEncoderTrainer
    python -m train.bench --model minilm --data korsts --repeats 2
    python -m train.bench --data stsb --seeds 3 --test-file sts-test.csv   # quality over seeds 0-2, dev and a held-out file
    python -m train.bench --data korquad --loss mnrl --batch-size 32 --repeats 3   # retrieval: test nDCG@10, R@1, R@10
    python -m train.bench --task sparse --data korquad --batch-size 32 --seeds 3    # SPLADE against SparseEncoderTrainer
    python -m train.bench --task multi_vector --data korquad --batch-size 32 --seeds 3   # ColBERT against MultiVectorEncoderTrainer
    python -m train.bench --encode --data stsb                      # embedding speed only
    python -m train.bench --precision no                            # fp32 on both sides
    python -m train.bench --task image_text --max-train-samples 10000   # CLIP-style, Fashion-MNIST (train/bench/image_text.py)
    python -m train.bench --scale 100000,1000000                    # memory and start-up at corpus size (train/bench/scale.py)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from train.bench.common import peak_memory, profiled, resolve_model, timed_train
from train.bench.common import precision as resolve


def _common(args: argparse.Namespace):
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    from train.data.presets import load_sts_splits
    from train.models.bi_encoder import build_sentence_transformer

    name, package = resolve_model(args.model)
    if contrastive(args) and args.data == "korquad":
        # Questions against every paragraph of the test articles (the library's IR figures).
        from train.data.build import retrieval_eval_sets

        splits = retrieval_eval_sets(_korquad(args), ("test",))
    elif contrastive(args):
        # Pairs or triplets to train on (the corpus, read per side); STS figures from KorSTS dev and test.
        splits = load_sts_splits("korsts", ("dev", "test"), data_dir=args.data_dir)
        if args.task in ("sparse", "multi_vector") and args.max_eval_samples:
            splits = {k: v.select(range(min(args.max_eval_samples, len(v)))) for k, v in splits.items()}
    else:
        # The preset's test split where it has one (KorSTS), or --test-file in the preset's format
        # (the STS Benchmark's sts-test.csv, which is held out of this repository).
        paths = {"test": args.test_file} if args.test_file else None
        splits = load_sts_splits(args.data, ("train", "dev", "test"), data_dir=args.data_dir, max_train_samples=args.max_train_samples,
                                 paths=paths)
    # The backbone's weights and a fresh head (seeded: both sides start alike).
    torch.manual_seed(args.seed)
    if args.task == "cross_encoder":
        from train.models.cross_encoder import build_cross_encoder

        model = build_cross_encoder(name, args.max_seq_length, 1, offline_package=package)
    elif args.task == "sparse":
        from train.models.sparse import build_sparse_encoder

        model = build_sparse_encoder(name, args.max_seq_length, "splade", offline_package=package)
    elif args.task == "multi_vector":
        from train.models.multi_vector import build_multi_vector_encoder

        model = build_multi_vector_encoder(name, args.max_seq_length, query_length=args.query_length, offline_package=package)
    else:
        model = build_sentence_transformer(name, args.max_seq_length, "mean", offline_package=package)
    if args.device != "cpu":
        model.to(args.device)
    return model, splits


def unit_of(args: dict[str, Any]) -> str:
    """What a run counts: pairs (text recipes), images (image_text) or sentences (--encode)."""
    return "sentences" if args.get("encode") else "images" if args["task"] == "image_text" else "pairs"


# Each task's recipe when --loss is not given; sparse and multi-vector models train contrastively.
DEFAULT_LOSS = {"cross_encoder": "bce", "sparse": "splade", "multi_vector": "colbert"}


def contrastive(args: argparse.Namespace) -> bool:
    """The contrastive recipe (in-batch negatives): pairs or triplets, not scored pairs."""
    return loss_name(args) in ("mnrl", "cached_mnrl", "splade", "colbert")


def loss_name(args: argparse.Namespace) -> str:
    return args.loss or DEFAULT_LOSS.get(args.task, "cosent")


def train_corpus(args: argparse.Namespace, cache_dir: str):
    """The training split through a data cache at `cache_dir`: scored pairs of the STS preset, or
    for the contrastive recipe the triplets of an NLI preset (kor_xnli, kornli) or the pairs of
    `--train-file` (JSONL: anchor, positive[, negative])."""
    import json

    from train.data.corpus import CacheSettings, load_corpus
    from train.data.presets import data_spec
    from train.data.rows import Columns

    settings = CacheSettings.make(cache_dir, args.num_proc)
    if contrastive(args) and args.data == "korquad" and not args.train_file:
        from train.data.build import build_corpus

        d = _korquad(args)
        d.cache_dir, d.max_train_samples = cache_dir, args.max_train_samples
        return build_corpus(d, "triplets")
    if not contrastive(args):
        return load_corpus(data_spec(args.data, args.data_dir), "train", "scored_pairs", True, settings, args.max_train_samples)
    if args.train_file:
        with open(args.train_file, encoding="utf-8") as f:
            negative = "negative" if "negative" in json.loads(f.readline()) else None
        spec = data_spec("pairs_file", paths={"train": args.train_file}, columns=Columns("anchor", "positive"), negative_column=negative)
    else:
        spec = data_spec(args.data, args.data_dir)
    return load_corpus(spec, "train", "triplets", True, settings, args.max_train_samples)


def _korquad(args: argparse.Namespace):
    """data=korquad as the train command composes it (split by article), under --data-dir."""
    from train.config.schema import DataConfig

    return DataConfig(name="korquad", dir=args.data_dir, num_proc=args.num_proc)


def _utilisation(model, counts: dict[str, Any], seconds: float, precision: str, args: argparse.Namespace) -> dict[str, float]:
    import torch

    from train.bench.flops import peak_tflops, utilisation

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or peak_tflops(device, precision)
    # Bi-encoder: two sentences a pair (the attention term uses the mean real sentence length);
    # cross-encoder: one sequence a pair.
    sequences = counts["pairs"] * (1 if args.task == "cross_encoder" else 2)
    return utilisation(model[0].auto_model, counts["real_tokens"], sequences, seconds, peak)


def _scores(model, splits, args) -> dict[str, float]:
    """Spearman on dev (and test, when there is one) by sentence-transformers' own evaluators."""
    from train.evaluation.figures import evaluate_sts, sts_evaluator

    if args.skip_eval:
        return {"dev_spearman": float("nan")}
    if "retrieval_test" in splits:
        from train.evaluation.figures import evaluate_retrieval, retrieval_evaluator

        if args.task == "sparse":
            from train.evaluation.sparse_figures import evaluate_sparse_retrieval as score
        elif args.task == "multi_vector":
            from train.evaluation.multi_vector_figures import evaluate_multi_vector_retrieval as score
        else:
            def score(model, split, batch_size):
                return evaluate_retrieval(model, retrieval_evaluator(split, batch_size))
        figures = score(model, splits["retrieval_test"], 64)
        return {f"test_{k}": figures[f"retrieval_{k}"] for k in ("ndcg@10", "recall@1", "recall@10")}
    out = {}
    for split in ("dev", "test"):
        if split not in splits:
            continue
        if args.task == "cross_encoder":
            from train.tasks.cross_encoder import evaluate_set

            out[f"{split}_spearman"] = evaluate_set(model, splits[split], 64)["spearman"]
        elif args.task == "sparse":
            from train.evaluation.sparse_figures import evaluate_sparse_sts

            out[f"{split}_spearman"] = evaluate_sparse_sts(model, splits[split], 64)["spearman_dot"]
        elif args.task == "multi_vector":
            from train.evaluation.multi_vector_figures import evaluate_multi_vector_sts

            out[f"{split}_spearman"] = evaluate_multi_vector_sts(model, splits[split], 64)["spearman_maxsim"]
        else:
            out[f"{split}_spearman"] = evaluate_sts(model, sts_evaluator(splits[split], 64))["spearman_cosine"]
    return out


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    model, splits = _common(args)
    mixed = resolve(args.precision, args.device)
    with tempfile.TemporaryDirectory() as cache_dir:
        # The same split, read into an empty cache: the timed span below tokenizes it, as a first run does.
        corpus = train_corpus(args, cache_dir)
        return _run_ours(args, model, splits, corpus, mixed)


def _run_ours(args: argparse.Namespace, model, splits, corpus, mixed: str) -> dict[str, Any]:
    from train.config.schema import MixedPrecision, TrainerConfig
    from train.losses.registry import build_loss

    settings = TrainerConfig(
        epochs=1,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_ratio=0.1,
        weight_decay=TrainerConfig.weight_decay if args.weight_decay is None else args.weight_decay,
        mixed_precision=MixedPrecision(mixed),
        seed=args.seed,
        eval_every=10**9,
        save_every=10**9,
        log_every=10**9,
        bucket_windows=args.bucket_windows,
        forward_chunk_rows=args.chunk_rows,
    )
    loss, spec = build_loss(loss_name(args), model, task=args.task)
    with profiled(args):
        result, seconds = timed_train(args.task, model, loss, spec, corpus, settings, mixed, args.device)
    counts = {"pairs": result.pairs, "real_tokens": result.real_tokens, "padded_tokens": result.padded_tokens}
    return {
        "seconds": seconds,
        **counts,
        **_utilisation(model, counts, seconds, result.mixed_precision, args),
        **_scores(model, splits, args),
        **peak_memory(args.device),
        "precision": result.mixed_precision,
    }


def _count_batches(loss, counts: dict[str, int]) -> None:
    """Counts what SentenceTransformerTrainer's loss is given (exactly the trained batches; the
    data collator also sees the one batch accelerate's loader fetches ahead), changing nothing."""

    def hook(module, inputs) -> None:
        features, labels = inputs
        for f in features:
            counts["real_tokens"] += int(f["attention_mask"].sum())
            counts["padded_tokens"] += f["attention_mask"].numel()
        counts["pairs"] += len(features[0]["attention_mask"])  # rows (MNRL has no labels)

    loss.register_forward_pre_hook(hook)


def _count_cross_encoder_batches(model, counts: dict[str, int]) -> None:
    """CrossEncoderTrainer's losses tokenize inside the step: count what preprocess returns."""
    preprocess = model.preprocess

    def counted(pairs, *a, **k):
        features = preprocess(pairs, *a, **k)
        counts["real_tokens"] += int(features["attention_mask"].sum())
        counts["padded_tokens"] += features["attention_mask"].numel()
        counts["pairs"] += len(pairs)
        return features

    model.preprocess = counted


def _st_side(args: argparse.Namespace, model, counts: dict[str, int]):
    """The library's trainer classes, loss and batch counting for the task."""
    if args.task == "cross_encoder":
        from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
        from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

        _count_cross_encoder_batches(model, counts)
        return CrossEncoderTrainer, CrossEncoderTrainingArguments, BinaryCrossEntropyLoss(model)
    if args.task == "sparse":
        from sentence_transformers import SparseEncoderTrainer, SparseEncoderTrainingArguments
        from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

        # Our loss=splade's defaults: MNRL at scale 1 (dot products), FLOPS weights 3e-5 / 5e-5.
        loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model, scale=1.0), document_regularizer_weight=3e-5,
                          query_regularizer_weight=5e-5)
        _count_batches(loss, counts)
        return SparseEncoderTrainer, SparseEncoderTrainingArguments, loss
    if args.task == "multi_vector":
        from sentence_transformers import MultiVectorEncoderTrainer, MultiVectorEncoderTrainingArguments
        from sentence_transformers.multi_vector_encoder.losses import MultiVectorMultipleNegativesRankingLoss

        loss = MultiVectorMultipleNegativesRankingLoss(model)
        _count_batches(loss, counts)
        return MultiVectorEncoderTrainer, MultiVectorEncoderTrainingArguments, loss
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    name = loss_name(args)
    if name == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model)
    elif name == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(model)
    else:
        loss = losses.CoSENTLoss(model)
    _count_batches(loss, counts)
    return SentenceTransformerTrainer, SentenceTransformerTrainingArguments, loss


def run_st_trainer(args: argparse.Namespace) -> dict[str, Any]:
    model, splits = _common(args)
    counts = {"pairs": 0, "real_tokens": 0, "padded_tokens": 0}
    precision = resolve(args.st_precision, args.device)
    Trainer, TrainingArguments, loss = _st_side(args, model, counts)

    with tempfile.TemporaryDirectory() as out:
        if contrastive(args):
            # The same rows as ours (read through a cache outside the timed span), batched as the
            # library recommends for in-batch negatives: no text twice in a batch.
            train_set = train_corpus(args, out).dataset
            train_set = train_set.select_columns([c for c in ("anchor", "positive", "negative") if c in train_set.column_names])
        else:
            train_set = splits["train"]
        training_args = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            max_steps=args.max_steps if args.max_steps > 0 else -1,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=0.1,
            weight_decay=0.0 if args.weight_decay is None else args.weight_decay,  # 0.0: TrainingArguments' default
            seed=args.seed,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=args.device == "cpu",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            logging_steps=10**9,
            disable_tqdm=True,
            **({"batch_sampler": "no_duplicates"} if contrastive(args) else {}),
        )
        started = time.perf_counter()
        trainer = Trainer(model=model, args=training_args, train_dataset=train_set, loss=loss)
        trainer.train()
        seconds = time.perf_counter() - started
        model.__dict__.pop("preprocess", None)  # stop counting: evaluation is not training
    return {
        "seconds": seconds,
        **counts,
        **_utilisation(model, counts, seconds, precision, args),
        **_scores(model, splits, args),
        **peak_memory(args.device),
        "precision": precision,
    }


def run_encode(args: argparse.Namespace, which: str) -> dict[str, Any]:
    """Sentences/s embedding the dev split: our encoder vs SentenceTransformer.encode."""
    from train.evaluation.encode import encode

    model, splits = _common(args)
    sentences = list(splits["dev"]["sentence1"]) + list(splits["dev"]["sentence2"])
    model.eval()
    started = time.perf_counter()
    if which == "ours":
        encode(model, sentences, batch_size=args.batch_size)
    else:
        model.encode(sentences, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "sentences": len(sentences), **peak_memory(args.device)}


