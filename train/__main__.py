"""python -m train [overrides]: fine-tune a sentence-embedding model (see conf/train.yaml).

Under `accelerate launch` / `torchrun`, every process runs this; they agree on one run dir first.
Returns the main dev metric, which a sweeper that optimises (Optuna, conf/hpo/) maximises.
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from train.cli import exit_2_on_config_errors, user_errors
from train.config.store import register_configs
from train.engine.parallel import agree_on_run_dir

register_configs()


def optuna_with_our_defaults(argv: list[str]) -> list[str]:
    """`hydra/sweeper=optuna` -> `hpo=optuna`: the plugin with direction=maximize, failed trials
    not ending the sweep and a seeded sampler (conf/hpo/optuna.yaml). Hydra cannot hold a config
    of that name with other defaults beside the plugin's, so the command line is translated. An
    `hpo=` given as well selects the sweeper itself."""
    if "hydra/sweeper=optuna" not in argv:
        return argv
    has_hpo = any(a.split("=", 1)[0].lstrip("+~") == "hpo" for a in argv)
    return [a for a in argv if a != "hydra/sweeper=optuna"] + ([] if has_hpo else ["hpo=optuna"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from train.report import main_figure
    from train.run import run  # after Hydra has parsed the command line: `--help` stays fast

    with user_errors():
        result = run(cfg)
    return main_figure(result)


if __name__ == "__main__":
    sys.argv[1:] = optuna_with_our_defaults(sys.argv[1:])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.argv[1:] = agree_on_run_dir(sys.argv[1:])
    exit_2_on_config_errors(main, "python -m train")
