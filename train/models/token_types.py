"""Token types only where a model has them.

klue/roberta-base is a RoBERTa with one token type (`type_vocab_size=1`) whose tokenizer is a
BertTokenizer: it returns `token_type_ids`, with 1 on the second text of a pair, and id 1 indexes
past the model's one-row token-type table (an IndexError on a CPU, a device-side assert on CUDA).
Every XLM-R or RoBERTa paired with a BERT-style tokenizer is laid out the same way. Such a
tokenizer is told not to return token types at all, as the model's own tokenizer would; the
setting is saved with it, so the written model works with bare `CrossEncoder(dir).predict` and
`SentenceTransformer(dir).encode`.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("train")


def has_token_types(config: Any) -> bool:
    """False for a backbone whose token-type table has fewer than two rows (or none at all)."""
    config = getattr(config, "text_config", None) or config
    size = getattr(config, "type_vocab_size", None)
    return size is None or size >= 2


def drop_unused_token_types(tokenizer: Any, config: Any) -> bool:
    """Stops `tokenizer` returning token types when the model behind `config` has fewer than two;
    the change is saved with the tokenizer. Returns whether anything changed."""
    if has_token_types(config) or "token_type_ids" not in getattr(tokenizer, "model_input_names", ()):
        return False
    names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names  # what save_pretrained writes
    return True


def fit_token_types(model: Any) -> None:
    """Applies `drop_unused_token_types` to every transformer of a SentenceTransformer or CrossEncoder
    (a Router's routes included)."""
    for module in model.modules():
        auto_model, tokenizer = getattr(module, "auto_model", None), getattr(module, "tokenizer", None)
        if auto_model is None or tokenizer is None:
            continue
        if drop_unused_token_types(tokenizer, auto_model.config):
            log.info(
                "%s has one token type and its tokenizer returned token_type_ids: they are left out "
                "(a pair's second segment would index past the token-type table)", type(auto_model).__name__,
            )
