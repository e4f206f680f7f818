"""The typed schemas of the commands other than training (train.evaluate, train.mine,
train.retrieve, train.score, train.push, train.export), stored in Hydra's ConfigStore by schema.register_configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING


from train.config.choices import ExportBackend, ExportQuantize, Fusion, RetrieveCorpus, SamplingStrategy, SearchBackend, SearchPrecision
from train.config.schema import DataConfig, ModelConfig, PoolingConfig


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
    # quantized corpus (kept in the data cache), 4× or 32× smaller; faiss searches it fastest.
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
    # A saved bi-encoder dir: with a sparse checkpoint on retrieval data, adds the bi-encoder's row and the
    # hybrid of the two (fusion; fusion_weight is the sparse model's share).
    dense: Optional[str] = None


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


# `python -m train.push <dir> repo=<id>`: a saved model (a run's final/, or the run dir) to the Hub.
@dataclass
class PushConfig:
    # The model folder (or run dir: its final/); the first argument stands for dir=.
    dir: str = MISSING
    # The Hub repo id, owner/name (or name: under the token's user); created if missing.
    repo: str = MISSING
    # A new repo is private (an existing repo keeps its visibility).
    private: bool = False
    # A branch to push to (created if missing); null: main.
    revision: Optional[str] = None
    # The commit's message; null: "Add model from <dir>".
    commit_message: Optional[str] = None
    # Also upload a checkpoint's training state (accelerate_state/: optimizer, scheduler, random states).
    training_state: bool = False
    # Print what would be uploaded and stop: no Hub call.
    dry_run: bool = False


# `python -m train.export <dir> [backend=onnx] [quantize=...] [optimize=...]`: a saved model to an inference backend.
@dataclass
class ExportConfig:
    # The model folder (or run dir: its final/); the first argument stands for dir=.
    dir: str = MISSING
    # onnx (optimum + onnxruntime). openvino is refused with the reason (optimum-intel's transformers pin).
    backend: ExportBackend = ExportBackend.onnx
    # none, int8_dynamic, or int8_static (calibrated on calibration_samples texts of the data option's train split).
    quantize: ExportQuantize = ExportQuantize.none
    # The int8 preset: auto (this CPU's: avx512_vnni, avx512, avx2 or arm64) or one of those.
    quantize_config: str = "auto"
    # ONNX Runtime graph optimization: null, O1, O2, O3 (O2 with GELU approximation) or O4 (O3 in fp16, for GPUs).
    optimize: Optional[str] = None
    # A Matryoshka model's embeddings cut to this size; written into a copy of the model (out=, or <dir>-dim<N>).
    truncate_dim: Optional[int] = None
    # Where the variants go: null, the model folder itself (onnx/ beside the weights, as Hub repos keep them).
    out: Optional[str] = None
    # The texts int8_static calibrates on (train split) and the check compares on (test, else dev, else train).
    data: DataConfig = field(default_factory=DataConfig)
    # int8_static: how many distinct texts of the data's train split calibrate the activation ranges.
    calibration_samples: int = 300
    # Texts on which each variant is compared with the torch model (cosine; a cross-encoder: score difference).
    check_samples: int = 256
    # Export again a variant file that exists (it is kept otherwise).
    overwrite: bool = False
