"""Quantized bases through bitsandbytes (LLM.int8 and 4-bit NF4/FP4, as in QLoRA); they work on a CPU too.

Only adapters train on a quantized base (peft methods); merging always goes into the unquantized base,
loaded in full precision, because merging into quantized weights would re-quantize them, lossily.
"""

from __future__ import annotations

import importlib.util

import torch
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from ..config.sections import Config, ModelConfig
from ..errors import UserError
from ..methods.method import Method

BITSANDBYTES_INSTALL = "pip install bitsandbytes==0.50.2"


def require_bitsandbytes(what: str) -> None:
    """Fail before anything loads when `what` (a config setting) needs bitsandbytes and it is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{what} needs the bitsandbytes package: {BITSANDBYTES_INSTALL}")


def check_quantization(config: Config, method: Method) -> None:
    if config.model.quantization == "none":
        return
    require_bitsandbytes(f"model.quantization {config.model.quantization}")
    if method.trains_base:
        raise UserError(
            f"method {config.method.name} trains the base's own weights, which are frozen when quantized "
            f"(model.quantization={config.model.quantization}); use lora, ia3, prompt, ptuning or prefix, or "
            "model.quantization=none"
        )


def bitsandbytes_config(model_config: ModelConfig) -> BitsAndBytesConfig | None:
    """transformers' BitsAndBytesConfig for model.quantization, or None."""
    if model_config.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=model_config.int8_threshold)
    if model_config.quantization == "4bit":
        compute = model_config.dtype if model_config.compute_dtype == "auto" else model_config.compute_dtype
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_config.quant_type,
            bnb_4bit_use_double_quant=model_config.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute),  # the config's dtype names are torch's own
        )
    return None


def prepare_for_training(model):
    """peft's k-bit preparation: layer norms and other small non-quantized weights in fp32, input gradients on.
    Checkpointing is left to train.gradient_checkpointing."""
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
