"""Image–text models: images and texts into one vector space, compared by cosine.

Two layouts, both saved in sentence-transformers' own format (bare `SentenceTransformer(dir)`
loads them and `encode` takes PIL images and strings):
- one CLIP-architecture model (CLIP, SigLIP, ...): sentence-transformers' `Transformer` calls its
  `get_text_features` / `get_image_features` by the input's modality;
- a dual encoder: a text model and a separate image model, each pooled and projected into one
  space, behind sentence-transformers' `Router`, which picks the route by modality (the layout
  of KoCLIP: a Korean text tower beside an image tower). The image tower is a vision model from
  the Hub or a folder, or a ViT built from a config and trained from scratch (`scratch`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Router, Transformer

from train.errors import ConfigError, ModelLoadError
from train.models.sources import load_backbone

log = logging.getLogger(__name__)

SCRATCH = "scratch"
# A ViT for 28×28 grey images (Fashion-MNIST): 7×7 patches of 4 pixels.
SCRATCH_VIT_DEFAULTS = {
    "image_size": 28,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 3,
    "intermediate_size": 768,
}
# CLIP's and SigLIP's parameter prefixes of each tower (a single-model image–text layout).
TOWER_PREFIXES = {"text": ("text_model", "text_projection"), "image": ("vision_model", "visual_projection")}


def scratch_vit_dir(config: dict[str, Any], into: Path) -> Path:
    """A randomly initialised ViT (seeded by the caller) and its image processor, saved so
    sentence-transformers' Transformer can load it like any vision model."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    settings = {**SCRATCH_VIT_DEFAULTS, **config}
    unknown = set(settings) - set(ViTConfig().to_dict())
    if unknown:
        raise ConfigError(f"model.image_config: unknown ViT settings {sorted(unknown)}")
    vit_config = ViTConfig(**settings)
    # Not ViTModel.save_pretrained: under torch.distributed transformers writes the weights on rank 0
    # only, and every process builds its own tower (alike, from the seed) into its own folder.
    from safetensors.torch import save_file

    vit_config.save_pretrained(into)
    save_file(ViTModel(vit_config).state_dict(), str(into / "model.safetensors"), metadata={"format": "pt"})
    size = vit_config.image_size
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(into)
    return into


def _image_tower(name: str, config: dict[str, Any], attn_implementation: str | None, trust_remote_code: bool = False) -> Transformer:
    if name != SCRATCH:
        return load_backbone(name, 0, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    with tempfile.TemporaryDirectory() as tmp:
        # Loaded into memory here; the saved model later carries its own copy.
        return Transformer(str(scratch_vit_dir(config, Path(tmp))), model_kwargs={"local_files_only": True})


def build_dual_encoder(
    text_name: str,
    image_name: str,
    max_seq_length: int,
    text_pooling: str = "mean",
    image_pooling: str = "cls",
    projection_dim: int | None = None,
    offline_package: str | None = None,
    image_config: dict[str, Any] | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
) -> SentenceTransformer:
    """Text tower -> pooling [-> projection] and image tower -> pooling -> projection, by modality.
    projection_dim None: the text tower's own space is the shared one (only the image tower is
    projected into it), so a pretrained text encoder keeps its geometry (LiT's locked text)."""
    text = load_backbone(text_name, max_seq_length, offline_package, attn_implementation, trust_remote_code=trust_remote_code)
    image = _image_tower(image_name, image_config or {}, attn_implementation, trust_remote_code)
    if "image" not in image.modalities:
        raise ModelLoadError(f"model.image_tower={image_name}: not a vision model (it takes {image.modalities})")
    text_dim, image_dim = text.get_embedding_dimension(), image.get_embedding_dimension()
    dim = projection_dim or text_dim
    text_route: list[Any] = [text, Pooling(text_dim, text_pooling)]
    if projection_dim:
        text_route.append(Dense(text_dim, dim, activation_function=None))
    # A CLIP-like image tower already gives one vector an image; a plain vision model gives tokens.
    pooled = [Pooling(image_dim, image_pooling)] if image.module_output_name == "token_embeddings" else []
    image_route = [image, *pooled, Dense(image_dim, dim, activation_function=None)]
    return SentenceTransformer(modules=[Router(sub_modules={"text": text_route, "image": image_route}), Normalize()], device=device)


def build_joint_model(
    name: str, max_seq_length: int, offline_package: str | None = None, attn_implementation: str | None = None, trust_remote_code: bool = False,
    device: str | None = None,
) -> SentenceTransformer:
    """One CLIP-architecture model (Hub id or folder), or a saved image–text SentenceTransformer."""
    local = Path(name).expanduser()
    if (local / "modules.json").exists():
        return SentenceTransformer(str(local), local_files_only=True, trust_remote_code=trust_remote_code, device=device)
    transformer = load_backbone(name, max_seq_length, offline_package, attn_implementation, trust_remote_code=trust_remote_code)
    if not {"text", "image"} <= set(transformer.modalities):
        raise ModelLoadError(
            f"model.name={name}: takes {transformer.modalities}, not both text and images. For a text model, "
            "pair it with an image tower: model.image_tower=<vision model or 'scratch'>."
        )
    return SentenceTransformer(modules=[transformer, Normalize()], device=device)


def tower_parameters(model: SentenceTransformer, tower: str) -> list[torch.nn.Parameter]:
    """The parameters of the text or image tower (its encoder, pooling and projection)."""
    first = model[0]
    if isinstance(first, Router):
        return [p for module in first.sub_modules[tower] for p in module.parameters()]
    return [p for n, p in first.named_parameters() if any(part in n.split(".") for part in TOWER_PREFIXES[tower])]


def freeze_towers(model: SentenceTransformer, text: bool, image: bool) -> None:
    """LiT-style locked tuning: a frozen tower gets no gradient and no optimizer state."""
    for tower, frozen in (("text", text), ("image", image)):
        if not frozen:
            continue
        params = tower_parameters(model, tower)
        if not params:
            raise ConfigError(f"model.freeze_{tower}=true: found no {tower} tower parameters in this model")
        for p in params:
            p.requires_grad_(False)
        log.info("Frozen %s tower: %d parameters", tower, sum(p.numel() for p in params))


def is_image_text(model: Any) -> bool:
    return isinstance(model, SentenceTransformer) and "image" in model.modalities


def _modules_with(model: SentenceTransformer, modality: str) -> list[Transformer]:
    return [m for m in model.modules() if isinstance(m, Transformer) and modality in m.modalities]


def image_processor_of(model: SentenceTransformer) -> Any:
    """The image preprocessing of the model's image encoder (resize, normalise -> pixel_values)."""
    found = _modules_with(model, "image")
    if not found:
        raise ModelLoadError("the model has no image encoder")
    processor = found[0].processor
    return getattr(processor, "image_processor", processor)


def text_encoder_of(model: SentenceTransformer) -> Transformer:
    found = _modules_with(model, "text")
    if not found:
        raise ModelLoadError("the model has no text encoder")
    return found[0]


def build_image_text_model(
    name, max_seq_length, pooling_mode, normalize, offline_package, attn_implementation,
    image_tower=None, image_config=None, image_pooling="cls", projection_dim=None, freeze_text=False, freeze_image=False,
    trust_remote_code=False, device=None,
) -> SentenceTransformer:
    """A dual encoder (`image_tower` beside `name`) or one CLIP-architecture model, towers frozen as asked."""
    if image_tower:
        model = build_dual_encoder(
            name, image_tower, max_seq_length, pooling_mode, image_pooling, projection_dim, offline_package,
            image_config, attn_implementation, trust_remote_code, device,
        )
    else:
        model = build_joint_model(name, max_seq_length, offline_package, attn_implementation, trust_remote_code, device)
    freeze_towers(model, freeze_text, freeze_image)
    return model
