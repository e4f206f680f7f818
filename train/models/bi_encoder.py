"""The bi-encoder as a SentenceTransformer: a finished sentence-transformers model as it is, or a
bare transformer with a pooling layer (and Normalize).

A model that has `modules.json` is a finished sentence-transformers model (bge-m3, KURE-v1, e5,
Qwen3-Embedding, MiniLM): it is trained with all its modules (pooling, Dense, Normalize), its
prompts and its similarity function, so that the model that trains is the model the user started
from. `pooling.mode` and `model.normalize` build the head of a bare transformer; on a finished
model they apply only with `replace_pooling` (`pooling.replace=true`).
"""

from __future__ import annotations

import logging
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

from train.errors import ConfigError, ModelLoadError
from train.models.sources import load_transformer, check_max_seq_length, has_file, load_from_sources

log = logging.getLogger("train")


def describe(model: SentenceTransformer) -> str:
    """The module chain as one line: Transformer(BertModel) -> Pooling(cls) -> Normalize."""
    parts = []
    for module in model:
        name = type(module).__name__
        if name == "Transformer":
            name += f"({type(module.auto_model).__name__})"
        elif isinstance(module, Pooling):
            name += f"({module.pooling_mode}{'' if module.include_prompt else ', prompt excluded'})"
        parts.append(name)
    return " -> ".join(parts)


def _pooling(model: SentenceTransformer) -> tuple[int, Pooling] | None:
    return next(((i, m) for i, m in enumerate(model) if isinstance(m, Pooling)), None)


def _replace_head(model: SentenceTransformer, pooling_mode: str, normalize: bool, include_prompt: bool) -> SentenceTransformer:
    """The finished model with its pooling swapped for `pooling_mode` and Normalize as `normalize`
    says; modules between (Dense) are kept."""
    found = _pooling(model)
    modules = list(model)
    if found is None:
        raise ModelLoadError("pooling.replace=true: the model has no Pooling module to replace.")
    index, old = found
    modules[index] = Pooling(old.get_embedding_dimension(), pooling_mode=pooling_mode, include_prompt=include_prompt)
    modules = [m for m in modules if not isinstance(m, Normalize)] + ([Normalize()] if normalize else [])
    return SentenceTransformer(
        modules=modules, prompts=dict(model.prompts), default_prompt_name=model.default_prompt_name,
        similarity_fn_name=model.similarity_fn_name, device=str(model.device),
    )


def build_sentence_transformer(
    name: str,
    max_seq_length: int = 128,
    pooling_mode: str = "mean",
    normalize: bool = False,
    offline_package: str | None = None,
    attn_implementation: str | None = None,
    replace_pooling: bool = False,
    include_prompt: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    chosen: frozenset[str] = frozenset(),
    refuse_unapplied: bool = False,
    keep_own_max_seq_length: bool = False,
) -> SentenceTransformer:
    """The bi-encoder the loop trains. `prompts` (name -> text) are added to the model's own (a name
    given here wins) and saved with it; `default_prompt_name` replaces the model's own default
    ("" = none). `model_kwargs`: transformers' from_pretrained arguments (dtype, ...).
    `chosen`: the head settings the user set (pooling.mode, pooling.include_prompt, model.normalize);
    on a finished model without `replace_pooling`, one that differs from the model's own head is
    a WARNING naming it and pooling.replace=true, or a ConfigError with `refuse_unapplied` (a sweep).
    `keep_own_max_seq_length`: a finished model keeps its own max_seq_length (train.evaluate)."""
    kwargs = {**(model_kwargs or {}), **({"attn_implementation": attn_implementation} if attn_implementation else {})}

    def load(source: str, local_only: bool):
        if has_file(source, local_only, "modules.json"):
            return SentenceTransformer(source, local_files_only=local_only, model_kwargs=kwargs or None, trust_remote_code=trust_remote_code, device=device)
        return load_transformer(source, max_seq_length, kwargs, local_only, trust_remote_code=trust_remote_code)

    loaded = load_from_sources(name, offline_package, load, "the model")
    if isinstance(loaded, SentenceTransformer):
        model = _finished(loaded, name, pooling_mode, normalize, replace_pooling, include_prompt)
        _unapplied_head_settings(model, name, pooling_mode, normalize, include_prompt, replace_pooling, chosen, refuse_unapplied)
    else:
        modules = [loaded, Pooling(loaded.get_embedding_dimension(), pooling_mode=pooling_mode, include_prompt=include_prompt)]
        model = SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device=device)
    transformer = model[0]
    if not hasattr(transformer, "auto_model"):
        raise ModelLoadError(f"model.name={name}: its first module is {type(transformer).__name__}, not a transformer; only transformer models train here.")
    if keep_own_max_seq_length and isinstance(loaded, SentenceTransformer):
        max_seq_length = transformer.max_seq_length
    if transformer.max_seq_length != max_seq_length:
        if isinstance(loaded, SentenceTransformer):
            log.info("max_seq_length %d (model.max_seq_length; the model's own: %s)", max_seq_length, transformer.max_seq_length)
        model.max_seq_length = max_seq_length
    check_max_seq_length(transformer, name, max_seq_length)
    model.prompts.update(prompts or {})
    if default_prompt_name is not None:
        model.default_prompt_name = default_prompt_name or None
    if model.default_prompt_name and model.default_prompt_name not in model.prompts:
        raise ModelLoadError(f"model.default_prompt_name={model.default_prompt_name}: no such prompt (the model's prompts: {', '.join(model.prompts) or 'none'}).")
    return model


def _finished(model: SentenceTransformer, name: str, pooling_mode: str, normalize: bool, replace: bool, include_prompt: bool) -> SentenceTransformer:
    found = _pooling(model)
    own = found[1].pooling_mode if found else None
    if replace:
        before = describe(model)
        model = _replace_head(model, pooling_mode, normalize, include_prompt)
        log.warning("pooling.replace=true: %s's own head %s is replaced: %s", name, before, describe(model))
        return model
    prompts = ", ".join(f"{k}={v!r}" for k, v in model.prompts.items() if v) or "none"
    ignored = []
    if own is not None and own != pooling_mode:
        ignored.append(f"pooling={pooling_mode}")
    if normalize and not any(isinstance(m, Normalize) for m in model):
        ignored.append("model.normalize=true")
    log.info(
        "%s is a finished sentence-transformers model, trained as it is: %s; prompts: %s; similarity: %s%s",
        name, describe(model), prompts, model.similarity_fn_name or "cosine",
        f". Not applied: {', '.join(ignored)} (pooling.replace=true replaces its pooling)" if ignored else "",
    )
    return model


def _unapplied_head_settings(model: SentenceTransformer, name: str, pooling_mode: str, normalize: bool, include_prompt: bool,
                             replace: bool, chosen: frozenset[str], refuse: bool) -> None:
    """A head setting the user chose that the finished model does not take (it keeps its own):
    a WARNING with the key, the model's own value and the fix; refused (ConfigError) in a sweep,
    where runs that differ only by it would be the same model under different labels."""
    if replace:
        return
    found = _pooling(model)
    has_normalize = any(isinstance(m, Normalize) for m in model)
    unapplied = []
    if found is not None and "pooling.mode" in chosen and found[1].pooling_mode != pooling_mode:
        unapplied.append(f"pooling.mode={pooling_mode} (the model pools by {found[1].pooling_mode})")
    if found is not None and "pooling.include_prompt" in chosen and found[1].include_prompt != include_prompt:
        unapplied.append(f"pooling.include_prompt={str(include_prompt).lower()} (the model's own: {str(found[1].include_prompt).lower()})")
    if "model.normalize" in chosen and has_normalize != normalize:
        unapplied.append(f"model.normalize={str(normalize).lower()} (the model {'has' if has_normalize else 'has no'} Normalize module)")
    if not unapplied:
        return
    message = (
        f"{', '.join(unapplied)}: not applied. {name} is a finished sentence-transformers model and keeps its own "
        f"head ({describe(model)}); add pooling.replace=true to replace it with the setting"
        + (", or leave the setting out." if not refuse else
           ". Refused in a sweep: its runs would train the same model under different labels.")
    )
    if refuse:
        raise ConfigError(message)
    log.warning("%s", message)
