"""What a probe launched under several processes does first: the process group, and the train
config composed from the command line (`OUT RUN_DIR override ...`)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def config_from_argv():
    """(output path, run dir, composed config, accelerate's PartialState)."""
    import torch
    from accelerate import PartialState
    from hydra import compose, initialize_config_dir

    from train.config.store import register_configs

    out, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    state = PartialState(cpu=not torch.cuda.is_available())
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return out, run_dir, cfg, state
