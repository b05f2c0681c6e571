"""The half-precision rules: what llm-tuning checks and changes so that fp16/bf16 runs do not fail silently.

- fp16 mixed precision needs a GPU: on a CPU, transformers' Trainer silently trains in fp32 instead.
- Trained parameters stay fp32 (master weights) unless `train.keep_trainable_fp32: false`.
- Adam's epsilon (1e-8) underflows to 0 in fp16 (smallest normal 6.1e-5): when trained parameters, and so
  the optimizer's states, are fp16, epsilon is raised to 1e-4.
Every change is recorded in the run summary's `adjustments`.
"""

from __future__ import annotations

import torch

from ..config.sections import Config
from ..errors import UserError
from ..models.loading import DTYPES
from ..weights import is_peft_model

FP16_SAFE_EPSILON = 1e-4


def check_precision(config: Config, has_gpu: bool) -> None:
    """Refuse combinations that would silently do something other than asked, before anything loads."""
    if config.train.precision == "fp16" and not has_gpu:
        raise UserError(
            "config key 'train.precision': fp16 mixed precision needs a GPU (on a CPU transformers would silently "
            "train in fp32); use train.precision=bf16 or fp32"
        )


def set_trainable_dtype(model, config: Config, adjustments: list[str]) -> None:
    """Trained tensors in float32 on a half-precision base (peft already does so for its adapters; this covers
    full / freeze / BitFit), or in model.dtype when the user turns train.keep_trainable_fp32 off."""
    target = torch.float32 if config.train.keep_trainable_fp32 else DTYPES[config.model.dtype]
    cast = [p for p in model.parameters() if p.requires_grad and p.dtype != target]
    if not cast:
        return
    if target == torch.float32 and not is_peft_model(model) and config.train.precision == "fp32":
        # These methods put fp32 weights beside half-precision ones inside the same layers; only autocast
        # (mixed precision) makes such a layer run.
        raise UserError(
            f"method {config.method.name} on a {config.model.dtype} base trains fp32 weights inside {config.model.dtype} layers: "
            f"set train.precision={'bf16' if config.model.dtype == 'bfloat16' else 'fp16'} (mixed precision), or "
            "model.dtype=float32"
        )
    for parameter in cast:
        parameter.data = parameter.data.to(target)
    if target == torch.float32:
        adjustments.append(f"cast {len(cast)} trained tensors from {config.model.dtype} to float32 (train.keep_trainable_fp32)")


def adam_epsilon(model, config: Config, adjustments: list[str]) -> float:
    """The optimizer's epsilon: raised when the optimizer works on fp16 parameters."""
    epsilon = config.train.adam_epsilon
    fp16_trained = any(p.requires_grad and p.dtype == torch.float16 for p in model.parameters())
    if fp16_trained and config.train.optimizer != "adafactor" and epsilon < FP16_SAFE_EPSILON:
        adjustments.append(
            f"raised train.adam_epsilon from {epsilon:g} to {FP16_SAFE_EPSILON:g}: trained parameters are float16, where "
            f"{epsilon:g} underflows to 0 and Adam divides by zero"
        )
        return FP16_SAFE_EPSILON
    return epsilon
