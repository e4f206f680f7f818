"""Embedding many sentences: tokenize once for all, batch by exact token length, no autograd."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from train.data.batching import pad
from train.evaluation.bars import eval_bar
from train.evaluation.eval_mode import eval_mode


def encode(
    model: SentenceTransformer, sentences: Sequence[str], batch_size: int = 64, progress: bool = False, prompt: str | None = None
) -> np.ndarray:
    """Sentence embeddings (float32, input order) equal to `model.encode(sentences, prompt=prompt)`.

    sentence-transformers sorts by character length and tokenizes batch by batch; here the
    fast tokenizer runs once over everything (in parallel) and batches are cut by token length,
    so a batch pads to at most its own longest sentence. `progress`: a bar over the batches.
    """
    if len(sentences) == 0:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    from train.models.prompts import excludes_prompt, prompt_length

    tokenizer = model.tokenizer
    skip = prompt_length(tokenizer, prompt) if prompt and excludes_prompt(model) else None
    ids = tokenizer(
        [prompt + s for s in sentences] if prompt else list(sentences),
        truncation=True,
        max_length=model.max_seq_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    with_types = "token_type_ids" in tokenizer.model_input_names
    left = tokenizer.padding_side == "left"
    device = model.device
    out: list[torch.Tensor] = []
    with eval_mode(model), torch.inference_mode():
        starts = range(0, len(order), batch_size)
        for start in eval_bar(starts, len(starts), "embedding", progress):
            input_ids, mask = pad([ids[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id, left)
            features = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
            if with_types:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            if skip is not None:
                features["prompt_length"] = skip
            out.append(model(features)["sentence_embedding"].float().cpu())
    embeddings = torch.cat(out).numpy()
    result = np.empty_like(embeddings)
    result[order] = embeddings
    return result
