"""Count what trains: the `trainable params: X || all params: Y || trainable%: Z` line, as peft prints it,
and `llm-tuning params`, which counts from a model's config.json alone (on the meta device, no weights)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .config.load import as_config
from .config.sections import Config
from .errors import UserError, first_line
from .methods.registry import get_method
from .models.builtin import allows_remote_code
from .models.loading import load_tokenizer
from .models.remote_code import remote_code_failures
from .models.resolve import model_config_dict, resolve_model_path


def count_parameters(model) -> tuple[int, int]:
    """(trainable, all) parameters; for a peft model, peft's own count (which also undoes 4-bit packing)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_line(trainable: int, total: int) -> str:
    """Same format and rounding as peft's print_trainable_parameters."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def meta_model(config: Config):
    """(resolved path, model config, model) with the model built on the meta device from config.json alone:
    shapes only, so a 7B model is built in a second without memory. Shared by `params` and `estimate`."""
    path = resolve_model_path(config.model.path)
    remote_code = allows_remote_code(config.model, path)  # never for a built-in architecture (models/builtin.py)
    with remote_code_failures(model_config_dict(path)):
        try:
            model_config = AutoConfig.from_pretrained(path, trust_remote_code=remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the model config of '{config.model.path}': {first_line(e)}") from None
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=remote_code)
    return path, model_config, model


def plan(config: Config | str | Path | dict | None = None, overrides=()) -> dict:
    """What the config's method trains on its model, from config.json alone: counts and a per-module breakdown."""
    config = as_config(config, overrides)
    path, _, model = meta_model(config)
    model = get_method(config.method.name).apply(model, config.method, tokenizer_if_any(config, path))
    trainable, total = count_parameters(model)
    return {
        "method": config.method.name,
        "model_path": path,
        "trainable_params": trainable,
        "all_params": total,
        "trainable_percent": 100 * trainable / total,
        "modules": trainable_breakdown(model),
    }


def trainable_breakdown(model) -> list[dict]:
    """Trainable parameters grouped by name with layer numbers folded: `model.layers.*.self_attn.q_proj.lora_A...`."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            group = groups[re.sub(r"\.\d+\.", ".*.", name)]
            group[0] += 1
            group[1] += parameter.numel()
    return [{"name": name, "tensors": tensors, "params": params} for name, (tensors, params) in groups.items()]


def tokenizer_if_any(config: Config, path: str):
    """The tokenizer, for methods that need one (prompt tuning from text); None for a folder with only config.json."""
    try:
        return load_tokenizer(config.model, path)
    except (UserError, OSError, ValueError, TypeError):
        return None
