"""Prompts (instruction prefixes) per text column: `data.prompts` names one of the model's prompts
for a column; a column not named gets the model's default prompt, as `encode()` would give it.
The text is put before the column's texts, as sentence-transformers does, in training and in
every evaluation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from train.errors import ConfigError


def check_prompt_names(model: Any, names: Mapping[str, str]) -> None:
    prompts = getattr(model, "prompts", None) or {}
    unknown = {c: n for c, n in names.items() if n not in prompts}
    if unknown:
        raise ConfigError(
            "data.prompts: " + ", ".join(f"{c}={n}" for c, n in unknown.items())
            + f" names no prompt of the model (its prompts: {', '.join(prompts) or 'none'}; add one with model.prompts.<name>=<text>)."
        )


def column_prompts(model: Any, names: Mapping[str, str], columns: Iterable[str]) -> dict[str, str]:
    """column -> prompt text, for the columns that get one."""
    prompts = getattr(model, "prompts", None) or {}
    default = getattr(model, "default_prompt_name", None)
    out = {}
    for column in columns:
        name = names.get(column, default)
        text = prompts.get(name, "") if name else ""
        if text:
            out[column] = text
    return out


def excludes_prompt(model: Any) -> bool:
    """Whether the model's pooling leaves prompt tokens out (Pooling(include_prompt=False))."""
    return any(getattr(m, "include_prompt", True) is False for m in model) if hasattr(model, "__iter__") else False


def prompt_length(tokenizer: Any, prompt: str) -> int:
    """The prompt's tokens as they lead a prompted text: its tokenization without a trailing
    special token (sentence-transformers' rule for Pooling(include_prompt=False))."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if ids and ids[-1] in set(tokenizer.all_special_ids):
        ids = ids[:-1]
    return len(ids)
