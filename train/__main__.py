"""python -m train [overrides]: fine-tune a sentence-embedding model (see conf/train.yaml).

Under `accelerate launch` / `torchrun`, every process runs this; they agree on one run dir first.
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from train.builders import exit_2_on_config_errors, user_errors
from train.config import register_configs
from train.distributed import agree_on_run_dir

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from train.run import run  # after Hydra has parsed the command line: `--help` stays fast

    with user_errors():
        result = run(cfg)
    # A number for Hydra sweepers that optimise (e.g. Optuna): dev Spearman.
    return result.get("dev", {}).get("spearman_cosine")


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.argv[1:] = agree_on_run_dir(sys.argv[1:])
    exit_2_on_config_errors(main)
