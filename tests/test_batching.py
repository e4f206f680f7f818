"""Length-bucketed batches: every example once an epoch, a new order each epoch, little padding;
the collator feeds the model what sentence-transformers' own preprocessing would."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from train.data.batching import BucketBatchSampler, Collator, embed_batch, pad
from train.data.corpus import CacheSettings, load_corpus
from train.data.presets import data_spec
from train.data.rows import ScoreRange
from train.data.tokens import token_table
from train.models.bi_encoder import build_sentence_transformer
from tests.conftest import FIXTURES


def lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 120) for _ in range(n)]


def test_every_example_exactly_once_per_epoch():
    sampler = BucketBatchSampler(lengths(1003), batch_size=16, seed=1)
    for epoch in range(3):
        sampler.use_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert len(batches) == len(sampler) == 63


def test_order_changes_each_epoch_and_is_deterministic_per_seed():
    ls = lengths()
    a = BucketBatchSampler(ls, 16, seed=3)
    b = BucketBatchSampler(ls, 16, seed=3)
    c = BucketBatchSampler(ls, 16, seed=4)
    assert a.batches(0) == b.batches(0)
    assert a.batches(1) == b.batches(1)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != c.batches(0)


def test_buckets_cut_padding():
    ls = np.array(lengths(5000))

    def padded_over_real(window_batches):
        batches = BucketBatchSampler(ls, 16, seed=0, window_batches=window_batches).batches(0)
        return sum(len(b) * ls[b].max() for b in batches) / ls.sum()

    random_batches, bucketed = padded_over_real(0), padded_over_real(50)
    assert random_batches > 1.5
    assert bucketed < 1.1


def cached_rows(model, path, tmp_path) -> tuple[list[dict], np.ndarray]:
    """A file's rows as training gets them from the data cache: texts, label and token ids; and their lengths."""
    spec = data_spec("sts_file", paths={"train": str(path)}, scores=ScoreRange(0, 1))
    corpus = load_corpus(spec, "train", "scored_pairs", True, CacheSettings(tmp_path, 1))
    tokens = token_table(corpus, model.tokenizer, model.max_seq_length, "columns")
    return [{**t, **i} for t, i in zip(corpus.dataset.to_list(), tokens.dataset.to_list())], np.asarray(tokens.lengths)


def test_collator_matches_sentence_transformers_preprocess(tiny_model_dir, tmp_path):
    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=16)
    rows, _ = cached_rows(model, FIXTURES / "pairs.jsonl", tmp_path)
    collate = Collator(model.tokenizer.pad_token_id, "right", token_type_ids=True)
    batch = collate(rows)
    texts = [r["sentence1"] for r in rows] + [r["sentence2"] for r in rows]
    expected = model.preprocess(texts)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        torch.testing.assert_close(batch["chunks"][0][key], expected[key])
    torch.testing.assert_close(batch["labels"], torch.tensor([0.9, 0.05, 0.85]))
    # Embedding the merged batch gives the same vectors as encoding each column on its own.
    model.eval()
    with torch.no_grad():
        merged = embed_batch(model, batch)
    separate = model.encode([r["sentence1"] for r in rows], convert_to_tensor=True)
    torch.testing.assert_close(merged[:3], separate, rtol=1e-4, atol=1e-5)


def test_truncation_to_max_seq_length(tiny_model_dir, tmp_path):
    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=8)
    rows, lengths = cached_rows(model, FIXTURES / "train_small.jsonl", tmp_path)
    assert lengths.max() == 8 and max(len(r["ids_sentence1"]) for r in rows) == 8


def test_left_padding():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_chunked_forward_gives_the_same_embeddings_with_less_padding(tiny_model_dir, tmp_path):
    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=64)
    model.eval()
    rows = cached_rows(model, FIXTURES / "train_small.jsonl", tmp_path)[0][:16]
    whole = Collator(model.tokenizer.pad_token_id, token_type_ids=True)(rows)
    chunked = Collator(model.tokenizer.pad_token_id, token_type_ids=True, chunk_rows=5)(rows)
    assert len(chunked["chunks"]) == 7  # 32 sentences in chunks of 5
    padded = lambda b: sum(c["attention_mask"].numel() for c in b["chunks"])
    assert padded(chunked) < padded(whole)
    assert sum(int(c["attention_mask"].sum()) for c in chunked["chunks"]) == int(whole["chunks"][0]["attention_mask"].sum())
    with torch.no_grad():
        torch.testing.assert_close(embed_batch(model, chunked), embed_batch(model, whole), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows", [1024, 1000], ids=["even-batches", "padded-last-batch"])
def test_each_rank_gets_a_disjoint_share_under_accelerate_sharding(rows):
    from accelerate.data_loader import BatchSamplerShard

    sampler = BucketBatchSampler(lengths(rows), 16, seed=5)
    for epoch in (0, 1):
        sampler.use_epoch(epoch)
        batches = sampler.batches(epoch)
        shares = [[i for b in BatchSamplerShard(sampler, num_processes=2, process_index=r) for i in b] for r in range(2)]
        assert set(shares[0]) | set(shares[1]) == set(range(rows))
        overlap = set(shares[0]) & set(shares[1])
        if len(batches) % 2 == 0:
            assert len(batches) == 64 and not overlap
        else:
            # 63 batches: accelerate gives rank 1 a last batch made of the epoch's first indices, so the
            # only shared indices are those, and the short batch (the last) has its 8 real rows once.
            assert len(batches) == 63 and len(batches[-1]) == rows % 16
            assert overlap and overlap <= set(batches[0])
            assert len(shares[0]) == len(shares[1]) == 32 * 16
        again = [i for b in BatchSamplerShard(sampler, num_processes=2, process_index=0) for i in b]
        assert again == shares[0], "deterministic per rank"
