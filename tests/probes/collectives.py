"""Launched under several processes: one training run (train.run.run) with torch's profiler
counting the collectives each process makes (gloo:all_reduce, gloo:broadcast, ...); the main
process writes the counts and the run's steps as JSON.

    python -m accelerate.commands.launch --config_file accelerate/two_processes.yaml \
        tests/probes/collectives.py OUT.json RUN_DIR override ...
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    from accelerate import PartialState
    from hydra import compose, initialize_config_dir
    from torch.profiler import ProfilerActivity, profile

    from train.config import register_configs
    from train.run import run

    out, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    state = PartialState(cpu=not torch.cuda.is_available())
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = run(cfg, run_dir=run_dir)
    counts = Counter(e.name for e in prof.events() if e.name.startswith(("gloo:", "nccl:")))
    if state.is_main_process:
        Path(out).write_text(json.dumps({"steps": result["steps"], "collectives": dict(counts)}))


if __name__ == "__main__":
    main()
