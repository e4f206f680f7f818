"""The loop's own settings (trainer.* in the config): plain values, no Hydra. The typed schema
(train/config/schema.py) composes them, so the engine depends on nothing above it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional


class MixedPrecision(str, Enum):
    # auto: bf16 where the hardware computes it natively (a CUDA GPU with bf16, a CPU with
    # AVX512-BF16 or AMX), else no. The forward pass runs under autocast; the loss, the
    # optimizer, the weights and every evaluation stay in fp32.
    auto = "auto"
    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


class NanPolicy(str, Enum):
    stop = "stop"
    skip = "skip"


class ResumeChanged(str, Enum):
    # A resume whose settings differ from the run's in a way that changes the result (model, data,
    # loss, batch size, processes, lr and schedule, seed, precision): refuse it, or allow it (the
    # change is recorded in eval.json and the model card).
    refuse = "refuse"
    allow = "allow"


@dataclass
class TrainerConfig:
    # Passes over the training data.
    epochs: int = 1
    # Optimizer steps; overrides epochs when > 0.
    max_steps: int = 0
    # Rows a batch (pairs, triplets, image–caption pairs), over all processes together.
    batch_size: int = 16
    # AdamW's peak learning rate (linear warm-up, then linear decay to 0).
    lr: float = 2e-5
    # Parameter-name pattern (a regular expression) -> its own peak learning rate, e.g. a fresh head
    # or inference-free SPLADE's query weights: {SparseStaticEmbedding: 1e-3}. The first match wins.
    lr_mapping: dict[str, float] = field(default_factory=dict)
    # The share of the optimizer steps that warm the learning rate up from 0.
    warmup_ratio: float = 0.1
    # AdamW's decoupled weight decay (not on biases and LayerNorm weights).
    weight_decay: float = 0.01
    # Gradients clipped to this global norm (0 = no clipping).
    max_grad_norm: float = 1.0
    # Batches whose gradients add up to one optimizer step (a larger effective batch in the same memory).
    grad_accum: int = 1
    # The precision the forward pass autocasts to.
    mixed_precision: MixedPrecision = MixedPrecision.auto
    # Seeds the sampler, dropout and weight init; a run is repeatable with its seed.
    seed: int = 42
    # Dev evaluation every N optimizer steps (0 = at the end of every epoch), and always at the end.
    eval_every: int = 0
    # Checkpoint every N optimizer steps (0 = at the end of every epoch).
    save_every: int = 0
    # A metrics.jsonl line (loss, lr, throughput) every N optimizer steps.
    log_every: int = 10
    # Keep only the newest N step checkpoints (0 = keep all); best/ and final/ are never removed.
    keep_last: int = 0
    # A checkpoint dir, or `latest` (the newest complete checkpoint in this run dir).
    resume: Optional[str] = None
    # A resume with settings that change the result (docs/resume.md, "Stopping, resuming"): refuse or allow.
    resume_changed: ResumeChanged = ResumeChanged.refuse
    # Refuse to train into a run dir that already holds a finished run, unless true.
    overwrite: bool = False
    # A loss or gradient that is NaN/Inf: stop with a message (stop), or skip that update (skip).
    on_nan: NanPolicy = NanPolicy.stop
    # Rows a batch in dev and test evaluation.
    eval_batch_size: int = 64
    # 0 (default): random batches, as the library's trainers draw them. N: batches cut from
    # windows of batch_size * N examples sorted by length: less padding, but a batch of similar
    # lengths is no random sample, which cost quality on KorSTS (docs/benchmarks.md, "Quality over seeds").
    bucket_windows: int = 0
    # A batch goes through the model in length-sorted chunks of this many rows (bi-encoder: of
    # its 2B sentences; cross-encoder: of its pairs), each padded only to its own longest (the
    # loss still sees the whole batch). 0 = one forward pass. null (default): with random
    # batches two chunks (half the batch's rows, at least 8); with bucket_windows > 0 one pass.
    forward_chunk_rows: Optional[int] = None
    # DataLoader worker processes that collate the next batches while this one trains; null: up to
    # 4 a process on CUDA (persistent, pinned memory, copies that do not wait), 0 on a CPU.
    num_workers: Optional[int] = None
    # A batch runs through the model padding-free where the model allows it (BERT, RoBERTa, XLM-R,
    # ELECTRA): its sentences are packed end to end, so the projections and feed-forward layers
    # see only real tokens and only attention pads each sentence (docs/benchmarks.md, "The training step on a GPU"). false:
    # padded batches (in chunks, see forward_chunk_rows).
    padding_free: bool = True
    # Padded widths rounded up to a multiple of this (tensor cores want multiples of 8); null: 8 on
    # CUDA, 1 on a CPU.
    pad_to_multiple_of: Optional[int] = None
    # TF32 tensor cores for fp32 matmuls on CUDA (recorded in eval.json); no effect on a CPU.
    tf32: bool = True
    # torch.compile the backbone (dynamic shapes: batches vary in length): faster steps on a GPU
    # after a compilation of a minute or so, which a CPU rarely pays back.
    compile: bool = False
    # DDP searches every step's graph for parameters without a gradient; only for a model with
    # parameters no loss reaches (the first step names them when it is needed).
    find_unused_parameters: bool = False
    # Experiment trackers that get the config, loss, lr, throughput and dev/test figures:
    # tensorboard (event files in <run dir>/tensorboard), mlflow (a file store in <run dir>/mlruns
    # unless MLFLOW_TRACKING_URI is set), wandb, trackio; [] or [none] = only metrics.jsonl.
    report_to: list[str] = field(default_factory=list)
    # The trackers' project (MLflow experiment, W&B/Trackio project).
    project_name: str = "embed-train"
    # A Hub repo id (owner/name): final/ is pushed there when the run is done (train.publish). The
    # token is checked before training starts; a failed push leaves the run as it is and prints
    # the python -m train.push command that retries it.
    push_to_hub: Optional[str] = None
    # A repo the push creates is private.
    push_private: bool = False
