"""The package's layering (README, Layout): data flows config -> task -> models, losses, data -> loop.
Nothing below imports upwards, lazily or not, so there is no circle such as builders -> tasks -> builders."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "train"

# package -> what it must never import (at module level or inside a function)
LOWER = {
    "models": ("train.tasks", "train.run", "train.loop", "train.cli", "train.data.build", "train.losses"),
    "losses": ("train.tasks", "train.run", "train.loop", "train.cli", "train.models.build"),
    "data": ("train.tasks", "train.run", "train.loop", "train.cli", "train.models", "train.losses"),
    "tasks": ("train.run", "train.cli"),
}


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            # `from train.tasks import bi_encoder` imports the module train.tasks.bi_encoder.
            out.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_lower_layers_never_import_upwards():
    checked = 0
    for package, forbidden in LOWER.items():
        for path in (ROOT / package).rglob("*.py"):
            checked += 1
            bad = sorted(m for m in imports_of(path) if m.startswith(forbidden))
            assert not bad, f"{path.relative_to(ROOT.parent)} imports {bad}: a lower layer importing upwards"
    assert checked >= 25, checked


def test_no_module_imports_a_module_that_imports_it_back():
    modules = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in ROOT.rglob("*.py")}
    edges = {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}
    pairs = [(a, b) for a in edges for b in edges[a] if a in edges.get(b, set())]
    # Left alone: the bench's --suite runs the bench's own command line once a recipe (train.bench.cli <-> suite).
    assert not [p for p in pairs if not p[0].startswith("train.bench")], pairs
