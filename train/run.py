"""run(cfg): build model, data and loss from the config, hand plain objects to the loop, report.

An experiment with `stages` runs them in order in one run dir (stage-1-<name>/, ...), each
stage starting from the previous stage's final model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf

from train.engine import checkpoint, tracking
from train.losses.build import build_loss_from, model_outputs, needs_guide
from train.losses.registry import loss_spec
from train.models.adapters import has_adapter, merge_adapters, parameter_counts
from train.models.build import build_guide, build_model
from train.models.prompts import check_prompt_names
from train.cards.facts import card_facts
from train.cli import run_dir_from_hydra, setup_logging
from train.engine.checkpoint import check_run_dir, load_progress, resolve_resume
from train.config.mixture import mixture_parts
from train.config.schema import LossConfig, ModelConfig, TrainerConfig, to_plain
from train.errors import ConfigError
from train.tasks.mixture import PartInputs, mixture_workload
from train.config.checks import check_train_config
from train import publish
from train.engine.loop import make_accelerator, train
from train.engine.session import DevEvaluation, LoopResult, Workload
from train.engine.parallel import build_device
from train.cards.model_card import RunFacts, write_cards, write_stages_card
from train.config.resume_rules import check as resume_check, write as write_run_settings
from train.tasks import get_task
from train.tasks.base import Scoring

log = logging.getLogger("train")


def train_stage(cfg: DictConfig, run_dir: Path, label: str = "train") -> dict[str, Any]:
    """One training run (one stage) into run_dir; returns eval.json's content. `label` names its progress bar."""
    return _train_stage(cfg, run_dir, label)[0]


def _train_stage(cfg: DictConfig, run_dir: Path, label: str = "train") -> tuple[dict[str, Any], RunFacts]:
    """train_stage, plus the facts its model cards tell (a multi-stage run's final card reuses them)."""
    settings: TrainerConfig = to_plain(cfg.trainer)
    task = get_task(cfg.task.name.value)
    state = PartialState()
    resume_from, resumed_step, resume_changes = _prepare_run_dir(cfg, run_dir, settings)

    # The data first: a bad file or column fails in seconds, not after a model download. The
    # shape a loss trains on comes from the registry; the loss module itself needs the model.
    datasets = load_datasets(cfg, task)
    splits, sets = datasets[0].splits, datasets[0].sets
    if len(datasets) > 1 or datasets[0].name:
        splits = {f"{d.name}/{k}": v for d in datasets for k, v in d.splits.items()}
        sets = evaluation_sets(datasets)
    # Seeded before the model is built: a fresh head (the cross-encoder's classifier) must start
    # alike in every run with this seed, or a resumed run could not match an uninterrupted one.
    set_seed(settings.seed)
    num_labels = model_outputs_of([d.cfg for d in datasets], task.name)
    model = build_model(cfg.model, cfg.pooling, task.name, num_labels, cfg.peft, device=build_device())
    log.info("Model:\n%s", model)
    work, prompts = build_workload(cfg, task, model, datasets, settings, state.num_processes)
    loss = work.loss_fn
    scoring = Scoring(sets, settings.eval_batch_size, list(datasets[0].cfg.loss.matryoshka_dims), prompts)
    evaluate, main_metric = task.evaluator(scoring)
    before = task.baseline_figures(model, scoring)

    trackers = tracking.build(settings.report_to, run_dir, settings.project_name, resumed_step)
    accelerator = make_accelerator(settings, log_with=trackers)
    # The trackers get the resolved config, the loop's metrics and, at the last step, the test figures.
    with tracking.opened(accelerator, settings.project_name, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), run_dir):
        dev = DevEvaluation(evaluate, main_metric) if evaluate is not None else None
        result = train(work, settings, run_dir, dev, resume_from, accelerator, unit=task.unit, desc=label)
        trained_counts = parameter_counts(model)
        report = {**before, **task.final_figures(model, result.progress, evaluate, scoring)}
        tracking.log_final(accelerator, report, result.progress.step)
    if cfg.peft.merge and has_adapter(model):
        merge_adapters(model)
        checkpoint.save_model(accelerator, model, run_dir / "final", {"step": result.progress.step, "kind": "final", "merged_adapter": True})
        log.info("peft.merge=true: final/ holds the adapter merged into the weights (best/ and checkpoints/ hold the adapter)")
    out = {**report, **_run_figures(cfg, task.name, main_metric, result, state.num_processes), "parameters": trained_counts,
           **({"resume_changes": resume_changes} if resume_changes else {})}
    mixture = [(d.name, d.weight, d.cfg, d.splits) for d in datasets if d.name]
    if mixture:
        out.update(data="mixture", loss="mixture", mixture=mixture_record(cfg, datasets, work))
    facts = card_facts(cfg, splits, sets, loss, num_labels, out, model, mixture)
    if state.is_main_process:
        checkpoint.write_json_atomic(run_dir / "eval.json", out)
        safely(write_cards, run_dir, facts, out, result.progress.history)
        task.print_report(report)
    state.wait_for_everyone()
    log.info("Run dir: %s", run_dir)
    return out, facts


@dataclass
class Dataset:
    """A dataset a stage trains on: the run's own (name "") or one of its mixture's."""

    name: str
    weight: float
    cfg: DictConfig  # its data and loss sections are its own
    splits: dict[str, Any]
    sets: dict[str, Any]


def load_datasets(cfg: DictConfig, task) -> list[Dataset]:
    """The run's data, or each dataset of its mixture, read and checked (before any model loads)."""
    parts = mixture_parts(cfg)
    out = []
    for name, weight, c in [(p.name, p.weight, p.cfg) for p in parts] or [("", 1.0, cfg)]:
        splits, sets = task.load_data(c.data, loss_spec(task.name, c.loss.name.value).shape)
        out.append(Dataset(name, weight, c, splits, sets))
    return out


def build_workload(cfg: DictConfig, task, model, datasets: list[Dataset], settings: TrainerConfig, n: int) -> tuple[Workload, dict[str, str]]:
    """What trains, and the prompts evaluation uses (a mixture: the first dataset's for a column)."""
    built = [dataset_inputs(d.cfg, task, model, d.splits["train"], settings, n) for d in datasets]
    if not datasets[0].name:
        loss_fn, rows, collate, sampler, step, prompts = built[0]
        return Workload(model, loss_fn, rows, collate, sampler, step), prompts
    parts = [PartInputs(d.name, d.weight, *b[:5]) for d, b in zip(datasets, built)]
    prompts = {k: v for b in reversed(built) for k, v in b[5].items()}
    return mixture_workload(model, parts, cfg.mixture.sampling.value, settings.seed, n), prompts


def dataset_inputs(cfg: DictConfig, task, model, train_split, settings: TrainerConfig, num_processes: int) -> tuple:
    """One dataset's (loss, rows, collator, sampler, step, prompts), from its data and loss sections."""
    loss_cfg: LossConfig = to_plain(cfg.loss)
    prompts = dict(cfg.data.prompts)
    check_prompt_names(model, prompts)
    guide = build_guide(guide_config(loss_cfg.guide), device=build_device()) if needs_guide(loss_cfg, task.name) and loss_cfg.guide else None
    loss, spec = build_loss_from(loss_cfg, model, num_processes, task.name, guide=guide)
    inputs = task.training_inputs(train_split, model, spec, settings, num_processes, prompts)
    return loss, inputs.rows, inputs.collate, inputs.sampler, task.train_step(spec, inputs.collate), prompts


def mixture_record(cfg: DictConfig, datasets: list[Dataset], work: Workload) -> dict[str, Any]:
    """eval.json's account of a mixture: each dataset's data, loss, weight, rows and batches an epoch (epoch 1)."""
    order = work.sampler.parts(0)
    return {
        "sampling": cfg.mixture.sampling.value,
        "datasets": [
            {"name": d.name, "data": d.cfg.data.name, "loss": d.cfg.loss.name.value, "weight": d.weight, "train_rows": len(d.splits["train"]),
             "batches_per_epoch": order.count(i) // work.sampler.group}  # global batches (one a step without accumulation)
            for i, d in enumerate(datasets)
        ],
    }


def model_outputs_of(cfgs: list[DictConfig], task: str) -> int:
    """The model's outputs for every dataset's loss: one number, or the mixture cannot share a model."""
    counts = {model_outputs(c.loss, task) for c in cfgs}
    if len(counts) > 1:
        raise ConfigError(f"the mixture's losses need models with different numbers of outputs ({sorted(counts)}): one model cannot train them all")
    return counts.pop()


def evaluation_sets(datasets: list[Dataset]) -> dict[str, Any]:
    """A mixture's evaluation sets: each set name (dev, test, retrieval_dev, ...) from the first dataset that has it."""
    sets: dict[str, Any] = {}
    for d in datasets:
        for key, value in d.sets.items():
            if key not in sets and value is not None:
                sets[key] = value
                log.info("Mixture: %s from %s (%d rows)", key, d.name, len(value))
    return sets


CONF_MODELS = Path(__file__).resolve().parents[1] / "conf" / "model"


def guide_config(name: str) -> ModelConfig:
    """loss.guide as a model config: a conf/model preset's (loss.guide=minilm: its Hub id, offline
    package, ...) when the name is one and no such folder exists here, else the name as it is."""
    preset = CONF_MODELS / f"{name}.yaml"
    if "/" not in name and preset.is_file() and not Path(name).exists():
        return to_plain(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(preset)))
    return ModelConfig(name=name)


def _prepare_run_dir(cfg: DictConfig, run_dir: Path, settings: TrainerConfig) -> tuple[Path | None, int | None, list]:
    """(the checkpoint to resume from, its step, what changed since): a finished run is not
    overwritten unasked, and what the result depends on is kept beside the checkpoints, so that a
    resume with other settings is refused."""
    state = PartialState()
    resume_from = resolve_resume(settings.resume, run_dir)
    check_run_dir(run_dir, resume_from is not None, settings.overwrite)
    resumed_step = load_progress(resume_from).step if resume_from is not None else None
    run_settings = {**OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "launch": {"num_processes": state.num_processes}}
    resume_changes = resume_check(resume_from, run_settings, settings.resume_changed.value, resumed_step)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_settings(run_dir, run_settings, resume_changes)
    return resume_from, resumed_step, resume_changes


def _run_figures(cfg: DictConfig, task: str, main_metric: str, result: LoopResult, num_processes: int) -> dict[str, Any]:
    """eval.json's record of what ran and how fast, beside the task's figures."""
    p = result.progress
    return {
        "task": task,
        "model": cfg.model.name,
        "data": cfg.data.name,
        **({"sts_eval_data": cfg.data.sts_dev} if cfg.data.sts_dev else {}),
        "loss": cfg.loss.name.value if hasattr(cfg.loss.name, "value") else str(cfg.loss.name),
        "main_metric": main_metric,
        "steps": p.step,
        "best": {"step": p.best_step, main_metric: p.best_metric} if p.best_step else None,
        "train_seconds": round(result.seconds, 2),
        "train_pairs_per_second": round(result.pairs / result.seconds, 2) if result.seconds else None,
        "padding_ratio": round(result.padded_tokens / result.real_tokens, 3) if result.real_tokens else None,
        "mixed_precision": result.mixed_precision,
        "tf32": result.tf32,
        "skipped_steps": result.skipped_steps,
        **({"loss_scale": result.loss_scale} if result.loss_scale is not None else {}),
        "num_processes": num_processes,
    }


def safely(write_card: Callable[..., None], *args: Any) -> None:
    """A model card that cannot be written is a warning: the model and eval.json are already saved."""
    try:
        write_card(*args)
    except Exception as e:
        log.warning("Model card not written (%s: %s); the model and eval.json are unaffected", type(e).__name__, e)


def stage_configs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The (name, config) of each stage: the run's config with the stage's overrides applied."""
    if not cfg.get("stages"):
        return [("", cfg)]
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    base = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    out = []
    for i, stage in enumerate(cfg.stages, start=1):
        # The experiment stays selected (its defaults apply); `stages=[]` keeps a stage a single run.
        overrides = [*base, *stage.overrides, "stages=[]"]
        out.append((f"stage-{i}-{stage.name}", compose(config_name="train", overrides=overrides)))
    return out


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Trains as configured (all stages, if the experiment has them); returns eval.json's content."""
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    stages = stage_configs(cfg)
    for _, stage_cfg in stages:  # a single run is its own one stage
        check_train_config(stage_cfg)
    if cfg.trainer.push_to_hub:  # a push that cannot work is found before the training, not after it
        publish.check_can_push(cfg.trainer.push_to_hub)
    out = train_stage(cfg, run_dir) if len(stages) == 1 and not stages[0][0] else train_stages(cfg, stages, run_dir)
    if cfg.trainer.push_to_hub and PartialState().is_main_process:
        out["pushed_to"] = publish.push_after_run(run_dir / "final", cfg.trainer.push_to_hub, cfg.trainer.push_private)
    return out


def train_stages(cfg: DictConfig, stages: list[tuple[str, DictConfig]], run_dir: Path) -> dict[str, Any]:
    """The stages one after another, each from the previous one's final model; the run's final/
    and eval.json are the last stage's."""
    check_run_dir(run_dir, bool(cfg.trainer.resume), cfg.trainer.overwrite)
    previous: Path | None = None
    results: dict[str, Any] = {}
    facts: RunFacts | None = None
    for name, stage_cfg in stages:
        stage_cfg = stage_cfg.copy()
        if previous is not None:
            OmegaConf.update(stage_cfg, "model.name", str(previous), merge=False)
        stage_dir = run_dir / name
        if (stage_dir / "eval.json").exists() and cfg.trainer.resume:
            log.info("%s: already finished, skipping", name)
            results[name], facts = json.loads((stage_dir / "eval.json").read_text()), None
        else:
            if not (stage_dir / "checkpoints").is_dir():
                OmegaConf.update(stage_cfg, "trainer.resume", None, merge=False)  # a stage not started yet
            log.info("=== %s ===", name)
            results[name], facts = _train_stage(stage_cfg, stage_dir, label=name)
        previous = stage_dir / "final"
    out = {**results[stages[-1][0]], "stages": results}
    if PartialState().is_main_process:
        checkpoint.write_json_atomic(run_dir / "eval.json", out)
        shutil.copytree(previous, run_dir / "final", dirs_exist_ok=True)
        if facts is not None:  # else (the last stage had finished before a resume) final/ keeps that stage's card
            safely(write_stages_card, run_dir / "final", facts, stages[0][1].model.name, results, out)
    PartialState().wait_for_everyone()
    return out

