"""Each pooling mode against vectors computed by hand from the token embeddings, with padding."""

from __future__ import annotations

import math

import pytest
import torch

from train.models.bi_encoder import build_sentence_transformer

SENTENCES = ["a b", "the quick brown fox jumps", "hello"]


def pooled_and_tokens(model_dir, mode):
    model = build_sentence_transformer(str(model_dir), max_seq_length=32, pooling_mode=mode)
    model.eval()
    features = model.preprocess(SENTENCES)
    with torch.no_grad():
        out = model(dict(features))
    return out["sentence_embedding"], out["token_embeddings"], features["attention_mask"]


def by_hand(mode, tokens, mask):
    vectors = []
    for emb, m in zip(tokens, mask):
        n = int(m.sum())
        real = emb[:n]  # right padding: real tokens first
        if mode == "cls":
            vectors.append(real[0])
        elif mode == "mean":
            vectors.append(real.sum(0) / n)
        elif mode == "max":
            vectors.append(real.max(0).values)
        elif mode == "mean_sqrt_len_tokens":
            vectors.append(real.sum(0) / math.sqrt(n))
        elif mode == "weightedmean":
            w = torch.arange(1, n + 1, dtype=real.dtype).unsqueeze(1)
            vectors.append((real * w).sum(0) / w.sum())
        elif mode == "lasttoken":
            vectors.append(real[-1])
    return torch.stack(vectors)


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_pooling_matches_hand_computed(tiny_model_dir, mode):
    pooled, tokens, mask = pooled_and_tokens(tiny_model_dir, mode)
    assert mask.sum(1).tolist() != [mask.shape[1]] * len(SENTENCES), "the batch must contain padding"
    expected = by_hand(mode, tokens, mask)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)


def test_padding_does_not_leak_into_mean_or_max(tiny_model_dir):
    # The short sentence alone and inside a padded batch must pool to the same vector.
    for mode in ("mean", "max"):
        model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=32, pooling_mode=mode)
        alone = model.encode(["hello"], convert_to_tensor=True)
        batched = model.encode(["hello", "a much longer sentence with many more tokens in it"], convert_to_tensor=True)
        torch.testing.assert_close(alone[0], batched[0], rtol=1e-4, atol=1e-5)


def test_printing_the_model_shows_pooling_and_normalize(tiny_model_dir):
    model = build_sentence_transformer(str(tiny_model_dir), pooling_mode="max", normalize=True)
    text = str(model)
    assert "'pooling_mode': 'max'" in text and "Normalize" in text
    norms = model.encode(["one sentence", "another"], convert_to_tensor=True).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(2), rtol=1e-5, atol=1e-5)
