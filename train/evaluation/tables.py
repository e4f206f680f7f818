"""The one text table every command prints: a row a name (a split, a system), a column a figure.
Counts (columns starting n_, or named in `counts`) print as integers, a missing cell stays blank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def text_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    label: str = "split",
    headers: Mapping[str, str] | None = None,
    digits: Mapping[str, int] | None = None,
) -> str:
    """`rows`: name -> {column: value}. `columns`: which and in what order (default: every one
    the rows have, in first-seen order); `headers`: a column's printed name; `digits`: decimals of
    a column (default 4; counts 0)."""
    headers, digits = dict(headers or {}), dict(digits or {})
    columns = list(columns) if columns is not None else list(dict.fromkeys(c for r in rows.values() for c in r))
    names = [headers.get(c, c) for c in columns]
    widths = [max(len(n), 10) for n in names]
    first = max([len(label), *(len(name) for name in rows)])

    def cell(value: Any, column: str, width: int) -> str:
        if value is None:
            return " " * width
        if column.startswith("n_") or isinstance(value, int) and not isinstance(value, bool):
            return f"{int(value):>{width}d}"
        return f"{float(value):>{width}.{digits.get(column, 4)}f}"

    header = f"{label:<{first}} " + " ".join(f"{n:>{w}}" for n, w in zip(names, widths))
    lines = [header, "-" * len(header)]
    for name, figures in rows.items():
        lines.append(f"{name:<{first}} " + " ".join(cell(figures.get(c), c, w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], show=str, numeric: Sequence[bool] | None = None) -> list[str]:
    """The same table as Markdown (report.md, model cards, the bench): `show` turns a value into
    its cell text; `numeric` right-aligns those columns."""
    rule = [("---:" if numeric and numeric[i] else "---") for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(show(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines
