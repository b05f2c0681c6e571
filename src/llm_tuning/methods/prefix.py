"""Prefix tuning (Li & Liang, 2021): trainable key/value prefixes for every attention layer, through peft,
made to work with (non-reentrant) gradient checkpointing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import PrefixTuningConfig
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from ..config.schema import option
from .method import Method
from .peft_adapter import peft_fields, wrap


@dataclass
class Options:
    name: str = option("prefix", "The method: `prefix`.")
    num_virtual_tokens: int = option(20, "Prefix length: virtual key/value positions per layer.", min=1)
    prefix_projection: bool = option(
        False, "Produce the prefixes with a two-layer MLP from a smaller embedding (more stable, more parameters while training)."
    )
    encoder_hidden_size: int | None = option(None, "Hidden size of that MLP (null: the model's hidden size).", min=1)


def apply(model, options: Options, tokenizer=None):
    hidden = model.config.get_text_config().hidden_size
    model = wrap(
        model, PrefixTuningConfig, "prefix", **peft_fields(options, encoder_hidden_size=options.encoder_hidden_size or hidden)
    )
    keep_prefix_under_checkpointing(model.get_base_model())
    return model


class PrefixCache(DynamicCache):
    """The prefix cache peft builds, made read-only: `update` returns prefix + new keys/values without storing
    them. So a layer recomputed by gradient checkpointing sees exactly the prefix it saw the first time."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def keep_prefix_under_checkpointing(base_model) -> None:
    """Fix for transformers 5 + peft prefix tuning under gradient checkpointing.

    transformers' GradientCheckpointingLayer drops `past_key_values` when it checkpoints, so the prefix vanishes
    while the attention mask still counts it (a size mismatch). Letting the layers keep the cache is not enough:
    on recomputation a normal cache appends the layer's keys a second time. In training, we therefore turn
    peft's cache into a PrefixCache and let the layers keep it. Generation (eval mode) is left untouched.
    """
    for module in base_model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True  # safe: the cache they now see is never written

    def use_read_only_cache(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if module.training and type(cache) is DynamicCache:
            cache.__class__ = PrefixCache  # same data, read-only update; the object is built afresh every step
        return args, kwargs

    base_model.register_forward_pre_hook(use_read_only_cache, with_kwargs=True)


METHOD = Method(
    name="prefix",
    options=Options,
    apply=apply,
    trains_base=False,
    not_mergeable_reason=(
        "its prefixes are extra keys and values, there is nothing to fold into the weights; serve it with --adapter"
    ),
    # Reentrant checkpointing only sends gradients to the layer's explicit tensor inputs; the prefixes reach the
    # layer inside the cache object, so their gradients would be lost.
    supports_reentrant_checkpointing=False,
)
