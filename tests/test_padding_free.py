"""Padding-free batches (train/models/packed.py) compute what padded batches compute: the same
embeddings, cross-encoder scores, loss and gradients, for every packable architecture, pooling
mode and prompt setting, and a run trains to the same weights either way."""

from __future__ import annotations

import contextlib

import pytest
import torch

from train.data.batching import Collator, embed_batch
from train.models.packed import pack_layout, packed_forwards
from train.run import run
from tests.conftest import compose_config, minilm_tokenizer, tiny_overrides
from tests.test_train_run import assert_same_updates, weight_updates

TEXTS = [
    "A man plays a guitar.", "A person makes music on a stage in front of a large crowd of people.", "It rains.",
    "한국어 문장도 같은 방식으로 처리된다", "x", "Two dogs run through a field of tall green grass while the sun sets.",
    "A woman slices an onion.", "Nobody is here.",
]
ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


def tiny(model_type: str, out, head: bool = False):
    """A random 2-layer model of `model_type` without dropout, with MiniLM's BERT tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=1, **({"embedding_size": 32} if model_type == "electra" else {}),
    )
    (AutoModelForSequenceClassification if head else AutoModel).from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def rows_of(tokenizer, n: int = 8) -> list[dict]:
    ids = tokenizer(TEXTS, truncation=True, max_length=32, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return [{"ids_sentence1": ids[i], "ids_sentence2": ids[(i + 3) % len(ids)], "score": i / n} for i in range(n)]


def embeddings_and_grads(model, collate, rows, packed: bool):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    model.zero_grad()
    batch = collate(rows)
    with packed_forwards(model) if packed else contextlib.nullcontext():
        embeddings = embed_batch(model, batch)
    loss = CoSENTLoss(model).compute_loss_from_embeddings(list(embeddings.chunk(2)), batch["labels"])
    loss.backward()
    return embeddings.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, batch


def assert_same(packed, padded) -> None:
    (e1, l1, g1, _), (e2, l2, g2, _) = packed, padded
    torch.testing.assert_close(e1, e2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


def collators(model, **kwargs) -> tuple[Collator, Collator]:
    layout, why_not = pack_layout(model)
    assert layout is not None, why_not
    tokenizer = model.tokenizer
    common = dict(pad_token_id=tokenizer.pad_token_id, token_type_ids="token_type_ids" in tokenizer.model_input_names, **kwargs)
    return Collator(**common, packed=layout), Collator(**common, chunk_rows=0)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_packed_embeddings_loss_and_gradients_equal_the_padded_ones(model_type, tmp_path):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny(model_type, tmp_path)), 32)
    packed_collate, padded_collate = collators(model)
    rows = rows_of(model.tokenizer)
    packed = embeddings_and_grads(model, packed_collate, rows, packed=True)
    padded = embeddings_and_grads(model, padded_collate, rows, packed=False)
    assert_same(packed, padded)
    chunk = packed[3]["chunks"][0]
    lengths = [len(r["ids_sentence1"]) for r in rows] + [len(r["ids_sentence2"]) for r in rows]
    assert chunk["input_ids"].shape == (1, sum(lengths))  # no pad among the tokens the layers see
    assert packed[3]["counts"] == [sum(lengths), sum(lengths)]


def test_roberta_positions_start_after_the_padding_index(tmp_path):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny("roberta", tmp_path)), 32)
    layout, _ = pack_layout(model)
    pad = model[0].auto_model.config.pad_token_id
    assert layout.position_offset == pad + 1
    rows = rows_of(model.tokenizer, 2)
    chunk = collators(model)[0](rows)["chunks"][0]
    for i, ids in enumerate([r["ids_sentence1"] for r in rows] + [r["ids_sentence2"] for r in rows]):
        start = int(chunk["first_tokens"][i])  # packed shortest first: sentence i starts here
        assert chunk["input_ids"][0, start : start + len(ids)].tolist() == ids
        assert chunk["position_ids"][0, start : start + len(ids)].tolist() == list(range(pad + 1, pad + 1 + len(ids)))


@pytest.mark.parametrize("mode", ["cls", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"])
def test_every_pooling_mode_is_the_same_packed(mode, tmp_path):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny("bert", tmp_path)), 32, pooling_mode=mode, normalize=True)
    packed_collate, padded_collate = collators(model)
    rows = rows_of(model.tokenizer)
    assert_same(embeddings_and_grads(model, packed_collate, rows, True), embeddings_and_grads(model, padded_collate, rows, False))


def test_prompts_left_out_of_the_pooling_are_the_same_packed(tmp_path):
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny("bert", tmp_path)), 32, include_prompt=False)
    lengths = {"sentence1": 3, "sentence2": 2}
    packed_collate, padded_collate = collators(model, prompt_lengths=lengths)
    rows = rows_of(model.tokenizer)
    packed = embeddings_and_grads(model, packed_collate, rows, True)
    assert [c["prompt_length"].item() for c in packed[3]["chunks"]] == [3, 2]
    assert_same(packed, embeddings_and_grads(model, padded_collate, rows, False))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra"])
def test_packed_cross_encoder_scores_and_gradients_equal_the_padded_ones(model_type, tmp_path):
    """A cross-encoder's head reads each pair's first token (BERT through its pooler)."""
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from train.models.cross_encoder import build_cross_encoder
    from train.engine.step_model import training_forward
    from train.tasks.cross_encoder import CrossEncoderStep, PairTokens

    results = []
    for packed in (True, False):
        model = build_cross_encoder(str(tiny(model_type, tmp_path / str(packed), head=True)), 32)
        layout, why_not = pack_layout(model)
        assert layout is not None, why_not
        step = CrossEncoderStep(PairTokens(model.tokenizer, 32, chunk_rows=0, packed=layout if packed else None))
        batch = {"inputs": [TEXTS, TEXTS[3:] + TEXTS[:3]], "labels": torch.linspace(0, 1, len(TEXTS)), "known": {}, "rows": len(TEXTS)}
        scores = []
        model.register_forward_hook(lambda m, i, out: scores.append(out["scores"].detach()))
        with training_forward(model, contextlib.nullcontext, step.forward_contexts(model)):
            loss = step.loss(model, BinaryCrossEntropyLoss(model), batch)
            loss.backward()
        results.append((scores[0], loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, step.stats(batch)))
    (s1, l1, g1, st1), (s2, l2, g2, st2) = results
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)
    assert st1.real_tokens == st2.real_tokens == st1.padded_tokens < st2.padded_tokens


def test_a_model_that_cannot_be_packed_says_why(tiny_qwen3_dir):
    from train.models.bi_encoder import build_sentence_transformer

    layout, why_not = pack_layout(build_sentence_transformer(str(tiny_qwen3_dir), 32, pooling_mode="lasttoken"))
    assert layout is None and "qwen3" in why_not


@pytest.mark.parametrize("task", ["bi_encoder", "cross_encoder"])
def test_a_run_trains_to_the_same_weights_padding_free_or_padded(task, tiny_model_no_dropout_dir, tmp_path):
    common = [f"task={task}", "trainer.mixed_precision=no", "trainer.lr=1e-3", "trainer.eval_every=1000", "trainer.save_every=1000"]
    free = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common)), run_dir=tmp_path / "free")
    padded = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.padding_free=false")), run_dir=tmp_path / "padded")
    assert free["padding_ratio"] == 1.0 and padded["padding_ratio"] > 1.0
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, tmp_path / "free"), weight_updates(tiny_model_no_dropout_dir, tmp_path / "padded"),
                        rtol=1e-4)



def test_attention_groups_pad_each_to_its_own_longest():
    """Shortest first, cut into groups: each group's block is as wide as its own longest sentence,
    and the groups cover every token once."""
    from train.data.packing import PackLayout, pack

    lengths = [3, 40, 7, 12, 5, 33, 9, 21] * 4
    features = pack([[1] * n for n in lengths], PackLayout(0, False))
    groups = features["packed_groups"]
    assert len(groups) == 4
    widths = [mask.shape[-1] for *_, mask in groups]
    assert widths == sorted(widths) and widths[-1] == 40 and widths[0] < 10
    assert [g[0] for g in groups] == [0] + [g[1] for g in groups[:-1]] and groups[-1][1] == sum(lengths)
    assert sum(int(mask.sum()) for *_, mask in groups) == sum(lengths)
