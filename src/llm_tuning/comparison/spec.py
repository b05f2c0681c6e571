"""A compare file: a base config (a path or the sections inline) and named variants, each a set of overrides.

    base: examples/demo.yaml
    variants:
      - {name: lora-r8, method: {name: lora, r: 8}}
      - {name: ia3, method: {name: ia3}}

A variant that sets `method.name` replaces the base's whole method section; the other sections merge key by
key; `section.key=value` overrides from the command line apply last, to every variant. Every variant is
validated before anything runs, and its errors name it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config.load import build_config
from ..config.sections import Config
from ..config.sources import apply_overrides, read_source
from ..errors import UserError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FILE_KEYS = ("base", "variants")
# what every variant shares, so that the comparison is fair: a variant may not change these
SHARED_KEYS = (
    "data.path",
    "data.val_path",
    "data.val_ratio",
    "data.columns",
    "data.seed",
    "train.seed",
    "train.max_steps",
    "train.num_epochs",
)


@dataclass
class Variant:
    name: str
    config: Config
    where: str  # "file:line" of its entry, for messages


@dataclass
class CompareSpec:
    path: Path
    base: dict  # the base's raw sections, overrides applied
    variants: list[Variant]


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CompareSpec:
    """Read and validate a compare file; every variant's config is built (and so checked) here."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"compare file not found: {path}")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        lines = _variant_lines(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UserError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: a compare file is a mapping with keys {', '.join(FILE_KEYS)}")
    unknown = [key for key in document if key not in FILE_KEYS]
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'; a compare file has: {', '.join(FILE_KEYS)}")
    base, where = read_source(_base_source(document.get("base"), path))
    apply_overrides(base, where, overrides)
    entries = document.get("variants")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: 'variants' must be a non-empty list of {{name: ..., section: {{key: value}}}}")
    variants, seen = [], set()
    for index, entry in enumerate(entries):
        at = f"{path}:{lines[index]}" if index < len(lines) else f"{path} variant #{index}"
        name = _variant_name(entry, at)
        if name in seen:
            raise UserError(f"{at}: duplicate variant name '{name}'; every variant needs its own")
        seen.add(name)
        variants.append(Variant(name, _variant_config(name, at, base, where, entry, overrides), at))
    return CompareSpec(path=path, base=base, variants=variants)


def variant_raw(base: dict, entry: dict, overrides=()) -> dict:
    """The raw sections of a variant: `method` replaced when the variant names a method, other sections merged
    key by key; the command-line overrides last."""
    raw = copy.deepcopy(base)
    for section, values in entry.items():
        if section == "name":
            continue
        if section == "method" and isinstance(values, dict) and "name" in values:
            raw["method"] = dict(values)
        elif isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = copy.deepcopy(values)
    apply_overrides(raw, {}, overrides)
    return raw


def _variant_config(name: str, at: str, base: dict, where: dict, entry: dict, overrides) -> Config:
    for section, values in entry.items():
        if section != "name" and isinstance(values, dict):
            for key in values:
                if f"{section}.{key}" in SHARED_KEYS:
                    raise UserError(f"variant '{name}' ({at}): {section}.{key} is shared by every variant; set it in the base")
    # locations in the base file do not apply to what the variant replaced
    replaced = {f"{section}.{key}" for section, values in entry.items() if isinstance(values, dict) for key in values}
    if isinstance(entry.get("method"), dict) and "name" in entry["method"]:
        replaced |= {key for key in where if key.startswith("method.")}
    try:
        return build_config(variant_raw(base, entry, overrides), {k: v for k, v in where.items() if k not in replaced})
    except UserError as e:
        raise UserError(f"variant '{name}' ({at}): {e}") from None


def _variant_name(entry, at: str) -> str:
    if not isinstance(entry, dict) or "name" not in entry:
        raise UserError(f"{at}: a variant is a mapping with a 'name' and the sections it changes")
    name = entry["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError(f"{at}: variant name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return name


def _base_source(base, path: Path):
    if base is None:
        return {}
    if isinstance(base, dict):
        return base
    if isinstance(base, str):
        return base  # relative to the working directory, as every path in a config is
    raise UserError(f"{path}: 'base' must be the path of a config or its sections inline")


def _variant_lines(path: Path) -> list[int]:
    """The 1-based line where each variant's entry starts."""
    root = yaml.compose(path.read_text(encoding="utf-8"))
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "variants" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []
