"""Markdown tables, and how a value is shown in one (figures to 4 decimals, other numbers to 4 digits)."""

from __future__ import annotations

import re
from typing import Any

from train.evaluation.tables import markdown_table


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # figures (mostly in [-1, 1]) to 4 decimals, other numbers to 4 digits
        return f"{value:.4f}" if 1e-3 <= abs(value) <= 1 or value == 0 else f"{value:.4g}"
    if isinstance(value, str) and len(value) > 10 and re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", value):
        return f"{float(value):.4g}"  # an override Optuna sampled: 4.3708610696262625e-05
    return str(value)


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return markdown_table(header, rows, show=fmt)
