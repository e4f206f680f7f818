"""python -m train.push: a saved model to the Hugging Face Hub, as the run saved it.

    python -m train.push outputs/<run>/final repo=<owner>/<name> [private=true] [revision=<branch>]
    python -m train.push outputs/<run> repo=<owner>/<name> dry_run=true    # list what would go up

The folder (a run dir stands for its final/) is uploaded with its model card and any export
variants (onnx/, openvino/); a checkpoint's training state only with training_state=true
(train.publish). The token is checked before anything is uploaded. Writes push.json (the repo,
the commit URL, the files) in outputs/push/<date>/<time>/.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from train.cli import exit_2_on_config_errors, positional_as, run_dir_from_hydra, setup_logging, user_errors
from train.config.store import register_configs
from train.engine.checkpoint import write_json_atomic
from train import publish

register_configs()
log = logging.getLogger("train")


def push_run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    folder = publish.model_folder(cfg.dir)
    publish.check_repo_id(cfg.repo)
    files = publish.upload_plan(folder, cfg.training_state)
    if not (folder / "README.md").is_file():
        log.warning("%s has no README.md: the repo gets no model card (a run's final/ has one).", folder)
    report: dict[str, Any] = {"folder": str(folder), "repo": cfg.repo, "revision": cfg.revision, "private": cfg.private, "files": files}
    if cfg.dry_run:
        print(f"Would upload {len(files)} files from {folder} to {cfg.repo}:\n" + "\n".join(f"  {f}" for f in files))
    else:
        token = publish.check_can_push(cfg.repo)
        report["url"] = publish.push_folder(folder, cfg.repo, cfg.private, cfg.revision, cfg.commit_message, cfg.training_state, token)
        log.info("Pushed %d files from %s to %s: %s", len(files), folder, cfg.repo, report["url"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "push.json", report)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="push")
def main(cfg: DictConfig) -> None:
    with user_errors():
        push_run(cfg)


if __name__ == "__main__":
    positional_as("dir")
    exit_2_on_config_errors(main, "python -m train.push")
