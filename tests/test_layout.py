"""The package's layering (docs/architecture.md, "Layout"): each module sits on a floor and imports only its own
floor or the ones below, lazily or not, so there is no circle and no upward arrow, the bench included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "train"

# Top to bottom. A module belongs to the first floor one of whose prefixes it starts with.
FLOORS = [
    ("commands", ("train.__main__", "train.run", "train.evaluate", "train.retrieve", "train.mine", "train.score", "train.push", "train.export", "train.report", "train.bench")),
    ("command plumbing", ("train.cli", "train.publish", "train.backend_export")),
    ("what commands compose", ("train.cards", "train.config.checks", "train.config.resume_rules", "train.config.reference", "train.config.mixture")),
    ("tasks", ("train.tasks",)),
    ("builders: config sections to plain arguments", ("train.models.build", "train.data.build", "train.losses.build")),
    ("the typed schema", ("train.config",)),
    ("evaluation", ("train.evaluation",)),
    ("models, losses, data", ("train.models", "train.losses", "train.data")),
    ("engine", ("train.engine",)),
    ("errors", ("train.errors", "train")),
]


def floor_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            # `from train.tasks import bi_encoder` imports the module train.tasks.bi_encoder.
            out.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in ROOT.rglob("*.py")}


def test_no_module_imports_a_floor_above_its_own():
    found = modules()
    assert len(found) > 60
    for module, path in found.items():
        mine = floor_of(module)
        for imported in imports_of(path):
            if imported.startswith("train.") and imported in found:
                theirs = floor_of(imported)
                assert theirs >= mine, (
                    f"{module} ({FLOORS[mine][0]}) imports {imported} ({FLOORS[theirs][0]}): an upward arrow"
                )


def test_no_circle_between_modules():
    found = modules()
    edges = {m: {i for i in imports_of(p) if i in found and i != m and not found[i].name == "__init__.py"} for m, p in found.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(edges[m]):
            assert seen.get(n) != 1, "import circle: " + " -> ".join([*path, m, n])
            if n not in seen:
                visit(n, [*path, m])
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m, [])


def test_every_package_says_what_it_may_import():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "may import" in doc.lower(), f"{init}: no docstring of what it may import"


def test_no_function_over_about_60_lines_and_no_module_over_about_400():
    long_functions, long_modules = [], []
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 420:
            long_modules.append(f"{path.relative_to(ROOT.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 65:
                long_functions.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}")
    assert not long_modules, long_modules
    assert not long_functions, long_functions
