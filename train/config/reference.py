"""The configuration reference, drawn from the typed schema (train/config/schema.py and the
engine's train/engine/settings.py), the range checks (checks.py), the loss registry and the option
files in conf/: every key with its type, default, valid range and help, every group with its
options. `python -m train --help` prints it as text; the documentation site's Configuration page
is built from it (docs/hooks/config_reference.py), so neither can drift from the code.

A key's help is the comment block written above its field in the schema: the schema stays the
one place where a setting is explained."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import os
import re
import typing
from dataclasses import MISSING, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from train.config import checks
from train.config.command_schema import EvaluateConfig, ExportConfig, MineConfig, PushConfig, RetrieveConfig, ScoreConfig
from train.config.schema import TrainConfig
from train.losses.registry import LOSSES

CONF = Path(__file__).resolve().parents[2] / "conf"
COMMANDS = {
    "python -m train": (TrainConfig, checks.TRAIN_RULES),
    "python -m train.evaluate": (EvaluateConfig, checks.EVALUATE_RULES),
    "python -m train.mine": (MineConfig, checks.MINE_RULES),
    "python -m train.retrieve": (RetrieveConfig, checks.RETRIEVE_RULES),
    "python -m train.score": (ScoreConfig, checks.SCORE_RULES),
    "python -m train.push": (PushConfig, {}),
    "python -m train.export": (ExportConfig, checks.EXPORT_RULES),
}
FIELD = re.compile(r"^\s+(\w+)\s*:")


@dataclass
class Key:
    path: str
    type: str
    default: Any
    help: str
    choices: list[str]
    range: str | None


@cache
def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment lines written just above it in the class body."""
    found, block, shared, previous = {}, [], "", ""
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = FIELD.match(line)
        if match and not stripped.startswith(("def ", "@")):
            # A field right below another, with no comment of its own, shares that one's (a group
            # such as train_path, dev_path, test_path).
            name = match.group(1)
            found[name] = " ".join(block) if block else (shared if _same_family(previous, name) else "")
            shared, previous = found[name], name
        else:
            shared, previous = "", ""
        block = []
    return found


def _same_family(a: str, b: str) -> bool:
    """train_path and dev_path, sentence1 and sentence2, freeze_text and freeze_image."""
    return bool(a) and (a.rsplit("_", 1)[-1] == b.rsplit("_", 1)[-1] or len(os.path.commonprefix([a, b])) >= 4)


def _enum_help(kind: type[enum.Enum]) -> str:
    try:
        lines = [ln.strip().lstrip("#").strip() for ln in inspect.getsource(kind).splitlines() if ln.strip().startswith("#")]
    except (OSError, TypeError):  # an Enum made at run time (the loss names)
        return ""
    return " ".join(lines)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) + " or null" if len(inner) == 1 else " | ".join(map(_type_name, inner))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return "choice"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return None
    if value == "???":  # omegaconf's MISSING: the key must be given
        return "(required)"
    return value.value if isinstance(value, enum.Enum) else value


def _enum_of(tp: Any) -> type[enum.Enum] | None:
    for candidate in (tp, *typing.get_args(tp)):
        if inspect.isclass(candidate) and issubclass(candidate, enum.Enum):
            return candidate
    return None


def keys(schema: type, rules: dict[str, Any] | None = None, prefix: str = "") -> list[Key]:
    """Every leaf key of a schema dataclass, depth first, in declaration order."""
    rules = rules or {}
    hints = typing.get_type_hints(schema)
    out: list[Key] = []
    for f in dataclasses.fields(schema):
        tp, path = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.extend(keys(tp, rules, path + "."))
            continue
        kind = _enum_of(tp)
        help_text = _comments(_owner(schema, f.name)).get(f.name, "")
        if kind is not None and _enum_help(kind) and "sentence-transformers' own" not in _enum_help(kind):
            help_text = f"{help_text} {_enum_help(kind)}".strip()
        rule = rules.get(path)
        out.append(Key(path, _type_name(tp), _default(f), help_text, [m.value for m in kind] if kind else [], rule[1] if rule else None))
        item = next(iter(typing.get_args(tp)), None)
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(item):  # a list of records: each entry's keys too
            out.extend(keys(item, rules, path + "[]."))
    return out


def _owner(schema: type, name: str) -> type:
    """The class (of the schema's bases) whose body declares `name`."""
    for cls in schema.__mro__:
        if name in getattr(cls, "__annotations__", {}):
            return cls
    return schema


def groups() -> dict[str, list[tuple[str, str]]]:
    """conf/ group -> (option, its first comment line), from the YAML files themselves."""
    out: dict[str, list[tuple[str, str]]] = {}
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        options = []
        for path in sorted(folder.glob("*.yaml")):
            lines = [ln for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
            options.append((path.stem, lines[0].lstrip("#").strip() if lines else ""))
        out[folder.name] = options
    return out


def _first_sentence(text: str, width: int = 150) -> str:
    """Up to the first full stop outside parentheses, cut at `width` characters."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            text = text[:i]
            break
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def help_text(command: str = "python -m train") -> str:
    """What `<command> --help` prints: the groups and their options, then every key with its one-line help."""
    schema, rules = COMMANDS[command]
    lines = [f"{command} [group=option ...] [key=value ...]   (Hydra overrides; -m sweeps: key=a,b,c)", ""]
    if command == "python -m train":
        lines.append("Groups (group=option):")
        for group, options in groups().items():
            lines.append(f"  {group}: {', '.join(name for name, _ in options)}")
        lines.append("")
    lines.append("Keys (key=value; the full reference: docs/reference/configuration.md):")
    for key in keys(schema, rules):
        choice = f" {{{','.join(key.choices)}}}" if key.choices else ""
        lines.append(f"  {key.path}={_show(key.default)}{choice}")
        if key.help:
            lines.append(f"      {_first_sentence(key.help)}")
    lines += ["", "Hydra's own flags: --hydra-help; --cfg job prints the composed config."]
    return "\n".join(lines) + "\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The documentation site's Configuration reference page."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the typed schema (`train/config/schema.py`, `train/engine/settings.py`), the range "
        "checks (`train/config/checks.py`), the loss registry (`train/losses/registry.py`) and the option files "
        "in `conf/` each time the site is built. `python -m train --help` prints the same keys.",
        "",
        "## Groups",
        "",
        "Pick an option with `group=option` (`model=minilm`, `data=stsb`, `experiment=nli_then_sts`).",
        "",
    ]
    for group, options in groups().items():
        out += [f"### {group}", "", "| option | what it is |", "| --- | --- |"]
        out += [f"| `{group}={name}` | {_cell(doc)} |" for name, doc in options]
        out.append("")
    out += ["## Losses", "", "`loss=<name>`; each task accepts its own.", ""]
    for task, table in LOSSES.items():
        out += [f"### task={task}", "", "| loss | trains on | what it is |", "| --- | --- | --- |"]
        out += [f"| `{name}` | {spec.shape.value} | {_cell(spec.doc)} |" for name, spec in table.items()]
        out.append("")
    for command, (schema, rules) in COMMANDS.items():
        out += [f"## `{command}`", "", "| key | type | default | valid values | help |", "| --- | --- | --- | --- | --- |"]
        for key in keys(schema, rules):
            valid = ", ".join(f"`{c}`" for c in key.choices) if key.choices else (key.range or "")
            out.append(f"| `{key.path}` | {key.type} | `{_cell(_show(key.default))}` | {_cell(valid)} | {_cell(key.help)} |")
        out.append("")
    return "\n".join(out)
