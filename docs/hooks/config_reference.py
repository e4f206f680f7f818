"""mkdocs hook: writes docs/reference/configuration.md from the typed schema before every build.

The page is generated, not tracked (.gitignore): `train.config.reference.markdown()` renders every
configuration key with its type, default and comment. There is no fallback: when that function is
missing or fails, the build fails, so a published site never carries a stale reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

PAGE = Path("reference") / "configuration.md"


def on_pre_build(config, **kwargs) -> None:
    root = Path(config.config_file_path).resolve().parent
    if str(root) not in sys.path:  # the checkout's train/, also when it is not pip-installed
        sys.path.insert(0, str(root))
    from train.config.reference import markdown

    text = markdown()
    if not isinstance(text, str) or not text.strip():
        raise RuntimeError("train.config.reference.markdown() returned no Markdown for the configuration reference")
    target = Path(config.docs_dir) / PAGE
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written only when it changed: `mkdocs serve` watches docs/ and would rebuild for ever.
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
