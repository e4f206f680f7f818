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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from tests.probes.launched import config_from_argv
    from train.run import run

    out, run_dir, cfg, state = config_from_argv()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = run(cfg, run_dir=run_dir)
    counts = Counter(e.name for e in prof.events() if e.name.startswith(("gloo:", "nccl:")))
    if state.is_main_process:
        Path(out).write_text(json.dumps({"steps": result["steps"], "collectives": dict(counts)}))


if __name__ == "__main__":
    main()
