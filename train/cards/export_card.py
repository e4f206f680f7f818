"""The model card's "Exported variants" section (train.export): each variant's file, how it was
made, how close it stays to the torch model, and the line that loads it with the bare library."""

from __future__ import annotations

from typing import Any

BEGIN, END = "<!-- exported variants -->", "<!-- /exported variants -->"


def how_made(variant: dict[str, Any]) -> str:
    parts = [variant["backend"].upper() if variant["backend"] == "onnx" else variant["backend"]]
    if variant.get("optimize"):
        parts.append(f"optimized {variant['optimize']}")
    if variant["quantize"] == "int8_dynamic":
        parts.append(f"int8, dynamic ({variant['quantize_config']})")
    elif variant["quantize"] == "int8_static":
        parts.append(f"int8, static ({variant['quantize_config']}, {variant['calibration']['samples']} calibration texts "
                     f"from {variant['calibration']['source']})")
    else:
        parts.append("fp32")
    return ", ".join(parts)


def fidelity_text(check: dict[str, Any]) -> str:
    if "min_cosine" in check:
        return f"cosine to torch ≥ {check['min_cosine']:.4f} (mean {check['mean_cosine']:.4f}) on {check['texts']} texts"
    return f"score within {check['max_abs_diff']:.4g} of torch on {check['pairs']} pairs"


def load_line(kind: str, file_name: str, backend: str) -> str:
    cls = {"cross_encoder": "CrossEncoder", "sparse": "SparseEncoder"}.get(kind, "SentenceTransformer")
    kwargs = "" if file_name in ("onnx/model.onnx", "openvino/openvino_model.xml") else f', model_kwargs={{"file_name": "{file_name}"}}'
    return f'{cls}("<this folder or repo>", backend="{backend}"{kwargs})'


def export_section(kind: str, variants: list[dict[str, Any]]) -> str:
    lines = [BEGIN, "## Exported variants", "",
             "Written by `python -m train.export`; each loads with the library alone (`pip install \"sentence-transformers[onnx]\"`).", "",
             "| file | how | MB | fidelity | load with |", "| --- | --- | --- | --- | --- |"]
    for v in sorted(variants, key=lambda v: v["file"]):
        lines.append(f"| `{v['file']}` | {how_made(v)} | {v['mb']:.1f} | {fidelity_text(v['check'])} | "
                     f"`{load_line(kind, v['file'], v['backend'])}` |")
    truncated = {v.get("truncate_dim") for v in variants} - {None}
    if truncated:
        lines += ["", f"Embeddings are truncated to {', '.join(map(str, sorted(truncated)))} dimensions (Matryoshka), as "
                      "`truncate_dim` in config_sentence_transformers.json says."]
    return "\n".join(lines + [END])


def with_export_section(card: str, section: str) -> str:
    """`card` with its exported-variants section replaced by `section` (or added at the end)."""
    if BEGIN in card and END in card:
        head, rest = card.split(BEGIN, 1)
        return head + section + rest.split(END, 1)[1]
    return card.rstrip("\n") + "\n\n" + section + "\n"
