"""The choices of the typed schema (train/config/schema.py): each an Enum whose values are what a
key accepts, so that Hydra names the valid values when one is misspelt."""

from __future__ import annotations

from enum import Enum


class PoolingMode(str, Enum):
    # The values are sentence-transformers' own pooling mode names.
    cls = "cls"
    mean = "mean"
    max = "max"
    mean_sqrt_len_tokens = "mean_sqrt_len_tokens"
    weightedmean = "weightedmean"
    lasttoken = "lasttoken"


class TaskName(str, Enum):
    # What kind of model trains: a bi-encoder (one embedding a text, cosine compares them) or a
    # cross-encoder (both texts through one model, one score out; a reranker).
    bi_encoder = "bi_encoder"
    cross_encoder = "cross_encoder"
    # Images and texts into one space (CLIP): a CLIP-architecture model or a text and an image tower.
    image_text = "image_text"
    # A sparse vector a text over the vocabulary (SPLADE, inference-free SPLADE) or a sparse code
    # of a dense embedding (CSR): sentence-transformers' SparseEncoder; dot product compares them.
    sparse = "sparse"
    # A vector a token (ColBERT, late interaction): sentence-transformers' MultiVectorEncoder;
    # MaxSim compares them (each query token's best document token, summed).
    multi_vector = "multi_vector"


class BadRowPolicy(str, Enum):
    error = "error"
    skip = "skip"


class WeightDtype(str, Enum):
    # The dtype the weights are loaded and kept in (transformers' `dtype`). null: as saved in fp32.
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PeftMethod(str, Enum):
    none = "none"
    lora = "lora"


class SearchBackend(str, Enum):
    # Exact inner-product search over the corpus vectors: faiss's flat index (pip install faiss-cpu),
    # torch (chunks of the memory-mapped vector file), or auto: faiss when it is installed.
    auto = "auto"
    faiss = "faiss"
    torch = "torch"


class SearchPrecision(str, Enum):
    # The corpus vectors a search scores: float32 (exact), int8 (1 byte a dimension, per-dimension
    # ranges from the corpus) or ubinary (1 bit a dimension: the sign; Hamming distance), as
    # sentence-transformers' quantize_embeddings makes them.
    float32 = "float32"
    int8 = "int8"
    ubinary = "ubinary"


class SamplingStrategy(str, Enum):
    # sentence-transformers' names: the best-ranked candidates that pass the filters, or a random draw of them.
    top = "top"
    random = "random"


class RetrieveCorpus(str, Enum):
    # The documents searched: every distinct relevant candidate of the split (NLI: entailed
    # hypotheses), or all candidates (NLI: contradicted hypotheses too, as distractors).
    positives = "positives"
    all = "all"


class Fusion(str, Enum):
    rrf = "rrf"
    score = "score"


class MixtureSampling(str, Enum):
    # sentence-transformers' multi-dataset samplers: every batch of every dataset once an epoch in
    # a random order (so in proportion to their sizes, times `weight`), or one batch of each in turn
    # until the smallest runs out.
    proportional = "proportional"
    round_robin = "round_robin"


class ExportBackend(str, Enum):
    # The inference backend sentence-transformers loads the export with (backend=...).
    onnx = "onnx"
    openvino = "openvino"


class ExportQuantize(str, Enum):
    # none: fp32 weights. int8_dynamic: int8 weights, activations quantized as they come (no data).
    # int8_static: activations' ranges calibrated beforehand on texts of the data option.
    none = "none"
    int8_dynamic = "int8_dynamic"
    int8_static = "int8_static"


class SparseArchitecture(str, Enum):
    # task=sparse. splade: the backbone's masked-LM head, max-pooled over tokens (any masked-LM backbone).
    # inference_free: SPLADE for documents, a learned weight a vocabulary token for queries (no
    # forward pass a query). csr: a sparse autoencoder (top-k) on a dense model's pooled embedding.
    splade = "splade"
    inference_free = "inference_free"
    csr = "csr"
