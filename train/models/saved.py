"""A saved model folder back into the model it was: which kind it is, and loading it."""

from __future__ import annotations

from pathlib import Path

from sentence_transformers import SentenceTransformer

from train.errors import ModelLoadError
from train.models.sources import refuse_custom_code
from train.models.token_types import fit_token_types


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
    """`cross_encoder`, `sparse`, `multi_vector`, `image_text` or `bi_encoder`, from the sentence-transformers configs a saved model carries."""
    import json

    path = Path(path)
    config = path / "config_sentence_transformers.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type == "CrossEncoder":
        return "cross_encoder"
    if model_type == "SparseEncoder":
        return "sparse"
    if model_type == "MultiVectorEncoder":
        return "multi_vector"
    return "image_text" if _has_image_encoder(path) else "bi_encoder"


def load_saved_model(path: str | Path, trust_remote_code: bool = False):
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

            model = CrossEncoder(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        elif saved_model_kind(path) == "sparse":
            from sentence_transformers import SparseEncoder

            model = SparseEncoder(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        elif saved_model_kind(path) == "multi_vector":
            from sentence_transformers import MultiVectorEncoder

            model = MultiVectorEncoder(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
        else:
            model = SentenceTransformer(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:
        refuse_custom_code(str(path), e, key="checkpoint")
        raise ModelLoadError(f"checkpoint={path}: could not be loaded ({type(e).__name__}: {e}).") from None
    fit_token_types(model)  # a model saved elsewhere (or before this fix) with a BERT tokenizer on RoBERTa
    return model
