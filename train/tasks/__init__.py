"""Model kinds. A task owns what differs between them (its model is built by train/models/), how
rows become a batch, the loss call and batch statistics (its `TrainStep`), its evaluation and
main metric, and the table it prints. The loop, checkpoints, precision and distribution are
shared (train/engine/).

May import: train.models, train.losses, train.data, train.evaluation, the config schema,
train.engine (the TrainStep interface it implements). Must not know: a command, the config checks."""

from __future__ import annotations

from train.tasks.base import Task


def get_task(name: str) -> Task:
    from train.tasks import bi_encoder, cross_encoder, image_text, multi_vector, sparse

    return {"bi_encoder": bi_encoder.TASK, "cross_encoder": cross_encoder.TASK, "image_text": image_text.TASK, "sparse": sparse.TASK,
            "multi_vector": multi_vector.TASK}[name]
