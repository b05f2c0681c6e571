"""Load a base model's tokenizer and weights as a run's `model` section says."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..config.sections import ModelConfig
from ..errors import UserError
from ..hub import hub_error
from .aliases import ALIASES
from .quantization import bitsandbytes_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(model_config: ModelConfig, resolved_path: str):
    try:
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


def load_model(model_config: ModelConfig, resolved_path: str, dtype: str | None = None, quantize: bool = True):
    """The base model in `dtype` (default: model.dtype), quantized as model.quantization says unless quantize=False."""
    quantization = bitsandbytes_config(model_config) if quantize else None
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    placement = {"quantization_config": quantization, "device_map": device} if quantization else {}
    try:
        return AutoModelForCausalLM.from_pretrained(
            resolved_path,
            dtype=DTYPES[dtype or model_config.dtype],
            trust_remote_code=model_config.trust_remote_code,
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
