"""The engine: one accelerate training loop for one CPU, one GPU or many processes, and what it
stands on: its settings, the accelerator, optimizer, schedule and loader (setup), checkpoints and
resume, precision, parallelism (DDP, FSDP, DeepSpeed, one run dir for every rank), signals,
device-side statistics and trackers.

May import: train.errors and itself. Must not know: a task's batch layout (a task hands it a
`TrainStep`, train/engine/task_step.py), a file format, the Hydra config (it gets plain values,
train/engine/settings.py)."""
