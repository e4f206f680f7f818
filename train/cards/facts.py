"""A run's config and report -> the plain facts its model cards tell (train/cards/model_card.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from omegaconf import DictConfig

from train.config.schema import DataConfig, LossConfig, ModelConfig, TrainerConfig, to_plain


def card_facts(
    cfg: DictConfig, splits: dict[str, Any], sets: dict[str, Any], loss: object, num_labels: int, report: dict[str, Any], model: Any = None,
    mixture: list[tuple[str, float, DictConfig, dict[str, Any]]] = (),
):
    """The plain facts of a run that its model cards tell (train/cards/model_card.py). `mixture`:
    each dataset's (name, weight, config, splits) when the run trains several."""
    from train.cards.model_card import MixtureFacts, RunFacts

    if mixture:
        parts = [MixtureFacts(name, _data_facts(to_plain(c.data), own, {}), c.loss.name.value, type(part).__name__, weight)
                 for (name, weight, c, own), part in zip(mixture, loss.parts)]
        first = mixture[0][2]
        facts = card_facts(first, mixture[0][3], sets, loss.parts[0], num_labels, report, model)
        return replace(facts, loss="mixture", loss_class=" + ".join(dict.fromkeys(p.loss_class for p in parts)), mixture=parts,
                       mixture_sampling=cfg.mixture.sampling.value)

    m: ModelConfig = to_plain(cfg.model)
    c: LossConfig = to_plain(cfg.loss)
    task = cfg.task.name.value
    details, pooling = _model_details(cfg, m, task, num_labels, report, model)
    return RunFacts(
        task=task,
        base_model=m.name,
        loss=c.name.value,
        loss_class=type(loss).__name__,
        data=_data_facts(to_plain(cfg.data), splits, sets),
        hyperparameters=_hyperparameters(to_plain(cfg.trainer), c, report),
        main_metric=report.get("main_metric", ""),
        pooling=pooling,
        model_details=details,
        num_labels=num_labels,
        random_init=dict(m.random_init),
    )


def _data_facts(d: DataConfig, splits: dict[str, Any], sets: dict[str, Any]):
    from train.cards.model_card import DataFacts

    return DataFacts(
        name=d.name,
        rows={k: len(v) for k, v in splits.items()},
        eval_data=d.sts_dev,
        eval_rows={k: len(v) for k, v in sets.items() if k in ("dev", "test")} if d.sts_dev else {},
        files={k: p for k, p in (("train", d.train_path), ("dev", d.dev_path), ("test", d.test_path), ("data", d.path)) if p},
        hub_id=d.hub_id if d.name == "hub" else None,
    )


def _model_details(cfg: DictConfig, m: ModelConfig, task: str, num_labels: int, report: dict[str, Any], model: Any) -> tuple[dict[str, Any], str | None]:
    """(what the card's model section lists, the pooling mode the model really has)."""
    details: dict[str, Any] = {"max_seq_length": m.max_seq_length}
    pooling = cfg.pooling.mode.value if task == "bi_encoder" or (task == "image_text" and m.image_tower) else None
    if task == "bi_encoder" and model is not None:
        # What the model is, not what the config asked: a finished model keeps its own head.
        from train.models.bi_encoder import describe

        details["modules"] = describe(model)
        pooling = next((mod.pooling_mode for mod in model if type(mod).__name__ == "Pooling"), pooling)
        if getattr(model, "prompts", None) and any(model.prompts.values()):
            details["prompts"] = {k: v for k, v in model.prompts.items() if v}
        if cfg.data.prompts:
            details["prompts in training (column: prompt)"] = dict(cfg.data.prompts)
    elif task == "bi_encoder" and m.normalize:
        details["normalize"] = True
    if cfg.get("peft") is not None and cfg.peft.method.value != "none":
        p = cfg.peft
        details["adapter"] = f"LoRA r={p.r} alpha={p.alpha} dropout={p.dropout}" + (f" on {list(p.target_modules)}" if p.target_modules else "") + (
            " (merged into the weights)" if p.merge else " (final/ holds the adapter; it loads onto the base model)")
    if report.get("parameters"):
        details["parameters"] = f"{report['parameters']['trainable']:,} trainable of {report['parameters']['total']:,}"
    if m.dtype is not None:
        details["weights dtype"] = m.dtype.value
    if m.trust_remote_code:
        details["trust_remote_code"] = "true (the model runs its own Python code; loading it needs trust_remote_code=True)"
    if task == "image_text":
        details.update(image_tower=m.image_tower or "(the CLIP model's own)", image_pooling=m.image_pooling.value)
        details.update({k: v for k, v in (("projection_dim", m.projection_dim), ("freeze_text", m.freeze_text), ("freeze_image", m.freeze_image)) if v})
    if task == "cross_encoder":
        details["num_labels"] = num_labels
    return details, pooling


def _hyperparameters(t: TrainerConfig, c: LossConfig, report: dict[str, Any]) -> dict[str, Any]:
    hyper: dict[str, Any] = {"epochs": t.epochs} if t.max_steps <= 0 else {"max_steps": t.max_steps}
    hyper.update(
        optimizer_steps=report.get("steps"),
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        num_processes=report.get("num_processes", 1),
        lr=t.lr,
        warmup_ratio=t.warmup_ratio,
        lr_schedule="linear with warmup",
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        mixed_precision=f"{t.mixed_precision.value} (ran as {report.get('mixed_precision')})"
        + (f"; dynamic loss scaling, final scale {report['loss_scale']:g}" if report.get("loss_scale") is not None else ""),
        **({"tf32": True} if report.get("tf32") else {}),
        **({"skipped_optimizer_steps": report["skipped_steps"]} if report.get("skipped_steps") or report.get("loss_scale") is not None else {}),
        seed=t.seed,
        **({"loss.scale": c.scale} if c.scale is not None else {}),
        **({"loss.matryoshka_dims": list(c.matryoshka_dims)} if c.matryoshka_dims else {}),
        **({"train_seconds": report["train_seconds"]} if report.get("train_seconds") is not None else {}),
        # trainer.resume_changed=allow: the run is not one recipe; the card says where it changed.
        **({"changed on resume": "; ".join(f"{r['key']}: {r['old']} -> {r['new']} (from step {r['step']})" for r in report["resume_changes"])}
           if report.get("resume_changes") else {}),
    )
    return hyper
