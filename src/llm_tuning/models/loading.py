"""Load a base model's tokenizer and weights as a run's `model` section says; `load_model`, the public function, does
both from a path and model.* options, as training does."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..config.load import build_config
from ..config.sections import ModelConfig
from ..errors import UserError
from ..hub import hub_error
from .aliases import ALIASES
from .builtin import allows_remote_code, architecture_of, built_in_tokenizer
from .quantization import bitsandbytes_config
from .remote_code import remote_code_failures
from .resolve import model_config_dict, resolve_model_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(path: str, **model_options) -> tuple:
    """(model, tokenizer) of `path` (a model folder, a built-in alias or a hub id), loaded as training loads them:
    built-in architectures included, the tokenizer with a pad token. `model_options` are the model section's keys
    (docs/config.md), e.g. dtype="bfloat16", quantization="4bit", trust_remote_code=True."""
    model_config = build_config({"model": {**model_options, "path": str(path)}}).model
    resolved = resolve_model_path(model_config.path)
    tokenizer = load_tokenizer(model_config, resolved)
    ensure_pad_token(tokenizer)
    return load_base_model(model_config, resolved), tokenizer


def load_tokenizer(model_config: ModelConfig, resolved_path: str):
    architecture = architecture_of(resolved_path)
    try:
        if architecture is not None:
            return built_in_tokenizer(architecture, resolved_path)
        with remote_code_failures(model_config_dict(resolved_path)):
            return AutoTokenizer.from_pretrained(resolved_path, trust_remote_code=model_config.trust_remote_code)
    except OSError as e:
        raise _download_error(model_config.path, e) from None


def ensure_pad_token(tokenizer) -> str | None:
    """Batching needs a pad token; many models (Llama) have none, so pad with EOS. Safe because padded
    positions are never labelled (see the collator). Returns a note for the run summary, or None."""
    if tokenizer.pad_token_id is not None:
        return None
    tokenizer.pad_token = tokenizer.eos_token
    return f"the tokenizer has no pad token: padding with EOS ({tokenizer.eos_token!r}); padded positions are never trained"


def load_base_model(model_config: ModelConfig, resolved_path: str, dtype: str | None = None, quantize: bool = True):
    """The base model in `dtype` (default: model.dtype), quantized as model.quantization says unless quantize=False.
    A built-in architecture (models/builtin.py) replaces the model's own code."""
    quantization = bitsandbytes_config(model_config) if quantize else None
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    placement = {"quantization_config": quantization, "device_map": device} if quantization else {}
    try:
        with remote_code_failures(model_config_dict(resolved_path)):
            return AutoModelForCausalLM.from_pretrained(
                resolved_path,
                dtype=DTYPES[dtype or model_config.dtype],
                trust_remote_code=allows_remote_code(model_config, resolved_path),
                **placement,
            )
    except OSError as e:
        raise _download_error(model_config.path, e) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(
                f"model '{model_config.path}' needs its own code: set model.trust_remote_code: true if you trust it"
            ) from None
        raise


def _download_error(path: str, error: OSError) -> UserError:
    return hub_error(path, error, f"Use a local folder or a built-in alias ({', '.join(ALIASES)})")
