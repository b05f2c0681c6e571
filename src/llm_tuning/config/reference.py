"""Every config key as a row (key, type, default, help): the source of docs/config.md."""

from __future__ import annotations

import dataclasses
import typing

import yaml

from ..methods.registry import METHODS
from .schema import type_name
from .sections import DataConfig, ModelConfig, TrainConfig

Row = tuple[str, str, str, str]


def reference_rows() -> list[Row]:
    """(key, type, default, help) for every option of the fixed sections."""
    rows = []
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
        rows.extend(section_reference(section, cls))
    return rows


def method_reference_rows() -> dict[str, list[Row]]:
    """Method name -> the rows of its options, `method.name` left out."""
    return {name: [r for r in section_reference("method", m.options) if r[0] != "method.name"] for name, m in METHODS.items()}


def section_reference(section: str, cls: type) -> list[Row]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += " Choices: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
        default_text = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...")
        rows.append((f"{section}.{f.name}", type_name(hints[f.name]), default_text, help_text))
    return rows


def reference_markdown() -> str:
    """docs/config.md: a table per section, and one per method."""
    parts = [
        "# Config reference\n",
        "Every key of a run's config, generated from the options' own declarations by `python scripts/config_reference.py`"
        " (tests/config/test_config.py fails when this page is out of date). A config is a YAML file with four sections;"
        " any key can also be set on the command line as `section.key=value`.\n",
    ]
    rows = reference_rows()
    for section in ("model", "data", "train"):
        parts.append(f"## {section}\n\n{_table([r for r in rows if r[0].startswith(section + '.')])}\n")
    parts.append("## method\n\n`method.name` picks the method; the other keys depend on it.\n")
    for name, options in method_reference_rows().items():
        parts.append(f"### `name: {name}`\n\n{_table(options) if options else '(no options)'}\n")
    return "\n".join(parts)


def _table(rows: list[Row]) -> str:
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, type_text, default, help_text in rows:
        escaped = help_text.replace("|", "\\|")
        lines.append(f"| `{key}` | {type_text} | `{default}` | {escaped} |")
    return "\n".join(lines)
