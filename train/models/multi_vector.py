"""task=multi_vector: ColBERT (sentence-transformers' MultiVectorEncoder), from a bare backbone or a
saved multi-vector model.

A bare backbone gets the modules the library gives one: its token embeddings, a linear projection
without bias to `dim` (128, ColBERT's), the scoring mask (MultiVectorMask) and unit length a token
vector. Queries are cut to `query_length` tokens and documents to `document_length` (null: the
model's max_seq_length); with `query_expansion`, a query is padded to `query_length` with [MASK]
tokens that the scoring counts (ColBERT's query augmentation), as the library's
`Transformer.query_expansion` does it. Query and document markers are the model's "query" and
"document" prompts (model.prompts), which encode_query / encode_document apply.
A folder that is already a MultiVectorEncoder is trained as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.models.sources import load_backbone, load_from_sources


def is_multi_vector_folder(path: str | Path) -> bool:
    """A saved MultiVectorEncoder: its config names the model type, or its modules include the scoring mask."""
    path = Path(path).expanduser()
    config = path / "config_sentence_transformers.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "MultiVectorEncoder":
        return True
    modules = path / "modules.json"
    return modules.is_file() and "MultiVectorMask" in modules.read_text()


def expansion(transformer: Any) -> dict | None:
    """The transformer module's query expansion ({strategy, attend, length, token}), or None."""
    return getattr(transformer, "query_expansion", None)


def build_multi_vector_encoder(
    name: str,
    max_seq_length: int = 256,
    dim: int = 128,
    query_length: int | None = 32,
    document_length: int | None = None,
    query_expansion: bool = True,
    prompts: dict[str, str] | None = None,
    offline_package: str | None = None,
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
):
    from sentence_transformers import MultiVectorEncoder

    if is_multi_vector_folder(name):
        def saved(source: str, local_only: bool):
            model = MultiVectorEncoder(source, device=device, local_files_only=local_only, trust_remote_code=trust_remote_code,
                                       model_kwargs=model_kwargs or None)
            model.max_seq_length = max_seq_length
            if prompts:
                model.prompts.update(prompts)
            return model

        return load_from_sources(name, offline_package, saved, "the multi-vector encoder")
    from torch import nn
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    transformer = load_backbone(name, max_seq_length, offline_package, model_kwargs=model_kwargs, trust_remote_code=trust_remote_code)
    transformer.query_length = query_length
    transformer.document_length = document_length
    if query_expansion:
        if query_length is None:
            from train.errors import ConfigError

            raise ConfigError("model.query_expansion=true pads queries to model.query_length tokens: set model.query_length (ColBERT: 32).")
        transformer.query_expansion = {"strategy": "fixed", "attend": False, "length": query_length}
    projection = Dense(in_features=transformer.get_embedding_dimension(), out_features=dim, bias=False,
                       activation_function=nn.Identity(), module_input_name="token_embeddings")
    return MultiVectorEncoder(modules=[transformer, projection, MultiVectorMask(), Normalize(module_input_name="token_embeddings")],
                              prompts=prompts or None, device=device)
