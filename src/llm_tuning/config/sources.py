"""Where config values come from: a YAML file (with the line each key is set on, for messages), a dict, and
`section.key=value` overrides from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError

SECTIONS = ("model", "method", "data", "train")


def read_source(source: str | Path | dict | None) -> tuple[dict, dict[str, str]]:
    """The raw sections of a config, and where each `section` and `section.key` is set ("file:line")."""
    if source is None:
        return {}, {}
    if isinstance(source, dict):
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in source.items()}, {}
    path = Path(source)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
        lines = _key_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{line}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config must be a mapping with sections {', '.join(SECTIONS)}")
    return raw, {key: f"{path}:{line}" for key, line in lines.items()}


def _key_lines(text: str) -> dict[str, int]:
    """Map `section` and `section.key` to the 1-based line where the YAML file sets them."""
    root = yaml.compose(text)
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for section_node, body in root.value:
        section = section_node.value
        lines[section] = section_node.start_mark.line + 1
        if isinstance(body, yaml.MappingNode):
            for key_node, _ in body.value:
                lines[f"{section}.{key_node.value}"] = key_node.start_mark.line + 1
    return lines


def apply_overrides(raw: dict, where: dict[str, str], overrides) -> None:
    """Set each `section.key=value` of `overrides` in `raw` (values read as YAML), noting where it came from."""
    for item in overrides:
        section, key, value = parse_override(item)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"config section '{section}' must be a mapping, got {type(raw[section]).__name__}")
        raw[section][key] = value
        where[f"{section}.{key}"] = f"override '{item}'"


def parse_override(item: str) -> tuple[str, str, Any]:
    name, sep, text = item.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not key or "." in key:
        raise UserError(
            f"bad override '{item}': write section.key=value, e.g. train.max_steps=20 (sections: {', '.join(SECTIONS)})"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML (e.g. an unbalanced bracket): take it as the literal string
    return section, key, value
