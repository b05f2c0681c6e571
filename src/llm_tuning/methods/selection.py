"""Helpers for the methods that train a subset of the model's own parameters (full, freeze, bitfit):
no adapter modules, just `requires_grad` switched on where the method says."""

from __future__ import annotations

import re
from typing import Callable

from torch import nn

from ..errors import UserError


def train_only(model: nn.Module, should_train: Callable[[str], bool]) -> nn.Module:
    """Freeze every parameter, then unfreeze those whose name `should_train` accepts."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(should_train(name))
    return model


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of the transformer blocks (model.layers on Llama/Qwen2, transformer.h on BLOOM)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return name, module
    raise UserError(f"cannot find the {count} transformer layers of this model ({type(model).__name__})")


def compile_patterns(key: str, patterns: list[str]) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise UserError(f"config key '{key}': {pattern!r} is not a valid regular expression ({e})") from None
    return compiled
