"""Fine-tuning finished open embedding models as they are: their own modules and prompts, LoRA
adapters, memory settings and decoder (last-token) models, on tiny random models of the presets'
architectures (XLM-RoBERTa as bge-m3 / KURE-v1, Qwen3 as Qwen3-Embedding)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from tests.conftest import FIXTURES, QWEN3_QUERY_PROMPT, compose_config, make_finished, tiny_overrides, assert_same_weights, resume_from_checkpoint
from train.errors import ConfigError
from train.models.build import build_model
from train.run import run

PAIRS = ["a man is playing a guitar", "a woman slices an onion", "the cat sleeps on the mat"]


def modules_of(path) -> list[str]:
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]


def test_a_finished_model_trains_with_its_own_pooling_and_normalize(tiny_kure_dir, tmp_path, caplog):
    # KURE-v1's layout: CLS pooling + Normalize. The config's default pooling=mean must not replace it.
    cfg = compose_config(tiny_overrides(tiny_kure_dir))
    assert cfg.pooling.mode.value == "mean"
    with caplog.at_level(logging.INFO, logger="train"):
        run(cfg, run_dir=tmp_path / "run")
    assert "finished sentence-transformers model, trained as it is" in caplog.text and "Not applied: pooling=mean" in caplog.text
    final = tmp_path / "run" / "final"
    assert modules_of(final) == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((final / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    vectors = SentenceTransformer(str(final)).encode(PAIRS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    card = (final / "README.md").read_text()
    assert "**Pooling:** `cls`" in card and "Pooling(cls) -> Normalize" in card, "the card tells the model's own head, not the config's"


def test_pooling_replace_swaps_a_finished_models_pooling_and_says_so(tiny_kure_dir, caplog):
    cfg = compose_config(tiny_overrides(tiny_kure_dir, "pooling=mean", "pooling.replace=true"))
    with caplog.at_level(logging.INFO, logger="train"):
        model = build_model(cfg.model, cfg.pooling)
    assert model[1].pooling_mode == "mean" and len(model) == 2  # model.normalize=false drops Normalize
    assert "pooling.replace=true" in caplog.text and "Pooling(cls)" in caplog.text


def test_dev_figure_before_training_is_the_models_own_zero_shot_figure(tiny_kure_dir, tmp_path):
    # What train.evaluate reports for the untouched model equals the library's own encode + evaluator.
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from train.evaluate import evaluate_run

    ours = evaluate_run(compose_config([f"model.name={tiny_kure_dir}", "model.max_seq_length=64", "data=sts_file",
                                        f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"], "evaluate"), run_dir=tmp_path)
    rows = [json.loads(line) for line in (FIXTURES / "pairs.jsonl").read_text().splitlines() if line.strip()]
    library = EmbeddingSimilarityEvaluator([r["sentence1"] for r in rows], [r["sentence2"] for r in rows],
                                           [r["score"] / 5 for r in rows], main_similarity="cosine")(SentenceTransformer(str(tiny_kure_dir)))
    assert ours["dev"]["spearman_cosine"] == pytest.approx(library["spearman_cosine"], abs=1e-6)
    assert ours["dev"]["pearson_cosine"] == pytest.approx(library["pearson_cosine"], abs=1e-6)


@pytest.fixture(scope="module")
def prompted_run(tiny_model_dir, tmp_path_factory):
    cfg = compose_config(tiny_overrides(tiny_model_dir, "+model.prompts.query=query: ", "+model.prompts.passage=passage: ",
                                        "+data.prompts.sentence1=query", "+data.prompts.sentence2=passage"))
    run_dir = tmp_path_factory.mktemp("prompted")
    return cfg, run_dir, run(cfg, run_dir=run_dir)


def test_prompts_are_saved_and_encode_with_prompt_name_after_training(prompted_run):
    _, run_dir, _ = prompted_run
    model = SentenceTransformer(str(run_dir / "final"))
    assert model.prompts["query"] == "query: " and model.prompts["passage"] == "passage: "
    with_prompt = model.encode(PAIRS, prompt_name="query")
    assert not np.allclose(with_prompt, model.encode(PAIRS), atol=1e-4)
    assert np.allclose(with_prompt, model.encode(["query: " + p for p in PAIRS]), atol=1e-6)


def test_dev_figures_are_taken_with_the_prompts(prompted_run, tmp_path):
    # eval.json's dev figure is the saved model scored with the same prompts (and differs without them).
    from train.evaluate import evaluate_run

    cfg, run_dir, result = prompted_run
    base = [f"checkpoint={run_dir / 'final'}", "data=sts_file", f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"]
    again = evaluate_run(compose_config(base + ["+data.prompts.sentence1=query", "+data.prompts.sentence2=passage"], "evaluate"), run_dir=tmp_path / "a")
    bare = evaluate_run(compose_config(base, "evaluate"), run_dir=tmp_path / "b")
    assert again["dev"]["spearman_cosine"] == pytest.approx(result["dev"]["spearman_cosine"], abs=1e-6)
    assert again["dev"]["pearson_cosine"] != pytest.approx(bare["dev"]["pearson_cosine"], abs=1e-6)


def test_training_tokens_carry_the_prompt(tiny_model_dir, tmp_path):
    from train.data.build import build_corpus
    from train.losses.build import build_loss_from
    from train.tasks.bi_encoder import training_inputs

    cfg = compose_config(tiny_overrides(tiny_model_dir, "+model.prompts.query=query: ", f"data.cache_dir={tmp_path}"))
    model = build_model(cfg.model, cfg.pooling)
    _, spec = build_loss_from(cfg.loss, model)
    corpus = build_corpus(cfg.data, spec.shape)
    plain, _, _ = training_inputs(corpus, model, spec, cfg.trainer)
    prompted, _, _ = training_inputs(corpus, model, spec, cfg.trainer, prompts={"sentence1": "query"})
    prompt_ids = model.tokenizer("query: ", add_special_tokens=False)["input_ids"]
    first, second = prompted[0]["ids_sentence1"], prompted[0]["ids_sentence2"]
    assert first[1 : 1 + len(prompt_ids)] == prompt_ids and len(first) == len(plain[0]["ids_sentence1"]) + len(prompt_ids)
    assert second == plain[0]["ids_sentence2"]


def test_an_unknown_prompt_name_is_refused_with_the_models_prompts(tiny_model_dir, tmp_path):
    cfg = compose_config(tiny_overrides(tiny_model_dir, "+model.prompts.query=query: ", "+data.prompts.sentence1=qeury"))
    with pytest.raises(ConfigError, match="sentence1=qeury names no prompt of the model.*query"):
        run(cfg, run_dir=tmp_path / "run")


def test_pooling_without_the_prompt_matches_the_library(tiny_model_dir, tmp_path):
    # Pooling(include_prompt=False): our batched encode and the training collator skip the prompt's
    # tokens exactly as sentence-transformers' encode does.
    from train.data.batching import Collator, embed_batch
    from train.evaluation.encode import encode
    from train.models.prompts import prompt_length

    finished = make_finished(tiny_model_dir, tmp_path / "instructor", "mean", prompts={"query": "represent the query: "}, include_prompt=False)
    library = SentenceTransformer(str(finished))
    ours = build_model(compose_config([f"model.name={finished}", "model.max_seq_length=64"]).model, compose_config().pooling)
    ours.eval()
    expected = library.encode(PAIRS, prompt_name="query")
    assert np.allclose(encode(ours, PAIRS, 2, prompt="represent the query: "), expected, atol=1e-5)
    assert not np.allclose(expected, library.encode(["represent the query: " + p for p in PAIRS]), atol=1e-4)
    tok = ours.tokenizer
    rows = [{"ids_sentence1": tok("represent the query: " + p)["input_ids"], "ids_sentence2": tok(p)["input_ids"], "score": 0.5} for p in PAIRS]
    collate = Collator(tok.pad_token_id, token_type_ids=True, prompt_lengths={"sentence1": prompt_length(tok, "represent the query: ")})
    with torch.no_grad():
        embedded = embed_batch(ours, collate(rows)).numpy()
    assert np.allclose(embedded[: len(PAIRS)], expected, atol=1e-5)
    assert np.allclose(embedded[len(PAIRS) :], library.encode(PAIRS), atol=1e-5)


@pytest.fixture(scope="module")
def lora_run(tiny_model_no_dropout_dir, tmp_path_factory):
    cfg = compose_config(tiny_overrides(tiny_model_no_dropout_dir, "peft=lora", "peft.r=4", "peft.alpha=8", "peft.dropout=0"))
    run_dir = tmp_path_factory.mktemp("lora")
    return cfg, run_dir, run(cfg, run_dir=run_dir)


def test_peft_lora_brings_its_learning_rate_and_a_command_line_lr_wins():
    assert compose_config(["peft=lora"]).trainer.lr == pytest.approx(5e-4)
    assert compose_config(["peft=lora", "trainer.lr=5e-5"]).trainer.lr == pytest.approx(5e-5)
    assert compose_config([]).trainer.lr == pytest.approx(2e-5)


def test_lora_trains_only_the_adapter_and_final_loads_with_bare_sentence_transformers(lora_run, tiny_model_no_dropout_dir):
    _, run_dir, result = lora_run
    counts = result["parameters"]
    assert 0 < counts["trainable"] < counts["total"] / 10
    assert json.loads((run_dir / "eval.json").read_text())["parameters"] == counts
    assert "LoRA r=4 alpha=8" in (run_dir / "final" / "README.md").read_text()
    final = run_dir / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(float(t.abs().max()) > 0 for k, t in adapter.items() if "lora_B" in k), "the adapter trained"
    model = SentenceTransformer(str(final))
    base = SentenceTransformer(str(tiny_model_no_dropout_dir))
    assert not np.allclose(model.encode(PAIRS), base.encode(PAIRS), atol=1e-5)


def test_lora_resume_from_a_checkpoint_ends_identical(lora_run, tmp_path):
    cfg, run_dir, result = lora_run
    resumed_dir = tmp_path / "resumed"
    resumed = resume_from_checkpoint(cfg, run_dir, resumed_dir)
    assert_same_weights(run_dir / "final" / "adapter_model.safetensors", resumed_dir / "final" / "adapter_model.safetensors")
    assert resumed["dev"]["spearman_cosine"] == pytest.approx(result["dev"]["spearman_cosine"], abs=1e-6)


def test_peft_merge_writes_a_plain_model_that_encodes_as_the_adapter_did(lora_run, tmp_path):
    cfg, run_dir, _ = lora_run
    cfg = cfg.copy()
    cfg.peft.merge = True
    run(cfg, run_dir=tmp_path / "merged")
    final = tmp_path / "merged" / "final"
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()
    merged = SentenceTransformer(str(final))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert np.allclose(merged.encode(PAIRS), SentenceTransformer(str(run_dir / "final")).encode(PAIRS), atol=1e-5)


def test_cross_encoder_lora_trains_and_saves_its_head(tiny_model_dir, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    cfg = compose_config(tiny_overrides(tiny_model_dir, "task=cross_encoder", "peft=lora", "peft.r=4"))
    result = run(cfg, run_dir=tmp_path / "run")
    final = tmp_path / "run" / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"]
    model = CrossEncoder(str(final))
    scores = model.predict([(PAIRS[0], PAIRS[1]), (PAIRS[0], PAIRS[0])])
    assert scores.shape == (2,) and result["parameters"]["trainable"] < result["parameters"]["total"] / 5


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_no_dropout_dir):
    cfg = compose_config([f"model.name={tiny_model_no_dropout_dir}", "model.max_seq_length=64"])
    grads = []
    for checkpointing in (False, True):
        cfg.model.gradient_checkpointing = checkpointing
        model = build_model(cfg.model, cfg.pooling)
        model.train()
        assert model[0].auto_model.is_gradient_checkpointing == checkpointing
        features = model.tokenize(PAIRS)
        model(features)["sentence_embedding"].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_bf16_weights_train_and_the_adapter_stays_fp32(tiny_model_dir, tmp_path):
    cfg = compose_config(tiny_overrides(tiny_model_dir, "model.dtype=bfloat16", "peft=lora", "peft.r=4", "trainer.max_steps=2"))
    model = build_model(cfg.model, cfg.pooling, peft=cfg.peft)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    result = run(cfg, run_dir=tmp_path / "run")
    assert np.isfinite(result["dev"]["spearman_cosine"]) or np.isnan(result["dev"]["spearman_cosine"])
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def test_a_qwen3_decoder_trains_with_last_token_pooling_checkpointing_and_lora(tiny_qwen3_embedding_dir, tmp_path):
    # Qwen3-Embedding's layout: left padding, <|endoftext|> appended by the tokenizer, the sentence's
    # embedding that token's. The token cache keeps both; the query prompt is applied to sentence1.
    cfg = compose_config(tiny_overrides(tiny_qwen3_embedding_dir, "model=qwen3_embedding_0_6b", f"model.name={tiny_qwen3_embedding_dir}",
                                        "model.max_seq_length=64", "model.gradient_checkpointing=true", "peft=lora", "peft.r=4",
                                        "+data.prompts.sentence1=query", f"data.cache_dir={tmp_path / 'cache'}"))
    model = build_model(cfg.model, cfg.pooling, peft=cfg.peft)
    assert model.tokenizer.padding_side == "left" and model[1].pooling_mode == "lasttoken"
    eot = model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    from train.data.build import build_corpus
    from train.losses.build import build_loss_from
    from train.tasks.bi_encoder import training_inputs

    _, spec = build_loss_from(cfg.loss, model)
    rows, collate, _ = training_inputs(build_corpus(cfg.data, spec.shape), model, spec, cfg.trainer, prompts={"sentence1": "query"})
    assert rows[0]["ids_sentence1"][-1] == eot and rows[0]["ids_sentence2"][-1] == eot
    assert model.tokenizer.decode(rows[0]["ids_sentence1"]).startswith(QWEN3_QUERY_PROMPT)
    chunk = collate([rows[i] for i in range(4)])["chunks"][0]
    assert (chunk["attention_mask"][:, -1] == 1).all(), "left padding: every sequence ends at the last position"

    result = run(cfg, run_dir=tmp_path / "run")
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists() and result["parameters"]["trainable"] < result["parameters"]["total"]
    trained = SentenceTransformer(str(final))
    assert trained.prompts["query"] == QWEN3_QUERY_PROMPT and trained.tokenizer.padding_side == "left"
    from train.evaluation.encode import encode

    ours = build_model(compose_config([f"model.name={final}", "model.max_seq_length=64"]).model, compose_config().pooling)
    assert np.allclose(encode(ours, PAIRS, 2, prompt=QWEN3_QUERY_PROMPT), trained.encode(PAIRS, prompt_name="query"), atol=1e-5)


@pytest.mark.parametrize("preset,fixture,task", [
    ("bge_m3", "tiny_kure_dir", "bi_encoder"),
    ("kure_v1", "tiny_kure_dir", "bi_encoder"),
    ("e5_large_instruct", "tiny_kure_dir", "bi_encoder"),
    ("qwen3_embedding_0_6b", "tiny_qwen3_embedding_dir", "bi_encoder"),
    ("bge_reranker_v2_m3", "tiny_kure_dir", "cross_encoder"),
])
def test_each_preset_runs_on_a_tiny_model_of_its_architecture(preset, fixture, task, request, tmp_path):
    import yaml

    from tests.conftest import CONF

    preset_file = yaml.safe_load((CONF / "model" / f"{preset}.yaml").read_text())
    composed = compose_config([f"model={preset}", f"task={task}"])
    assert composed.model.name == preset_file["name"] and composed.model.max_seq_length == 512
    model_dir = request.getfixturevalue(fixture)
    extra = ["+data.prompts.sentence1=sts", "+data.prompts.sentence2=sts"] if preset == "e5_large_instruct" else []
    cfg = compose_config(tiny_overrides(model_dir, f"model={preset}", f"task={task}", f"model.name={model_dir}", "model.max_seq_length=64",
                                        "trainer.max_steps=2", *extra))
    result = run(cfg, run_dir=tmp_path / "run")
    assert result["steps"] == 2 and (tmp_path / "run" / "final" / "modules.json").exists()
    if preset == "e5_large_instruct":
        saved = SentenceTransformer(str(tmp_path / "run" / "final"))
        assert saved.prompts["sts"].startswith("Instruct: Retrieve semantically similar text.")


@pytest.mark.parametrize("setting", ["peft=lora", "model.dtype=bfloat16", "model.gradient_checkpointing=true", "+data.prompts.text=query"])
def test_settings_of_text_models_are_refused_for_image_text(setting):
    # Not silently ignored: the image–text models are built without them.
    from train.config.checks import check_train_config

    with pytest.raises(ConfigError, match="task=image_text"):
        check_train_config(compose_config(["task=image_text", setting]))
