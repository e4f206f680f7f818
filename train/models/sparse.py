"""task=sparse: sentence-transformers' SparseEncoder, from a bare backbone or a saved sparse model.

- splade: the backbone with its masked-LM head (a fresh head where the checkpoint has none: its
  decoder is tied to the word embeddings), max-pooled over tokens after log(1 + ReLU): a weight a
  vocabulary token.
- inference_free: a Router. Documents take the SPLADE path; a query is its tokens' learned weights
  (SparseStaticEmbedding), so a query costs a tokenizer and no forward pass.
- csr: a dense model (Transformer + mean pooling, or a saved bi-encoder) with a top-k sparse
  autoencoder over its embedding (SparseAutoEncoder, hidden 4× the embedding size).
A folder that is already a SparseEncoder (its modules.json names a sparse module) is trained as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.models.sources import load_backbone, load_from_sources

SPARSE_MODULES = ("SpladePooling", "SparseStaticEmbedding", "SparseAutoEncoder", "CSRSparsity")


def is_sparse_folder(path: str | Path) -> bool:
    """A saved SparseEncoder: its modules (or a Router's routes) include a sparse module."""
    path = Path(path).expanduser()
    config = path / "config_sentence_transformers.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "SparseEncoder":
        return True
    texts = [p.read_text() for p in [path / "modules.json", path / "router_config.json"] if p.is_file()]
    return any(m in t for t in texts for m in SPARSE_MODULES)


def query_route(model: Any) -> list | None:
    """The modules of a Router's query route (inference-free SPLADE), or None: not a routed model."""
    model = getattr(model, "module", model)  # DDP's wrapper
    routes = getattr(model[0], "sub_modules", None)
    return list(routes["query"]) if routes and "query" in routes else None


def is_inference_free(model: Any) -> bool:
    """A query route without a transformer: a query costs no forward pass (and gets no FLOPS term)."""
    route = query_route(model)
    return route is not None and not any(hasattr(m, "auto_model") for m in route)


def build_sparse_encoder(
    name: str,
    max_seq_length: int = 256,
    architecture: str = "splade",
    offline_package: str | None = None,
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    csr_k: int = 256,
):
    from sentence_transformers import SparseEncoder

    def saved(source: str, local_only: bool):
        model = SparseEncoder(source, device=device, local_files_only=local_only, trust_remote_code=trust_remote_code,
                              model_kwargs=model_kwargs or None)
        model.max_seq_length = max_seq_length
        return model

    if is_sparse_folder(name):
        return load_from_sources(name, offline_package, saved, "the sparse encoder")
    if architecture == "csr":
        return _csr(name, max_seq_length, offline_package, model_kwargs, trust_remote_code, device, csr_k)
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling
    from sentence_transformers.sentence_transformer.modules import Router

    mlm = load_backbone(name, max_seq_length, offline_package, head={"transformer_task": "fill-mask"}, model_kwargs=model_kwargs,
                        trust_remote_code=trust_remote_code)
    document = [mlm, SpladePooling(pooling_strategy="max", activation_function="relu")]
    if architecture == "inference_free":
        router = Router.for_query_document(query_modules=[SparseStaticEmbedding(tokenizer=mlm.tokenizer, frozen=False)], document_modules=document)
        return SparseEncoder(modules=[router], similarity_fn_name="dot", device=device)
    return SparseEncoder(modules=document, device=device)


def _csr(name, max_seq_length, offline_package, model_kwargs, trust_remote_code, device, k):
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sentence_transformer.modules import Pooling
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    from train.models.bi_encoder import build_sentence_transformer

    dense = build_sentence_transformer(name, max_seq_length, "mean", offline_package=offline_package, model_kwargs=model_kwargs,
                                       trust_remote_code=trust_remote_code, device=device)
    modules = [m for m in dense if type(m).__name__ != "Normalize"]  # the autoencoder reads the raw pooled embedding
    dim = next(m for m in modules if isinstance(m, Pooling)).get_embedding_dimension()
    if k > 4 * dim:
        from train.errors import ConfigError

        raise ConfigError(f"model.csr_k={k}: a code of {name}'s {dim}-dimension embedding has {4 * dim} dimensions; keep at most that many "
                          f"(e.g. model.csr_k={min(256, dim)}).")
    modules.append(SparseAutoEncoder(input_dim=dim, hidden_dim=4 * dim, k=k, k_aux=2 * k))
    return SparseEncoder(modules=modules, device=device)
