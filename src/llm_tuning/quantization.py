"""Quantized bases through bitsandbytes (LLM.int8 and 4-bit NF4/FP4, as in QLoRA); they work on a CPU too.

Only adapters train on a quantized base (peft methods); merging always goes into the unquantized base,
loaded in full precision, because merging into quantized weights would re-quantize them, lossily.
"""

from __future__ import annotations

import importlib.util

from .config import Config, ModelConfig
from .errors import UserError


def check_quantization(config: Config, method) -> None:
    if config.model.quantization == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"model.quantization {config.model.quantization} needs the bitsandbytes package: pip install bitsandbytes==0.50.2"
        )
    if not method.PEFT:
        raise UserError(
            f"method {config.method.name} trains the base's own weights, which are frozen when quantized "
            f"(model.quantization={config.model.quantization}); use lora, ia3, prompt, ptuning or prefix, or model.quantization=none"
        )


def bitsandbytes_config(model_config: ModelConfig):
    """transformers' BitsAndBytesConfig for model.quantization, or None."""
    from transformers import BitsAndBytesConfig

    from .precision import DTYPES

    if model_config.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=model_config.int8_threshold)
    if model_config.quantization == "4bit":
        compute = model_config.dtype if model_config.compute_dtype == "auto" else model_config.compute_dtype
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model_config.quant_type,
            bnb_4bit_use_double_quant=model_config.double_quant,
            bnb_4bit_compute_dtype=DTYPES[compute],
        )
    return None


def prepare_for_training(model):
    """peft's k-bit preparation: layer norms and other small non-quantized weights in fp32, input gradients on.
    Checkpointing is left to train.gradient_checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
