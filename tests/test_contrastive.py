"""In-batch-negative training: gathered losses across processes, GradCache, batches without
duplicates, NLI -> triplets."""

from __future__ import annotations

import os
from collections import Counter

import datasets
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.data.batching import NoDuplicatesBatchSampler
from train.data.readers import read_nli_file
from train.data.shapes import nli_to_triplets, texts_to_pairs
from train.losses.registry import build_loss
from train.models.bi_encoder import build_sentence_transformer
from tests.conftest import FIXTURES, free_port

ANCHORS = [f"anchor sentence number {i}" for i in range(8)]
POSITIVES = [f"a positive for item {i} here" for i in range(8)]
NEGATIVES = [f"an unrelated negative {i}" for i in range(8)]


def embed(model, texts):
    features = model.preprocess(texts)
    return model(dict(features))["sentence_embedding"]


def loss_and_grads(model_dir, rows: slice, world: int, negatives: bool):
    """MNRL over ANCHORS[rows] (this process's share); returns loss and gradients averaged over processes."""
    torch.manual_seed(0)
    model = build_sentence_transformer(str(model_dir), max_seq_length=16)
    model.eval()  # no dropout: the two runs must see the same function
    loss_fn, _ = build_loss("mnrl", model, gather_across_devices=world > 1)
    columns = [ANCHORS[rows], POSITIVES[rows]] + ([NEGATIVES[rows]] if negatives else [])
    loss = loss_fn.compute_loss_from_embeddings([embed(model, c) for c in columns], None)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if world > 1:
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
    return loss.item(), grads


def _worker(rank, world, port, model_dir, negatives, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        share = len(ANCHORS) // world
        loss, grads = loss_and_grads(model_dir, slice(rank * share, (rank + 1) * share), world, negatives)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("negatives", [False, True], ids=["pairs", "hard-negatives"])
def test_two_processes_gathered_equal_one_process_on_the_global_batch(tiny_model_dir, tmp_path, negatives):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, free_port(), tiny_model_dir, negatives, out), nprocs=2, join=True)
    two = torch.load(out)
    one_loss, one_grads = loss_and_grads(tiny_model_dir, slice(0, 8), 1, negatives)
    assert two["loss"] == pytest.approx(one_loss, rel=1e-5)
    assert set(two["grads"]) == set(one_grads)
    for name, grad in one_grads.items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6)


def test_cached_mnrl_equals_mnrl(tiny_model_dir):
    results = []
    for name in ("mnrl", "cached_mnrl"):
        torch.manual_seed(0)
        model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=16)
        model.eval()
        loss_fn, spec = build_loss(name, model, mini_batch_size=3)
        features = [dict(model.preprocess(c)) for c in (ANCHORS, POSITIVES, NEGATIVES)]
        loss = loss_fn(features, None)
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain), (cached_loss, cached) = results
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-4, atol=1e-6)


def test_no_batch_holds_a_text_twice():
    # Many repeated premises, as in NLI: each anchor appears with several positives.
    texts = [(f"premise {i % 40}", f"hypothesis {i}", f"negative {i % 45}") for i in range(600)]
    for group in (1, 2):
        sampler = NoDuplicatesBatchSampler(texts, batch_size=16, seed=3, group=group)
        batches = sampler.batches(0)
        for start in range(0, len(batches), group):  # a global batch: one batch per process
            global_batch = [i for b in batches[start : start + group] for i in b]
            counts = Counter(t for i in global_batch for t in texts[i])
            assert max(counts.values()) == 1
        seen = [i for b in batches for i in b]
        assert len(seen) == len(set(seen))
        if group == 1:
            assert sorted(seen) == list(range(600))
        else:
            assert len(batches) >= 20 and all(len(b) == 16 for b in batches)
        assert sampler.batches(1) != batches


def test_no_duplicates_sampler_is_fast_at_large_batches():
    texts = [(f"premise {i // 3}", f"hypothesis {i}") for i in range(200_000)]
    sampler = NoDuplicatesBatchSampler(texts, batch_size=1024, seed=0)
    assert sum(len(b) for b in sampler.batches(0)) == 200_000


def test_nli_to_triplets_pairs_premise_entailment_and_contradiction():
    ds = read_nli_file(FIXTURES / "nli_small.tsv", "tsv")
    triplets = nli_to_triplets(ds, hard_negatives=True)
    assert triplets.column_names == ["anchor", "positive", "negative"]
    assert triplets[0] == {"anchor": "A man plays a guitar.", "positive": "A person makes music.", "negative": "The man is asleep."}
    assert len(triplets) == 2  # the premise without a contradiction is left out
    pairs = nli_to_triplets(ds, hard_negatives=False)
    assert pairs.column_names == ["anchor", "positive"] and len(pairs) == 3


def test_simcse_pairs_each_distinct_sentence_with_itself():
    ds = texts_to_pairs(datasets.Dataset.from_dict({"text": ["a", "b", "a", "c"]}))
    assert ds["anchor"] == ["a", "b", "c"] and ds["positive"] == ds["anchor"]


def test_several_processes_get_only_full_batches():
    # Only 5 rows are pairwise disjoint (5 shared hypotheses): a global batch of 2 x 4 can never be
    # filled. accelerate would skip a round whose last batch is short, so such groups are dropped
    # and counted, not handed out as [4, 1] to train a step on one rank's rows.
    texts = [(f"premise {i}", f"hypothesis {i % 5}") for i in range(40)]
    sampler = NoDuplicatesBatchSampler(texts, batch_size=4, seed=0, group=2)
    assert sampler.batches(0) == [] and sampler.dropped == 40
    texts = [(f"premise {i}", f"hypothesis {i % 12}") for i in range(60)]
    sampler = NoDuplicatesBatchSampler(texts, batch_size=4, seed=0, group=2)
    batches = sampler.batches(0)
    assert batches and all(len(b) == 4 for b in batches)
    assert sampler.dropped == 60 - 4 * len(batches)
