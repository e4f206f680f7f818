"""The loss config -> the loss module (plain arguments for the registry)."""

from __future__ import annotations

from omegaconf import DictConfig
from sentence_transformers import SentenceTransformer

from train.config.schema import LossConfig, to_plain
from train.losses.registry import LossSpec, build_loss


def loss_options(loss: DictConfig | LossConfig, num_processes: int = 1) -> dict:
    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return dict(
        scale=c.scale,
        gather_across_devices=num_processes > 1,
        mini_batch_size=c.mini_batch_size,
        margin=c.margin,
        num_labels=c.num_labels,
        matryoshka_dims=list(c.matryoshka_dims),
        num_negatives=c.num_negatives,
        learn_scale=c.learn_scale,
        document_regularizer_weight=c.document_regularizer_weight,
        query_regularizer_weight=c.query_regularizer_weight,
    )


def build_loss_from(
    loss: DictConfig | LossConfig, model: SentenceTransformer, num_processes: int = 1, task: str = "bi_encoder",
    guide: SentenceTransformer | None = None,
) -> tuple[object, LossSpec]:
    """The loss module of `loss` for `model`, and its spec (data shape; whether the loop embeds for
    it). `guide`: gist's frozen guide model (train/models/build.py's build_guide)."""
    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return build_loss(c.name.value, model, task=task, guide=guide, **loss_options(c, num_processes))


def needs_guide(loss: DictConfig | LossConfig, task: str) -> bool:
    """Whether the loss runs a guide model beside the trained one (gist, cached_gist)."""
    from train.losses.registry import loss_spec

    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return loss_spec(task, c.name.value).needs_guide


def model_outputs(loss: DictConfig | LossConfig, task: str) -> int:
    """How many outputs the task's model needs for this loss (cross-encoder: 1, or the NLI classes)."""
    from train.losses.registry import loss_spec

    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return loss_spec(task, c.name.value).num_labels({"num_labels": c.num_labels})
