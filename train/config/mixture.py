"""A mixture's datasets as configs: each entry of `mixture.datasets` composed as the run would be
with `data=<its data> loss=<its loss>` and its own overrides, so that every data preset, loss
option and check applies to it as to a one-dataset run.

Overrides come in this order: the command line's (without its own data=/loss= choices), the
entry's data and loss, then the entry's overrides. So `debug=default` or
`data.max_train_samples=100` on the command line shrink every dataset, and an entry's own
setting wins over them. An entry sets data.* and loss.* only: the model, the trainer and the task
are the run's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from train.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
_GROUP_CHOICE = re.compile(r"^[~+]*(data|loss)(@[^=]*)?=")


@dataclass
class MixturePart:
    name: str
    weight: float
    cfg: DictConfig  # the whole run's config as this dataset trains it: its data and loss sections are its own


def _base_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not _GROUP_CHOICE.match(o)]


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):  # run(cfg) called from Python
        return compose(config_name="train", overrides=overrides)


def _entry_problems(i: int, entry: DictConfig, task: str) -> list[str]:
    from train.losses.registry import LOSSES

    where = f"mixture.datasets[{i}] ({entry.name})"
    problems = []
    if not re.fullmatch(r"[A-Za-z0-9_-]+", entry.name):
        problems.append(f"{where}: name {entry.name!r} (letters, digits, _ and - only: it names the metric loss_<name>)")
    if not (CONF / "data" / f"{entry.data}.yaml").is_file():
        options = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
        problems.append(f"{where}: data={entry.data} is not a conf/data option ({', '.join(options)})")
    if entry.loss not in LOSSES[task]:
        problems.append(f"{where}: loss={entry.loss} is not a task={task} loss ({', '.join(LOSSES[task])})")
    foreign = [o for o in entry.overrides if not o.lstrip("+~").startswith(("data.", "loss."))]
    if foreign:
        problems.append(f"{where}: overrides {foreign} set keys outside data.* and loss.* (the model, trainer and task are the run's)")
    if entry.weight <= 0:
        problems.append(f"{where}: weight={entry.weight} (must be > 0)")
    return problems


def mixture_parts(cfg: DictConfig) -> list[MixturePart]:
    """Each dataset of `mixture.datasets` with its composed config; [] when there are none."""
    entries = list(cfg.mixture.datasets)
    if not entries:
        return []
    task = cfg.task.name.value
    problems = [p for i, e in enumerate(entries) for p in _entry_problems(i, e, task)]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        problems.append(f"mixture.datasets: names {names} repeat (each names its dataset's loss in metrics.jsonl)")
    if cfg.mixture.sampling.value == "round_robin" and any(e.weight != 1 for e in entries):
        problems.append("mixture.sampling=round_robin with a weight other than 1 (weights apply to sampling=proportional)")
    if problems:
        raise ConfigError("Invalid mixture:\n  - " + "\n  - ".join(problems))
    base = _base_overrides()
    parts = []
    for e in entries:
        composed = _compose([*base, f"data={e.data}", f"loss={e.loss}", *e.overrides, "mixture.datasets=[]"])
        # The run's own model, trainer and task (a Python caller's cfg may differ from what the command line composes).
        for key in ("task", "model", "pooling", "trainer", "peft"):
            composed[key] = cfg[key]
        parts.append(MixturePart(e.name, float(e.weight), composed))
    return parts
