"""The loss registry: for each task, loss name -> the data shape it trains on, its builder, its doc.

The schema's `loss.name` choices and the `loss=<name>` config options are derived from these
tables (train/config/schema.py), so a loss is added in one place. sentence-transformers is imported
inside the builders only: composing a config (and `--help`) stays fast.

Bi-encoder losses with `compute_loss_from_embeddings` let the loop embed every column of a
batch in one forward pass (`from_embeddings`); the others (GradCache, Matryoshka, the softmax
classifier) are called with one feature batch per column and run the model themselves.
Cross-encoder losses always run the model themselves (a pair is one sequence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from train.data.shapes import Shape
from train.errors import ConfigError


@dataclass(frozen=True)
class LossSpec:
    shape: Shape
    build: Callable[..., nn.Module]
    doc: str
    from_embeddings: bool = False
    # Option values this loss uses when the config leaves them null (loss.scale=null).
    defaults: dict[str, Any] = field(default_factory=dict)
    # Model outputs the loss needs (cross-encoder: 1 score, or 3 NLI logits).
    num_labels: Callable[[dict[str, Any]], int] = lambda options: 1
    # The loss cuts each input into mini-batches itself (GradCache), or hands the inputs to a
    # second model as they are (GIST's guide): it needs padded inputs.
    slices_inputs: bool = False
    # The most hard-negative columns a row may hold for this loss (None: any number).
    max_negatives: int | None = None
    # The loss needs a guide model (loss.guide), loaded beside the trained one.
    needs_guide: bool = False
    # The loss learns a teacher's scores: rows carry a `scores` column (a candidates file with
    # data.columns.scores, as python -m train.score writes it).
    needs_scores: bool = False


def _st():
    from sentence_transformers.sentence_transformer import losses

    return losses


def _ce():
    from sentence_transformers.cross_encoder import losses

    return losses


def _mnrl(model, scale, gather, **_):
    return _st().MultipleNegativesRankingLoss(model, scale=scale, gather_across_devices=gather)


def _gist(model, scale, gather, guide, **_):
    from train.losses.gist import NTupleGISTEmbedLoss

    return NTupleGISTEmbedLoss(model, guide, temperature=1 / scale, gather_across_devices=gather)


def _cached_gist(model, scale, gather, guide, mini_batch_size, **_):
    return _st().CachedGISTEmbedLoss(model, guide, temperature=1 / scale, mini_batch_size=mini_batch_size, gather_across_devices=gather)


BI_ENCODER_LOSSES: dict[str, LossSpec] = {
    "cosent": LossSpec(
        Shape.scored_pairs, lambda model, scale, **_: _st().CoSENTLoss(model, scale=scale),
        "CoSENT: ranks the pairs of a batch by cosine so that their order follows the gold scores.",
        from_embeddings=True, defaults={"scale": 20.0},
    ),
    "angle": LossSpec(
        Shape.scored_pairs, lambda model, scale, **_: _st().AnglELoss(model, scale=scale),
        "AnglE: CoSENT on angle differences in complex space; avoids cosine saturation.",
        from_embeddings=True, defaults={"scale": 20.0},
    ),
    "cosine": LossSpec(
        Shape.scored_pairs, lambda model, **_: _st().CosineSimilarityLoss(model),
        "Cosine similarity regressed onto the gold score with MSE (the original SBERT STS objective).",
        from_embeddings=True,
    ),
    "mnrl": LossSpec(
        Shape.triplets, _mnrl,
        "MultipleNegativesRankingLoss (InfoNCE): each anchor against its positive, its hard negative and every "
        "other sentence in the batch (gathered from all processes). Bigger batches, more negatives.",
        from_embeddings=True, defaults={"scale": 20.0},
    ),
    # SimCSE is MNRL on (x, x): the two copies differ only by dropout noise.
    "simcse": LossSpec(
        Shape.texts, _mnrl,
        "Unsupervised SimCSE: every sentence paired with itself; dropout makes the two copies differ. "
        "Use with data=text_file data.path=corpus.txt (any data works: its distinct sentences are used).",
        from_embeddings=True, defaults={"scale": 20.0},
    ),
    "margin_mse": LossSpec(
        Shape.triplets, lambda model, **_: _st().MarginMSELoss(model),
        "MarginMSE distillation: the student's margin sim(query, positive) - sim(query, negative_k) regressed onto "
        "the teacher's (dot-product similarity). Trains on a candidates file with teacher scores (python -m train.score; "
        "data.columns.scores=scores), the best-scored candidate as positive.",
        from_embeddings=True, needs_scores=True,
    ),
    "kl_div": LossSpec(
        Shape.triplets, lambda model, **_: _st().DistillKLDivLoss(model),
        "Listwise KL distillation: the softmax of the student's similarities over (positive, negative_1 ... n) against "
        "the softmax of the teacher's scores (DistillKLDivLoss, temperature 1). Needs teacher scores as margin_mse does.",
        from_embeddings=True, needs_scores=True,
    ),
    "cached_mnrl": LossSpec(
        Shape.triplets,
        lambda model, scale, gather, mini_batch_size, **_: _st().CachedMultipleNegativesRankingLoss(
            model, scale=scale, mini_batch_size=mini_batch_size, gather_across_devices=gather
        ),
        "MNRL with GradCache: the batch is embedded in mini-batches, so memory stays flat as it grows "
        "(loss=cached_mnrl trainer.batch_size=1024 loss.mini_batch_size=32).",
        defaults={"scale": 20.0}, slices_inputs=True,
    ),
    "gist": LossSpec(
        Shape.triplets, _gist,
        "GISTEmbed: MNRL whose in-batch and hard negatives are filtered by a frozen guide model (loss.guide): a "
        "candidate the guide scores above the anchor's own positive is left out as a likely false negative. "
        "loss.scale is 1 / temperature (default 100 = temperature 0.01).",
        defaults={"scale": 100.0}, slices_inputs=True, needs_guide=True,
    ),
    "cached_gist": LossSpec(
        Shape.triplets, _cached_gist,
        "GISTEmbed with GradCache (CachedGISTEmbedLoss): memory flat in trainer.batch_size, loss.mini_batch_size rows "
        "a forward pass of the model and of the guide (loss.guide).",
        defaults={"scale": 100.0}, slices_inputs=True, needs_guide=True,
    ),
    "triplet": LossSpec(
        Shape.triplets, lambda model, margin, **_: _st().TripletLoss(model, triplet_margin=margin),
        "TripletLoss: the anchor must be closer to its positive than to its negative by loss.margin (euclidean).",
        from_embeddings=True, max_negatives=1,
    ),
    "softmax": LossSpec(
        Shape.labeled_pairs,
        lambda model, num_labels, **_: _st().SoftmaxLoss(
            model, sentence_embedding_dimension=model.get_embedding_dimension(), num_labels=num_labels
        ),
        "The original SBERT NLI objective: a classifier on (u, v, |u - v|) predicts the NLI label.",
    ),
}

CROSS_ENCODER_LOSSES: dict[str, LossSpec] = {
    # The losses get raw logits and apply their own activation: BCE and CE work on logits, the
    # ranking losses on the activations given here (sentence-transformers' defaults).
    "bce": LossSpec(
        Shape.scored_pairs, lambda model, **_: _ce().BinaryCrossEntropyLoss(model),
        "Binary cross-entropy of the pair's logit against its gold score in [0, 1] (STS) or its 0/1 label.",
    ),
    "ce": LossSpec(
        Shape.labeled_pairs, lambda model, **_: _ce().CrossEntropyLoss(model),
        "Cross-entropy over loss.num_labels classes (NLI: entailment, neutral, contradiction).",
        num_labels=lambda options: options["num_labels"],
    ),
    "mnrl": LossSpec(
        Shape.triplets,
        lambda model, scale, num_negatives, **_: _ce().MultipleNegativesRankingLoss(model, num_negatives=num_negatives, scale=scale),
        "Cross-encoder MNRL: each query against its positive, its hard negative and loss.num_negatives other "
        "in-batch candidates, softmax over sigmoid(logit) * loss.scale.",
        defaults={"scale": 10.0},
    ),
    "mse": LossSpec(
        Shape.scored_pairs, lambda model, **_: _ce().MSELoss(model),
        "MSE distillation: the pair's logit regressed onto its score (a teacher's, from a candidates file with "
        "data.columns.scores; python -m train.score writes one), one pair a candidate.",
    ),
    "lambda": LossSpec(
        Shape.query_candidates, lambda model, **_: _ce().LambdaLoss(model),
        "LambdaLoss (NDCG-Loss2++): listwise, a query with its scored candidates; optimizes NDCG directly.",
    ),
    "listnet": LossSpec(
        Shape.query_candidates, lambda model, **_: _ce().ListNetLoss(model),
        "ListNet: listwise, cross-entropy between the softmax of the candidates' logits and of their gold scores.",
    ),
    "margin_mse": LossSpec(
        Shape.triplets, lambda model, **_: _ce().MarginMSELoss(model),
        "Cross-encoder MarginMSE distillation: the margins logit(query, positive) - logit(query, negative_k) regressed "
        "onto the teacher's (a candidates file with teacher scores: python -m train.score; data.columns.scores=scores).",
        needs_scores=True,
    ),
}


def _clip(model, scale, learn_scale=True, **_):
    from train.losses.clip import ClipLoss

    return ClipLoss(model, scale=scale, learnable=learn_scale)


def _cached_clip(model, scale, gather, mini_batch_size, **_):
    # Image→text and text→image, each direction's softmax over its own candidates: CLIP's loss.
    return _st().CachedMultipleNegativesRankingLoss(
        model, scale=scale, mini_batch_size=mini_batch_size, gather_across_devices=gather,
        directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
    )


IMAGE_TEXT_LOSSES: dict[str, LossSpec] = {
    "clip": LossSpec(
        Shape.image_captions, _clip,
        "CLIP: symmetric InfoNCE (image→caption and caption→image over the global batch), temperature learned "
        "(loss.learn_scale) from loss.scale, repeated captions masked out of the negatives.",
        from_embeddings=True, defaults={"scale": 1 / 0.07},
    ),
    "cached_clip": LossSpec(
        Shape.image_captions, _cached_clip,
        "CLIP's loss through sentence-transformers' GradCache (CachedMultipleNegativesRankingLoss, both directions): "
        "memory flat in the batch size (loss.mini_batch_size rows a forward pass); fixed loss.scale; a caption "
        "repeats in no batch (the library cannot mask repeats).",
        defaults={"scale": 1 / 0.07},
    ),
}

def _sparse():
    from sentence_transformers.sparse_encoder import losses

    return losses


def _splade(base):
    def build(model, document_regularizer_weight, query_regularizer_weight, scale, gather, **_):
        inner = {"mnrl": lambda: _sparse().SparseMultipleNegativesRankingLoss(model, scale=scale, gather_across_devices=gather),
                 "margin_mse": lambda: _sparse().SparseMarginMSELoss(model),
                 "kl_div": lambda: _sparse().SparseDistillKLDivLoss(model),
                 "cosent": lambda: _sparse().SparseCoSENTLoss(model, scale=scale)}[base]()
        from train.models.sparse import is_inference_free

        query = None if is_inference_free(model) else query_regularizer_weight
        return _sparse().SpladeLoss(model, inner, document_regularizer_weight=document_regularizer_weight, query_regularizer_weight=query,
                                    use_document_regularizer_only=base == "cosent")
    return build


_FLOPS = " FLOPS regularisers keep the vectors sparse: loss.document_regularizer_weight, loss.query_regularizer_weight."
SPARSE_LOSSES: dict[str, LossSpec] = {
    "splade": LossSpec(
        Shape.triplets, _splade("mnrl"),
        "SpladeLoss over the sparse MNRL (dot product, in-batch negatives and any hard negatives)." + _FLOPS,
        defaults={"scale": 1.0},
    ),
    "splade_margin_mse": LossSpec(
        Shape.triplets, _splade("margin_mse"),
        "SpladeLoss over SparseMarginMSE: the teacher's margins (a candidates file with scores, python -m train.score)." + _FLOPS,
        needs_scores=True,
    ),
    "splade_kl_div": LossSpec(
        Shape.triplets, _splade("kl_div"),
        "SpladeLoss over SparseDistillKLDiv: the softmax of the teacher's scores over a query's candidates." + _FLOPS,
        needs_scores=True,
    ),
    "splade_cosent": LossSpec(
        Shape.scored_pairs, _splade("cosent"),
        "SpladeLoss over SparseCoSENT on scored pairs (STS); every text regularised as a document." + _FLOPS,
        defaults={"scale": 20.0},
    ),
    "csr": LossSpec(
        Shape.triplets,
        lambda model, scale, gather, **_: _sparse().CSRLoss(
            model, loss=_sparse().SparseMultipleNegativesRankingLoss(model, scale=scale, gather_across_devices=gather)),
        "CSRLoss (model.sparse_architecture=csr): the sparse MNRL plus the autoencoder's reconstruction of the dense embedding.",
        defaults={"scale": 1.0},
    ),
}

def _mv():
    from sentence_transformers.multi_vector_encoder import losses

    return losses


MULTI_VECTOR_LOSSES: dict[str, LossSpec] = {
    "colbert": LossSpec(
        Shape.triplets,
        lambda model, scale, gather, **_: _mv().MultiVectorMultipleNegativesRankingLoss(model, scale=scale, gather_across_devices=gather),
        "MultiVectorMultipleNegativesRankingLoss: InfoNCE over MaxSim scores, in-batch negatives and any hard negatives "
        "(loss.scale 1: MaxSim is a sum over query tokens, not a cosine).",
        defaults={"scale": 1.0},
    ),
    "colbert_kl_div": LossSpec(
        Shape.triplets, lambda model, **_: _mv().MultiVectorDistillKLDivLoss(model),
        "MultiVectorDistillKLDivLoss: the softmax of the teacher's scores over a query's candidates (a candidates file "
        "with scores, python -m train.score).",
        needs_scores=True,
    ),
    "colbert_margin_mse": LossSpec(
        Shape.triplets, lambda model, **_: _mv().MultiVectorMarginMSELoss(model),
        "MultiVectorMarginMSELoss: the teacher's margins between the positive and each negative (a candidates file with scores).",
        needs_scores=True,
    ),
}

LOSSES: dict[str, dict[str, LossSpec]] = {
    "bi_encoder": BI_ENCODER_LOSSES, "cross_encoder": CROSS_ENCODER_LOSSES, "image_text": IMAGE_TEXT_LOSSES, "sparse": SPARSE_LOSSES,
    "multi_vector": MULTI_VECTOR_LOSSES,
}


def loss_names() -> list[str]:
    """Every loss name of every task, in registry order (the schema's choices)."""
    return list(dict.fromkeys(name for table in LOSSES.values() for name in table))


def loss_spec(task: str, name: str) -> LossSpec:
    table = LOSSES[task]
    if name not in table:
        others = [t for t, losses in LOSSES.items() if name in losses]
        raise ConfigError(
            f"loss={name} does not train a {task.replace('_', '-')}"
            + (f" (it is a {others[0].replace('_', '-')} loss)" if others else "")
            + f". Losses for task={task}: {', '.join(table)}."
        )
    return table[name]


def build_loss(
    name: str,
    model: nn.Module,
    scale: float | None = None,
    gather_across_devices: bool = False,
    mini_batch_size: int = 32,
    margin: float = 5.0,
    num_labels: int = 3,
    matryoshka_dims: list[int] | None = None,
    num_negatives: int = 4,
    task: str = "bi_encoder",
    learn_scale: bool = True,
    guide: nn.Module | None = None,
    document_regularizer_weight: float = 3e-5,
    query_regularizer_weight: float | None = 5e-5,
) -> tuple[nn.Module, LossSpec]:
    """The loss module, and its spec (data shape; whether the loop may embed for it). `guide`: the
    frozen guide model of gist/cached_gist (loaded by the caller: train/models/build.py)."""
    spec = loss_spec(task, name)
    if spec.needs_guide and guide is None:
        raise ConfigError(f"loss={name} needs a guide model: set loss.guide=<Hub id, local folder or conf/model preset>, e.g. loss.guide=minilm.")
    options = dict(
        scale=spec.defaults.get("scale", 20.0) if scale is None else scale,
        gather=gather_across_devices, mini_batch_size=mini_batch_size, margin=margin,
        num_labels=num_labels, num_negatives=num_negatives, learn_scale=learn_scale, guide=guide,
        document_regularizer_weight=document_regularizer_weight, query_regularizer_weight=query_regularizer_weight,
    )
    loss = spec.build(model=model, **options)
    if matryoshka_dims:
        if task != "bi_encoder":
            raise ConfigError("loss.matryoshka_dims truncates sentence embeddings: it applies to task=bi_encoder only.")
        dim = model.get_embedding_dimension()
        too_big = [d for d in matryoshka_dims if d > dim]
        if too_big:
            raise ConfigError(
                f"loss.matryoshka_dims={list(matryoshka_dims)}: {', '.join(map(str, too_big))} exceed the model's "
                f"embedding size {dim}. Use sizes ≤ {dim}, e.g. loss.matryoshka_dims=[{','.join(str(d) for d in (dim, dim // 2, dim // 4))}]."
            )
        loss = _st().MatryoshkaLoss(model, loss, matryoshka_dims=list(matryoshka_dims))
        spec = replace(spec, from_embeddings=False)
    return loss, spec
