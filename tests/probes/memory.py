"""Launched under several processes (DDP or FSDP): one training run with the memory each process
holds for parameters and optimizer state measured after the first optimizer step (a shard's own
bytes under FSDP), and where the main process's saving copy lives. Each process writes
OUT_PREFIX-<rank>.json.

    python -m accelerate.commands.launch --config_file accelerate/fsdp.yaml --num_processes 2 \
        tests/probes/memory.py OUT_PREFIX RUN_DIR override ...
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def local_bytes(tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def main() -> None:
    import torch

    import train.engine.loop as loop
    from tests.probes.launched import config_from_argv
    from train.run import run

    out, run_dir, cfg, state = config_from_argv()
    measured: dict = {}
    real = loop.optimizer_step

    def optimizer_step(s):
        real(s)
        if not measured:
            inner = s.prep.optimizer.optimizer
            measured.update(
                parameter_bytes=sum(local_bytes(p) for p in s.model.parameters()),
                optimizer_bytes=sum(local_bytes(v) for st in inner.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0),
                saving_copy_device=str(next(s.prep.plain.parameters()).device) if s.prep.plain is not None else None,
                model_device=str(s.accelerator.device),
            )

    loop.optimizer_step = optimizer_step
    run(cfg, run_dir=run_dir)
    measured["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(f"{out}-{state.process_index}.json").write_text(json.dumps(measured))


if __name__ == "__main__":
    main()
